"""The task contract for gzsl: the demo recipe on the embedded sample (no `zsk gzsl sample` first), the
stages propagate -> finetune with their `train.stages.<name>` blocks and stage-two defaults, the snapshot
Callback, and the CNN built only when images are encoded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zsk.core.recipe import load_recipe, parse_config
from zsk.core.stages import stage_config
from zsk.tasks.gzsl.cli import app
from zsk.tasks.gzsl.config import Config
from zsk.tasks.gzsl.train import SnapshotCallback, make_propagate_step

runner = CliRunner()


def run(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    return result


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_demo_recipe_trains_without_a_written_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    res = run("train", "--recipe", "gzsl/demo", "--set", "train.epochs=4", "--set", "train.eval_every=2",
              "--set", "train.checkpoint_every=2", "--out", str(out), "--json", "--quiet")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    sample = tmp_path / "cache" / "samples" / "gzsl-v1"
    for name in ("imagenet-split.json", "imagenet-induced-graph.json", "imagenet-dense-grouped-graph.json",
                 "fc-weights.json", "words.txt", "features/test.npy", "features/test-labels.txt"):
        assert (sample / name).is_file(), name
    assert 0 <= summary["hit@1"] <= 1 and summary["snapshot"] == str(out / "snapshots" / "epoch-4.pred")
    for name in ("best.pt", "last.pt", "eval.json", "eval-propagate.json", "snapshots/epoch-2.pred"):
        assert (out / name).is_file(), name
    # the recipe in the run folder points at the cached sample, so eval needs no --set
    ev = json.loads(run("eval", "-c", str(out / "best.pt"), "--json").stdout)
    assert ev["hit@1"] == pytest.approx(summary["hit@1"]) and ev["testset"] == "all"
    # --split names a test set as --testset does
    two = json.loads(run("eval", "-c", str(out / "best.pt"), "--split", "2-hops", "--json").stdout)
    assert two == json.loads(run("eval", "-c", str(out / "best.pt"), "--testset", "2-hops", "--json").stdout)
    run("eval", "-c", str(out / "best.pt"), "--split", "2-hops", "--testset", "all", code=2)


def test_propagate_hands_on_its_last_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DGP uses the final epoch: best.pt holds the last weights although best-propagate.pt (lowest seen
    loss) may be another step, and a propagate block overrides train.* for that stage only."""
    monkeypatch.setenv("ZSK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    run("train", "--recipe", "gzsl/demo", "--set", "train.epochs=6", "--set", "train.eval_every=1",
        "--set", "train.stages.propagate.lr=0.05", "--out", str(out), "--quiet")
    lrs = {r["lr"] for r in records(out) if r["kind"] == "train"}
    assert lrs == {0.05} and all(r["stage"] == "propagate" for r in records(out))
    last = torch.load(out / "last-propagate.pt", weights_only=True)["model"]
    for name in ("best.pt", "last.pt"):
        final = torch.load(out / name, weights_only=True)
        assert final["task"] == "gzsl" and set(final["model"]) == set(last)
        assert all(torch.equal(final["model"][k], last[k]) for k in last), name


def test_finetune_stage_defaults_and_inheritance() -> None:
    """Stage two's defaults (SGD, lr 1e-4, batch 64, 20 epochs, no model selection) sit between train.*
    and the block; every other train.* key is inherited; propagate takes train.* as it is."""
    sets = ["train.stages.finetune.enabled=true", "train.max_steps=7", "train.clip_grad_norm=1.0"]
    train = parse_config(Config, load_recipe("gzsl/demo", sets)).train
    ft = stage_config(train, "finetune")
    assert ft.enabled and (ft.optimizer, ft.lr, ft.momentum, ft.weight_decay, ft.batch_size, ft.epochs) == \
        ("sgd", 1e-4, 0.9, 0.0, 64, 20)
    assert ft.best_metric is None and ft.eval_every == 0 and ft.select == "last"
    assert (ft.max_steps, ft.clip_grad_norm) == (7, 1.0)
    prop = stage_config(train, "propagate")
    assert prop.enabled and (prop.optimizer, prop.lr, prop.epochs, prop.best_metric) == ("adam", 1e-3, 200, "seen_loss")
    block = stage_config(parse_config(Config, load_recipe(
        "gzsl/demo", ["train.stages.finetune.lr=0.01", "train.stages.finetune.optimizer=adamw"])).train,
        "finetune")
    assert (block.lr, block.optimizer, block.enabled) == (0.01, "adamw", False)


