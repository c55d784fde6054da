"""``train.loss.lseh.mask_ids``: zsk's same-picture mask (``image``) and the official code's
``img_ids[i] == ids[j] // 5`` (``caption_index_div5``), which on IAPR TC-12 (one caption per image) zeroes the
margin of unrelated pairs."""

from __future__ import annotations

import pytest
import torch

from zsk.core.errors import ZskError
from zsk.tasks.retrieve.config import Config
from zsk.tasks.retrieve.losses import LossConfig, LsehConfig, caption_div5_mask, lseh_loss, same_image_mask
from zsk.tasks.retrieve.model import RankingLoss
from zsk.tasks.retrieve.train import make_step_fn

CAP_INDEX = torch.tensor([0, 1, 5, 6, 7, 12])  # captions of a shuffled IAPR batch, one per image


def _official_loop_mask(img_ids: list[int], ids: list[int]) -> torch.Tensor:
    """The official IAPRTC12/model.py mask, written from its loop: zero where img_ids[i] == ids[j] // 5."""
    return torch.tensor([[img_ids[i] == ids[j] // 5 for j in range(len(ids))] for i in range(len(img_ids))])


def test_div5_mask_is_the_official_loop_and_differs_on_one_caption_per_image() -> None:
    img_ids = CAP_INDEX.clone()  # IAPR: image index = caption index
    got = caption_div5_mask(img_ids, CAP_INDEX)
    assert torch.equal(got, _official_loop_mask(img_ids.tolist(), CAP_INDEX.tolist()))
    assert got[0, 1] and got[1, 2] and got[1, 4] and not got[1, 0]  # unrelated pairs, not symmetric
    assert torch.equal(same_image_mask(img_ids), torch.eye(6, dtype=torch.bool))
    five = CAP_INDEX // 5  # five captions per image: both masks agree
    assert torch.equal(caption_div5_mask(five, CAP_INDEX), same_image_mask(five))


def test_ranking_loss_option_reproduces_the_official_iapr_margin() -> None:
    g = torch.Generator().manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    cap = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    lsa = torch.randn(6, 5, generator=g)
    img_ids = CAP_INDEX.clone()
    default = RankingLoss(LossConfig(kind="lseh"))(img, cap, img_ids, lsa)
    official = RankingLoss(LossConfig(kind="lseh", lseh=LsehConfig(mask_ids="caption_index_div5")))(
        img, cap, img_ids, lsa, cap_index=CAP_INDEX)
    want = lseh_loss(img @ cap.T, lsa, img_ids, same=_official_loop_mask(img_ids.tolist(), CAP_INDEX.tolist()))
    assert official.item() == pytest.approx(want.item(), abs=1e-6)
    assert default.item() == pytest.approx(lseh_loss(img @ cap.T, lsa, img_ids).item(), abs=1e-6)
    assert abs(default.item() - official.item()) > 1e-4  # the zeroed margins change the loss
    with pytest.raises(ValueError, match="dataset indices"):
        RankingLoss(LossConfig(kind="lseh", lseh=LsehConfig(mask_ids="caption_index_div5")))(img, cap, img_ids, lsa)


def test_step_fn_passes_the_caption_indices() -> None:
    seen = {}

    class Spy:  # RankingLoss's interface: the step function hands it the batch similarity matrix
        def from_scores(self, scores, img_ids, lsa, epoch, cap_index=None):
            seen["cap_index"] = cap_index
            return scores.sum()

    loss_fn = Spy()
    model = lambda *a: (torch.zeros(2, 3), torch.zeros(2, 3))  # noqa: E731
    batch = {"image": None, "img_lengths": None, "tokens": None, "cap_lengths": None, "img_index": torch.tensor([0, 1]),
             "index": torch.tensor([3, 9])}
    make_step_fn(loss_fn, 10)(model, batch, 0)  # type: ignore[arg-type]
    assert seen["cap_index"].tolist() == [3, 9]


def test_mask_ids_is_a_recipe_option() -> None:
    from zsk.core.run import load_config

    cfg, _ = load_config("retrieve", Config, "retrieve/iapr_vsepp_lseh", ["train.loss.lseh.mask_ids=caption_index_div5"])
    assert cfg.train.loss.lseh.mask_ids == "caption_index_div5"
    cfg, _ = load_config("retrieve", Config, "retrieve/iapr_vsepp_lseh", None)
    assert cfg.train.loss.lseh.mask_ids == "image"
    with pytest.raises(ZskError, match="mask_ids"):
        LsehConfig(mask_ids="div5")  # type: ignore[arg-type]


def test_bench_batch_carries_caption_indices() -> None:
    """``zsk bench`` steps the recipe's loss: with mask_ids caption_index_div5 its synthetic batch needs indices."""
    from zsk.core.bench import trainer_step
    from zsk.core.run import load_config
    from zsk.tasks.retrieve import hooks

    cpu = torch.device("cpu")
    cfg, _ = load_config("retrieve", Config, "retrieve/iapr_vsepp_lseh",
                         ["model.embed_size=16", "model.word_dim=8", "train.loss.lseh.mask_ids=caption_index_div5"])
    spec = hooks.bench_spec(cfg, cpu, 4)
    assert spec.batch["index"].tolist() == [0, 1, 2, 3]
    step, _ = trainer_step(spec, cfg, cpu)
    step()
