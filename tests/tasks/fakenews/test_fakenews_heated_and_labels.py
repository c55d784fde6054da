"""Issue 11 (fakenews): the heated-up softmax in Zhang et al.'s normalised form (and the linear form as an
option), against formulas written out here, and a single-label training file refused with exit 2."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from zsk.core.errors import ZskError
from zsk.tasks.fakenews.config import Config, DataConfig, EncoderConfig, ModelConfig
from zsk.tasks.fakenews.data import load_split, write_sample
from zsk.tasks.fakenews.model import TransformerBranch, encoder_from_config, random_encoder_config


def _branch(head: str) -> TransformerBranch:
    torch.manual_seed(0)
    enc = EncoderConfig(arch="bert", hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                        max_position_embeddings=16)
    return TransformerBranch(encoder_from_config(random_encoder_config(enc, 30, 0)), 2, dropout=0.0, head=head)


def test_normalised_head_is_alpha_cos_plus_bias_by_hand():
    """Zhang et al. 2018 (Sec. 3): z_m = alpha * <f/|f|, w_m/|w_m|> + b_m, the bias outside alpha."""
    from zsk.tasks.fakenews.model import CosineClassifier

    head = CosineClassifier(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0, 4.0], [0.0, 2.0, 0.0]]))
        head.bias.copy_(torch.tensor([0.25, -0.5]))
    f = torch.tensor([[1.0, 1.0, 0.0]])
    # cos(f, w_0) = 3 / (sqrt(2) * 5), cos(f, w_1) = 2 / (sqrt(2) * 2)
    c0, c1 = 3 / (math.sqrt(2) * 5), 1 / math.sqrt(2)
    for alpha in (4.0, 1.0, 0.5):
        head.set_alpha(alpha)
        z = head(f)[0]
        assert z[0].item() == pytest.approx(alpha * c0 + 0.25, rel=1e-6)
        assert z[1].item() == pytest.approx(alpha * c1 - 0.5, rel=1e-6)
    # scaling a feature or a class weight changes nothing (both are normalised)
    assert torch.allclose(head(7.0 * f), head(f), atol=1e-6)


def test_default_head_is_normalised_and_linear_is_an_option():
    assert ModelConfig().heated_softmax == "normalized"
    from zsk.tasks.fakenews.model import CosineClassifier

    assert isinstance(_branch("normalized").classifier, CosineClassifier)
    assert isinstance(_branch("linear").classifier, torch.nn.Linear)
    with pytest.raises(ZskError, match="model.heated_softmax"):
        from zsk.core.recipe import parse_config

        parse_config(Config, {"model": {"heated_softmax": "cosine"}})


@pytest.mark.parametrize("head", ["normalized", "linear"])
def test_branch_step_loss_matches_the_form(head):
    """One training step's loss: CE(alpha cos(f, W) + b) (normalised) or CE(alpha (W f + b)) (linear)."""
    from zsk.tasks.fakenews.config import FGMConfig, HeatedSoftmaxConfig, TrainConfig
    from zsk.tasks.fakenews.train import make_branch_step_fn

    b = _branch(head)
    b.eval()
    ids = torch.randint(1, 30, (4, 6), generator=torch.Generator().manual_seed(1))
    batch = {"x": {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "label": torch.tensor([0, 1, 1, 0])}
    tcfg = TrainConfig(fgm=FGMConfig(enabled=False), heated_softmax=HeatedSoftmaxConfig(alphas=[4.0, 0.5], milestones=[1]))
    step = make_branch_step_fn(tcfg, 10, lambda m: m.word_embeddings, lambda m, bt: m(**bt["x"]))
    for s, alpha in ((0, 4.0), (10, 0.5)):
        loss = step(b, batch, s)["loss"]
        f = b.features(**batch["x"])
        W, bias = b.classifier.weight, b.classifier.bias
        if head == "normalized":
            z = alpha * F.normalize(f, dim=-1) @ F.normalize(W, dim=-1).T + bias
        else:
            z = alpha * (f @ W.T + bias)
        assert loss.item() == pytest.approx(F.cross_entropy(z, batch["label"]).item(), rel=1e-5)


def _write(path: Path, labels: list[str]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "tweet", "label"])
        for i, lab in enumerate(labels):
            w.writerow([i, f"post number {i} about vaccines", lab])


def test_single_label_training_file_exits_2_naming_file_and_label(tmp_path):
    _write(tmp_path / "train.csv", ["real"] * 5)
    _write(tmp_path / "val.csv", ["real", "fake"])
    cfg = DataConfig(root=str(tmp_path), train_file="train.csv", val_file="val.csv", classes=["real", "fake"])
    with pytest.raises(ZskError) as e:
        load_split(cfg, "train")
    assert "train.csv" in str(e.value) and "'real'" in str(e.value) and "fake" in str(e.value)
    # a validation split of one class is only scored, and stays allowed
    assert len(load_split(cfg, "val", classes=["real", "fake"])) == 2


def test_single_label_training_file_cli_exit_2(tmp_path):
    from zsk.tasks.fakenews.cli import app

    data = tmp_path / "data"
    write_sample(data)
    _write(data / "train.csv", ["fake"] * 40)
    r = CliRunner().invoke(app, ["train", "--recipe", "fakenews/demo", "--set", f"data.root={data}",
                                 "--set", "data.train_file=train.csv", "--set", "data.classes=[real, fake]",
                                 "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.csv" in errors[0] and "'fake'" in errors[0], r.output
