"""Training pieces: SATS-M exemplar batches (concatenated, seeded, exact on resume), the effective batch,
and the step function's terms switched by the recipe."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from zsk.core.errors import ZskError
from zsk.core.recipe import parse_config
from zsk.core.trainer import grad_accum_for
from zsk.models.segformer import MiTConfig
from zsk.tasks.css.config import Config
from zsk.tasks.css.model import IncrementalSegFormer, frozen_copy
from zsk.tasks.css.train import OldModelState, _loader_fn, make_step_fn


class _Ids(torch.utils.data.Dataset):
    """Items that carry their own index (image value = offset + index)."""

    def __init__(self, n: int, offset: int) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.tensor([self.offset + i]), "label": torch.tensor([0])}


def test_exemplar_batches_join_every_batch_and_resume_exactly() -> None:
    cfg = parse_config(Config, {"train": {"batch_size": 2, "memory_batch_size": 3}, "runtime": {"workers": 0}})
    loader = _loader_fn(cfg, cfg.train, _Ids(8, 0), _Ids(5, 100))
    full = [b["image"].tolist() for b in loader(3, 0)]
    # 2 step images + a batch of exemplars; 5 exemplars in batches of 3 cycle as 3, 2, 3, 2
    assert [len(b) for b in full] == [5, 4, 5, 4]
    assert sorted(i for b in full[:2] for (i,) in b[2:]) == list(range(100, 105))  # one cycle shows every exemplar
    assert full == [b["image"].tolist() for b in loader(3, 0)]  # seeded by (seed, epoch) only
    assert [b["image"].tolist() for b in loader(3, 2)] == full[2:]  # a resumed epoch sees the same batches
    assert full != [b["image"].tolist() for b in loader(4, 0)]


def test_effective_batch_sets_accumulation() -> None:
    cfg = parse_config(Config, {"train": {"batch_size": 12, "effective_batch": 24}})
    assert grad_accum_for(cfg.train) == 2
    assert grad_accum_for(replace(cfg.train, effective_batch=None, grad_accum=3)) == 3
    with pytest.raises(ZskError, match="train.effective_batch"):
        grad_accum_for(replace(cfg.train, batch_size=5))


def test_step_function_terms() -> None:
    torch.manual_seed(0)
    mit = MiTConfig((8, 16, 20, 32), (1, 2, 5, 8), (1, 1, 1, 1), (8, 4, 2, 1))
    model = IncrementalSegFormer(mit, [3, 1], 0.0, 8)
    old = frozen_copy(model, 0)
    model.active_step = 1
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 4, (2, 64, 64))
    y[:, :8] = 255
    base = parse_config(Config, {})
    step0 = make_step_fn(base, None)(model, {"image": x, "label": y}, 0)
    assert set(step0) == {"loss", "ce"}
    ce = torch.nn.functional.cross_entropy(model(x), y, ignore_index=255, reduction="sum") / y.numel()
    assert torch.allclose(step0["ce"], ce, atol=1e-6)  # ignored pixels count in the mean (official reduction)
    thr = torch.full((4,), 0.5)
    out = make_step_fn(base, OldModelState(old, 3, thr, math.log(4)))(model, {"image": x, "label": y}, 0)
    assert set(out) == {"loss", "ce", "unkd", "sats"}
    assert torch.allclose(out["loss"], out["ce"] + out["unkd"] + out["sats"])
    plain = parse_config(Config, {"train": {"kd_weight": 0, "sats": {"weight": 0}, "pseudo_label": {"enabled": False}}})
    off = make_step_fn(plain, OldModelState(old, 3, None, 1.0))(model, {"image": x, "label": y}, 0)
    assert set(off) == {"loss", "ce"} and torch.allclose(off["loss"], step0["ce"], atol=1e-6)
    assert bool(torch.isfinite(out["loss"].detach()))
