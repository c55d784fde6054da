"""The transductive setting as two declared stages (train.stages.<name> blocks), the paper recipes built
from recipes/_base blocks, and the demo recipe running on a machine that never wrote the sample data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from zsk.core.errors import ZskError
from zsk.core.recipe import recipes_dir
from zsk.core.run import load_config
from zsk.core.stages import stage_config
from zsk.tasks.segment.cli import app
from zsk.tasks.segment.config import Config

runner = CliRunner()
PAPER = ["voc", "voc_transductive", "voc_fully", "coco_stuff", "coco_stuff_transductive", "coco_stuff_fully", "context"]


@pytest.mark.parametrize("name,steps", [("voc_transductive", 10000), ("coco_stuff_transductive", 40000)])
def test_transductive_recipes_split_the_schedule_into_two_stages(name: str, steps: int) -> None:
    cfg, _ = load_config("segment", Config, f"segment/{name}", None)
    assert cfg.train.setting == "transductive"
    train = cfg.train
    inductive, self_training = stage_config(train, "inductive"), stage_config(train, "self_training")
    # stage 1: the first half of the inductive schedule (official: iter_10000 of the 20k run)
    assert (inductive.steps, inductive.max_steps) == (2 * steps, steps) and self_training.steps == steps
    # the inductive stage hands on the weights at the end of its schedule (official: iter_10000 / iter_40000)
    assert inductive.select == "last" and self_training.select == "best"
    # everything else inherits train.*
    for tcfg in (inductive, self_training):
        assert tcfg.lr == 2e-5 and tcfg.effective_batch == 16 and tcfg.warmup_steps == 1500
        assert tcfg.loss.focal_weight == 100.0


def test_inductive_stage_hands_on_its_last_weights_unless_its_block_says_otherwise() -> None:
    cfg, _ = load_config("segment", Config, "segment/voc", ["train.setting=transductive"])
    train = cfg.train  # what train() runs the stages with
    assert stage_config(train, "inductive").select == "last"
    assert stage_config(train, "self_training").select == "best"
    cfg, _ = load_config("segment", Config, "segment/voc_transductive", ["train.stages.inductive.select=best",
                                                                           "train.stages.self_training.lr=1.0e-4"])
    train = cfg.train
    assert stage_config(train, "inductive").select == "best"
    assert stage_config(train, "inductive").max_steps == 10000  # the rest of the block stays
    assert stage_config(train, "self_training").lr == 1e-4 and train.lr == 2e-5


@pytest.mark.parametrize("key,named", [("train.stages.self_training.nosuchkey=1", "train.stages.self_training.nosuchkey"),
                                       ("train.stages.finetune.steps=1", "train.stages.finetune"),
                                       ("train.stages.inductive.steps=many", "train.stages.inductive.steps")])
def test_bad_stage_blocks_name_the_key(key: str, named: str) -> None:
    with pytest.raises(ZskError, match=named.replace(".", r"\.")):
        load_config("segment", Config, "segment/voc_transductive", [key])


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_inherit_only_from_base_blocks_one_level_deep(name: str) -> None:
    path = recipes_dir() / "segment" / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    bases = raw["base"] if isinstance(raw["base"], list) else [raw["base"]]
    assert bases and all(b.startswith("../_base/") for b in bases)
    for b in bases:
        block = yaml.safe_load((path.parent / b).read_text())
        assert "base" not in block and "task" not in block, b


def test_demo_recipe_trains_without_the_sample_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`zsk segment train --recipe segment/demo` on a machine that never ran `zsk segment sample`: the
    sample data is written into the cache (the same files `sample` writes) and training runs."""
    from zsk.tasks.segment.data import write_sample

    cache = tmp_path / "cache"
    monkeypatch.setenv("ZSK_CACHE", str(cache))
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--recipe", "segment/demo", "--set", "train.steps=2", "--set", "eval.max_images=2",
                            "--out", str(out), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    for name in ("best.pt", "last.pt", "eval.json"):
        assert (out / name).is_file(), name
    samples = [p for p in (cache / "samples").glob("segment-v*") if p.is_dir()]
    assert len(samples) == 1
    root = samples[0]
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert Path(recipe["data"]["root"]) == root
    # exactly the data the old demo wrote: write_sample's defaults (48 train, 12 val, seed 0)
    ref = write_sample(tmp_path / "ref")
    for rel in ("ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt", "class_embeddings_tiny.npy",
                "JPEGImages/2026_val_0011.jpg", "SegmentationClass/2026_train_0047.png"):
        assert (root / rel).read_bytes() == (ref / rel).read_bytes(), rel
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == 60


def test_stage_blocks_are_honoured_in_training(tmp_path: Path) -> None:
    """train.stages.<name> settings reach their stage only: step counts per stage, and a self-training
    learning rate of 0 leaves the weights the inductive stage handed on unchanged."""
    from zsk.core.checkpoint import load_checkpoint
    from zsk.tasks.segment.data import write_sample

    data = write_sample(tmp_path / "data", 16, 2)
    out = tmp_path / "st"
    r = runner.invoke(app, ["train", "--recipe", "segment/demo", "--set", f"data.root={data}",
                            "--set", "train.setting=transductive", "--set", "train.stages.inductive.steps=2",
                            "--set", "train.stages.self_training.steps=1", "--set", "train.stages.self_training.lr=0",
                            "--set", "eval.max_images=1", "--out", str(out), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    first, second = load_checkpoint(out / "last-inductive.pt"), load_checkpoint(out / "last-self_training.pt")
    assert (first["step"], first["total_steps"]) == (2, 2) and (second["step"], second["total_steps"]) == (1, 1)
    assert first["extra"]["setting"] == "inductive" and second["extra"]["setting"] == "transductive"
    trainable = [k for k in second["model"] if not k.startswith(("image_encoder.visual.", "text_encoder."))]
    assert trainable and all(torch.equal(first["model"][k], second["model"][k]) for k in trainable)
    lrs = [json.loads(ln)["lr"] for ln in (out / "metrics.jsonl").read_text().splitlines()
           if json.loads(ln).get("kind") == "train" and json.loads(ln).get("stage") == "self_training"]
    assert lrs and all(lr == 0 for lr in lrs)
    assert (out / "eval.json").is_file() and (out / "best.pt").is_file() and (out / "last.pt").is_file()

