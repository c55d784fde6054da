"""The image path: stage-two fine-tuning under fixed predicted classifiers, evaluation on image folders,
prediction on image files. A small CNN with the interface of a torchvision classifier (``fc`` as its last
layer) stands in for ResNet-50; the torchvision loading itself is tested at the end when it imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from zsk.tasks.gzsl import train as gzsl_train
from zsk.tasks.gzsl.cli import app

runner = CliRunner()


class SmallCNN(nn.Module):
    """conv -> ReLU -> global average pool -> fc, like a torchvision ResNet's head."""

    def __init__(self, width: int = 512, classes: int = 1000) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def small_cnn(cfg, pretrained: bool = True) -> tuple[nn.Module, nn.Linear]:
    torch.manual_seed(123 if pretrained else 7)  # "pretrained" weights: the same every time they are loaded
    net = SmallCNN()
    fc = net.fc
    net.fc = nn.Identity()
    return net, fc


def run(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    return result


IMAGE_SETS = ["--set", "data.resize=36", "--set", "data.crop=32", "--set", "eval.features=null",
              "--set", "eval.labels=null", "--set", "eval.batch_size=16"]


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(gzsl_train, "build_cnn", small_cnn)
    run("sample", str(tmp_path / "data"))
    return tmp_path / "data"


def test_finetune_eval_and_predict_on_images(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run("train", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set", "train.epochs=5",
              "--set", "train.eval_every=0", "--set", "model.pretrained=null", "--set", "train.stages.finetune.enabled=true",
              "--set", "train.stages.finetune.batch_size=4", "--set", "train.stages.finetune.max_steps=3",
              "--set", "train.stages.finetune.lr=0.05", *IMAGE_SETS, "--out", str(out), "--json", "--quiet")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["finetune_steps"] == 3
    stage1 = torch.load(out / "last-propagate.pt", weights_only=True)
    stage2 = torch.load(out / "last-finetune.pt", weights_only=True)
    final = torch.load(out / "best.pt", weights_only=True)  # the final model: stage two's weights
    assert final["extra"]["finetuned"] and set(final["model"]) == set(stage2["model"])
    assert all(torch.equal(final["model"][k], stage2["model"][k]) for k in stage2["model"])
    assert stage2["extra"]["finetuned"] and not stage1["extra"]["finetuned"]
    # the graph network is not retrained; the backbone is
    gnn_keys = [k for k in stage1["model"] if k.startswith("gnn.")]
    assert all(torch.equal(stage1["model"][k], stage2["model"][k]) for k in gnn_keys)
    assert not torch.equal(stage1["model"]["cnn.conv.weight"], stage2["model"]["cnn.conv.weight"])
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("stage") == "finetune" and r["kind"] == "train" for r in records)

    ev = json.loads(run("eval", "-c", str(out / "last-finetune.pt"), "--testset", "2-hops", "--json").stdout)
    assert ev["images"] == 12 * 3 and ev["classes"] == 12 and ev["candidates"] == 12
    gz = json.loads(run("eval", "-c", str(out / "last-finetune.pt"), "--testset", "2-hops", "--generalized",
                        "--json").stdout)
    assert gz["candidates"] == 24 and gz["images"] == 36

    # encode the images once, then evaluate the features: the same numbers as on the images
    res = run("features", "-c", str(out / "last-finetune.pt"), "--testset", "all", "--out", str(tmp_path / "f" / "all"),
              *IMAGE_SETS, "--json")
    exported = json.loads(res.stdout)
    assert exported["images"] == 24 * 3 and exported["feature_dim"] == 512
    ev2 = json.loads(run("eval", "-c", str(out / "last-finetune.pt"), "--testset", "2-hops", "--json",
                         "--features", exported["features"]).stdout)
    assert ev2["images"] == ev["images"]
    for k in (1, 2, 5, 10, 20):
        assert ev2[f"hit@{k}"] == pytest.approx(ev[f"hit@{k}"])

    test = json.loads((data / "imagenet-split.json").read_text())["test"]
    image = next((data / "datasets" / "imagenet" / test[0]).iterdir())
    res = run("predict", str(image), "-c", str(out / "last-finetune.pt"), "--top-k", "4", "--json",
              "--out", str(tmp_path / "pred"))
    rec = json.loads(res.stdout)
    assert rec["input"] == str(image) and len(rec["top"]) == 4 and "row" not in rec


def test_finetune_from_a_snapshot_skips_stage_one(data: Path, tmp_path: Path) -> None:
    run("train", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set", "train.epochs=2",
        "--set", "train.eval_every=0", "--out", str(tmp_path / "a"))
    snap = tmp_path / "a" / "snapshots" / "epoch-2.pred"
    assert snap.is_file()
    res = run("train", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set", "model.pretrained=null",
              "--set", "train.stages.finetune.enabled=true", "--set", f"train.stages.finetune.classifiers={snap}",
              "--set", "train.stages.finetune.batch_size=4", "--set", "train.stages.finetune.max_steps=1", *IMAGE_SETS,
              "--out", str(tmp_path / "b"), "--json")
    assert "stage one skipped" in res.stderr
    assert not (tmp_path / "b" / "last-propagate.pt").exists() and (tmp_path / "b" / "last-finetune.pt").is_file()
    assert (tmp_path / "b" / "last.pt").is_file() and (tmp_path / "b" / "best.pt").is_file()
    # the fine-tuned checkpoint scores with the snapshot's classifiers (here: those of run a's last step)
    feats = str(data / "features" / "test.npy")
    pred = ["--json", "--out", str(tmp_path / "pred")]
    a = [json.loads(x) for x in run("predict", feats, "-c", str(tmp_path / "a" / "last.pt"), *pred).stdout.splitlines()]
    b = [json.loads(x) for x in run("predict", feats, "-c", str(tmp_path / "b" / "last-finetune.pt"),
                                    *pred).stdout.splitlines()]
    assert len(a) == len(b) == 288
    assert [r["top"][0]["wnid"] for r in a] == [r["top"][0]["wnid"] for r in b]
    assert a[0]["top"][0]["score"] == pytest.approx(b[0]["top"][0]["score"], rel=1e-5)


def test_eval_on_images_needs_cnn_weights(data: Path, tmp_path: Path) -> None:
    run("train", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set", "train.epochs=1",
        "--out", str(tmp_path / "a"), "--quiet")
    res = run("eval", "-c", str(tmp_path / "a" / "last.pt"), *IMAGE_SETS, code=2)
    assert "carries no CNN weights" in res.stderr and "model.pretrained" in res.stderr


def test_torchvision_backbone_from_local_file(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001 - a broken torchvision install raises RuntimeError on import
        pytest.skip(f"torchvision does not import here: {e}")
    monkeypatch.undo()  # the real build_cnn
    weights = tmp_path / "resnet18-local.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    cfg_sets = ["--set", f"data.root={data}", "--set", "model.cnn=resnet18", "--set", f"model.pretrained={weights}"]
    # fc as targets: resnet18 has 1000 classes, the sample's split 12 -> a clear error
    res = run("train", "--recipe", "gzsl/demo", *cfg_sets, "--set", "data.fc_weights=null", "--out",
              str(tmp_path / "x"), code=2)
    assert "has 1000 classes" in res.stderr
    run("train", "--recipe", "gzsl/demo", *cfg_sets, "--set", "train.epochs=1", "--out", str(tmp_path / "r"), "--quiet")
    ev = json.loads(run("eval", "-c", str(tmp_path / "r" / "last.pt"), *IMAGE_SETS, "--testset", "2-hops",
                        "--json").stdout)
    assert ev["images"] == 36
    res = run("eval", "-c", str(tmp_path / "r" / "last.pt"), *IMAGE_SETS, "--set",
              f"model.pretrained={tmp_path / 'missing.pth'}", code=2)
    assert "missing.pth" in res.stderr
