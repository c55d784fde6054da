"""The official-behaviour options change what they name (no option that silently does nothing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zsk.tasks.adapt.config import DataConfig
from zsk.tasks.adapt.data import (
    LabeledSet,
    augment,
    load_sample,
    resolve_line,
    write_sample,
    write_synthia_sample,
)


def test_crop_padding_label(tmp_path: Path) -> None:
    cfg = DataConfig(crop_size=(64, 64), flip=False)
    x, y = torch.zeros(1, 3, 20, 30), torch.full((1, 1, 20, 30), 7)
    for pad, want in ((255, 255), (0, 0)):
        _, out = augment(x, y, cfg, np.random.default_rng(0), (1.0, 1.0), pad)
        assert out.shape[-2:] == (64, 64) and int(out[0, 0, 0, 0]) == want and (out == 7).sum() == 600


def test_synthia_label_resize_official_is_bilinear(tmp_path: Path) -> None:
    root = write_synthia_sample(tmp_path / "s", num=1, size=(24, 40))
    base = {"root": str(tmp_path), "source": "synthia", "source_root": str(root), "source_size": (37, 61)}
    s = resolve_line("RGB/0000000.png", DataConfig(**base), tmp_path, "t")
    _, nearest = load_sample(s, DataConfig(**base))
    _, bilinear = load_sample(s, DataConfig(**base, label_resize="official_code"))
    assert nearest.shape == bilinear.shape == (1, 1, 37, 61)
    assert set(nearest.unique().tolist()) <= {0, 2, 8, 10, 13, 255}  # nearest keeps the scene's classes
    assert not torch.equal(nearest, bilinear)  # bilinear ids invent other classes at boundaries


def test_acp_partner_labels_official_are_raw(tmp_path: Path) -> None:
    roots = write_sample(tmp_path, num_source=2, num_train=4, num_val=1, size=(32, 64))
    base = {"root": str(roots["cityscapes"]), "source_root": str(roots["gtav"]), "source_size": None,
            "crop_size": (16, 16), "rand_resize": (1.0, 1.0), "paste_resize": (1.0, 1.0)}
    samples = [resolve_line("images/00001.png", DataConfig(**base), Path(base["root"]), "t")]
    for mode, allowed in (("converted", {0, 2, 8, 10, 13, 255}), ("official_code", {7, 11, 21, 23, 26})):
        ds = LabeledSet(samples, DataConfig(**base, acp_source_labels=mode), acp=True, acp_prob=1.0, pad_label=255)
        paste = ds[(0, 3)]["paste_label"]
        assert set(paste.unique().tolist()) <= allowed, (mode, paste.unique())


def test_one_stal_step_updates_confidence_bank_and_memory() -> None:
    import dataclasses

    from zsk.core.recipe import load_recipe, parse_config
    from zsk.tasks.adapt.config import Config
    from zsk.tasks.adapt.hooks import bench_spec

    cfg = parse_config(Config, load_recipe("adapt/demo", ["runtime.device=cpu"]))
    spec = bench_spec(cfg, torch.device("cpu"), None)
    net = spec.model
    conf0 = net.class_conf.clone()
    out = spec.step_fn(net, spec.batch, 0)
    assert {"loss", "sup", "cons", "contra"} <= set(out) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert not torch.equal(net.class_conf, conf0)  # EMA of the class confidence (momentum 0.999)
    assert torch.allclose(net.class_conf, 0.999 * conf0, atol=1e-3)
    assert any(p.grad is not None for p in net.student.parameters())
    assert all(p.grad is None for p in net.teacher.parameters())
    # the official entropy-mask sign changes the consistency term
    official = dataclasses.replace(cfg.train.loss.cons, entropy_mask="official_code")
    cfg2 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, loss=dataclasses.replace(
        cfg.train.loss, cons=official)))
    spec2 = bench_spec(cfg2, torch.device("cpu"), None)
    spec2.model.load_state_dict(spec.model.state_dict())
    spec2.model.class_conf.copy_(conf0)
    net.class_conf.copy_(conf0)
    a = spec.step_fn(net, spec.batch, 5)["cons"]
    b = spec2.step_fn(spec2.model, spec2.batch, 5)["cons"]
    assert float(a) != float(b)


def test_synthia_source_trains_end_to_end(tmp_path: Path) -> None:
    """SYNTHIA-RAND-CITYSCAPES layout (RGB/, 16-bit GT/LABELS/) as the source of a short run."""
    import json

    from typer.testing import CliRunner

    from zsk.cli import app

    roots = write_sample(tmp_path, num_source=1, num_train=6, num_val=1, size=(32, 64))
    synthia = write_synthia_sample(tmp_path / "synthia", num=3, size=(40, 72))
    res = CliRunner().invoke(app, ["adapt", "train", "--recipe", "adapt/demo", "--out", str(tmp_path / "run"), "--json",
                                   "--quiet", "--set", f"data.root={roots['cityscapes']}", "--set", "data.source=synthia",
                                   "--set", f"data.source_root={synthia}", "--set", "data.num_source=3", "--set",
                                   "train.epochs=1", "--set", "train.al.rounds=1", "--set", "train.best_metric=mIoU16"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"mIoU", "mIoU16", "mIoU13"} <= set(out)


def test_ripu_regions_rounds_label_parts_of_every_image(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from zsk.cli import app

    roots = write_sample(tmp_path, num_source=2, num_train=6, num_val=1, size=(32, 64))
    res = CliRunner().invoke(app, ["adapt", "train", "--recipe", "adapt/demo", "--out", str(tmp_path / "run"), "--quiet",
                                   "--set", f"data.root={roots['cityscapes']}", "--set",
                                   f"data.source_root={roots['gtav']}", "--set", "data.num_source=2", "--set",
                                   "train.epochs=1", "--set", "train.al.selector=ripu_regions", "--set",
                                   "train.al.region_ratio=0.1"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "run" / "regions-round2.txt").read_text().split("\n")[:-1]
    full = (tmp_path / "run" / "labeled-round1.txt").read_text().split()
    assert len(lines) == 6 - len(full)  # every image not fully labelled gets regions
    masks = [np.array(Image.open(tmp_path / "run" / ln.split()[1])) for ln in lines]
    assert all(0.1 <= m.mean() <= 0.1 + 9 / m.size for m in masks)


def test_official_list_file_in_stals_renamed_layout(tmp_path: Path) -> None:
    """train.al.initial_list = an official labeled.txt: GTAV frames renamed into the Cityscapes tree (raw
    labelIds under gtFine/train/gta5/) plus the labelled Cityscapes images; round 2 retrains from the initial
    weights (train.al.warm_start=false, the official loop)."""
    from typer.testing import CliRunner

    from zsk.cli import app

    roots = write_sample(tmp_path, num_source=3, num_train=6, num_val=1, size=(32, 64))
    cs = roots["cityscapes"]
    lines = []
    for i, img in enumerate(sorted((roots["gtav"] / "images").glob("*.png"))):
        stem = f"gta5_{i:05d}_000019"
        for folder, name, src in (("leftImg8bit", f"{stem}_leftImg8bit.png", img),
                                  ("gtFine", f"{stem}_gtFine_labelTrainIds.png", roots["gtav"] / "labels" / img.name)):
            (cs / folder / "train" / "gta5").mkdir(parents=True, exist_ok=True)
            (cs / folder / "train" / "gta5" / name).write_bytes(src.read_bytes())
        lines.append(f"leftImg8bit/train/gta5/{stem}_leftImg8bit.png")
    city = sorted(p.relative_to(cs).as_posix() for p in (cs / "leftImg8bit" / "train").glob("[!g]*/*.png"))[:2]
    (tmp_path / "labeled.txt").write_text("\n".join(lines + city) + "\n")
    res = CliRunner().invoke(app, ["adapt", "train", "--recipe", "adapt/demo", "--out", str(tmp_path / "run"),
                                   "--set", f"data.root={cs}", "--set", "data.source_root=null", "--set",
                                   f"train.al.initial_list={tmp_path / 'labeled.txt'}", "--set", "train.epochs=1",
                                   "--set", "train.al.warm_start=false"])
    assert res.exit_code == 0, res.output
    assert "3 gtav source + 2 labelled" in res.output and "retrains from the initial weights" in res.output
    assert (tmp_path / "run" / "labeled-round1.txt").read_text().split() == city