def test_stage_keys_are_checked(tmp_path: Path) -> None:
    res = run("train", "--recipe", "gzsl/demo", "--set", "train.stages.finetune.bogus=1", "--out",
              str(tmp_path / "a"), code=2)
    assert "train.stages.finetune.bogus" in res.stderr
    res = run("train", "--recipe", "gzsl/demo", "--set", "train.stages.refine.lr=1", "--out", str(tmp_path / "b"),
              code=2)
    assert "train.stages.refine" in res.stderr and "propagate, finetune" in res.stderr
    res = run("train", "--recipe", "gzsl/demo", "--set", "train.finetune.enabled=true", "--out", str(tmp_path / "c"),
              code=2)
    assert "train.finetune" in res.stderr
    res = run("train", "--recipe", "gzsl/demo", "--set", "train.stages.propagate.enabled=false",
              "--out", str(tmp_path / "d"), code=2)
    assert "train.stages.finetune.classifiers" in res.stderr


class _Trainer:
    """What the callback reads of a Trainer."""

    def __init__(self, model: torch.nn.Module, stop_at: int) -> None:
        self.model, self.stop_at, self.step = model, stop_at, 0


def test_snapshots_come_from_the_callback_not_the_step(tmp_path: Path) -> None:
    from zsk.tasks.gzsl.model import GCN, ZeroShotModel, symmetric_adjacency

    torch.manual_seed(0)
    edges = torch.tensor([[1, 0], [2, 0], [3, 1]]).numpy()
    ops = symmetric_adjacency(edges, 4)
    model = ZeroShotModel(GCN(5, 3, hidden=[6], dropout=0.5))
    x = torch.randn(4, 5)
    batch = {"x": x, "seen": torch.tensor([0, 1]), "targets": torch.randn(2, 3)}
    step_fn = make_propagate_step(ops, lambda p, t: (p - t).pow(2).sum())
    assert "loss" in step_fn(model, batch, 3)
    assert not any(tmp_path.iterdir())  # the step function writes nothing
    cb = SnapshotCallback(tmp_path / "snapshots", ["a", "b", "c", "d"], x, ops, every=2)
    trainer = _Trainer(model, stop_at=5)
    for step in range(1, 6):
        trainer.step = step
        cb.on_step_end(trainer, {})
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["epoch-2.pred", "epoch-4.pred", "epoch-5.pred"]
    snap = torch.load(tmp_path / "snapshots" / "epoch-5.pred", weights_only=True)
    assert snap["wnids"] == ["a", "b", "c", "d"]
    assert torch.equal(snap["pred"], model.classifiers(x, ops))  # eval mode: no dropout
    assert model.gnn.training  # the callback leaves the training mode alone


def test_cnn_is_built_only_to_encode_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint without CNN weights evaluates precomputed features without ``model.pretrained``'s file;
    images need that file, and the error names it."""
    monkeypatch.setenv("ZSK_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "resnet18-missing.pth"
    run("train", "--recipe", "gzsl/demo", "--set", "train.epochs=2", "--set", f"model.pretrained={missing}",
        "--out", str(tmp_path / "run"), "--quiet")
    ckpt = str(tmp_path / "run" / "best.pt")
    ev = json.loads(run("eval", "-c", ckpt, "--json").stdout)
    assert ev["images"] == 24 * 12
    res = run("eval", "-c", ckpt, "--set", "eval.features=null", "--set", "data.resize=36", "--set", "data.crop=32",
              code=2)
    assert "resnet18-missing.pth" in res.stderr
