"""The DeepLabv3+ / deep-stem ResNet structure, the mean teacher, and the GTAV / SYNTHIA / Cityscapes readers on
files written in the real layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsk.data.png16 import read_png16, write_png16
from zsk.tasks.adapt.config import DataConfig
from zsk.tasks.adapt.data import (
    LABELID_TO_TRAINID,
    StepPlan,
    StepSampler,
    cityscapes_split,
    labeled_pool,
    load_label,
    load_sample,
    read_list,
    resolve_line,
    source_samples,
    write_sample,
    write_synthia_sample,
)
from zsk.tasks.adapt.model import DeepLabV3Plus, MeanTeacher


def test_deep_stem_os8_multigrid_and_official_names() -> None:
    net = DeepLabV3Plus(19, (1, 1, 2, 3), base_width=4, stem_width=4, decoder_channels=8)
    enc = net.encoder
    assert [m.out_channels for m in enc.conv1 if isinstance(m, torch.nn.Conv2d)] == [4, 4, 8]  # 64-64-128 scaled
    assert [b.conv2.dilation[0] for b in enc.layer3] == [1, 2]
    assert [b.conv2.dilation[0] for b in enc.layer4] == [4, 8, 16]  # previous 2 x (2, 2, 4) as the official code
    assert all(b.conv2.stride[0] == 1 for b in enc.layer4)
    out = net(torch.randn(1, 3, 65, 65))
    assert out["pred"].shape[-2:] == (17, 17) and out["aux"].shape[-2:] == (9, 9) and out["rep"].shape[1] == 8
    keys = set(net.state_dict())
    for k in ("encoder.conv1.6.weight", "encoder.bn1.running_var", "decoder.aspp.conv5.0.weight",
              "decoder.classifier.8.bias", "decoder.representation.8.weight", "auxor.aux.4.weight",
              "decoder.low_conv.0.weight"):
        assert k in keys, k
    assert float(net.encoder.layer1[0].bn3.weight.detach().abs().sum()) == 0.0  # zero_init_residual


def test_ema_teacher_update() -> None:
    net = MeanTeacher(DeepLabV3Plus(3, (1, 1, 1, 3), 2, 2, 4, (1, 2, 3)), 3)
    assert not any(p.requires_grad for p in net.teacher.parameters())
    with torch.no_grad():
        for p in net.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in net.teacher.parameters()]
    assert net.ema_update(0, 0.99) == 0.0  # the first step copies the student
    assert all(torch.equal(t, s) for t, s in zip(net.teacher.parameters(), net.student.parameters(), strict=True))
    for t, b in zip(net.teacher.parameters(), before, strict=True):
        t.data.copy_(b)
    d = net.ema_update(999, 0.99)
    assert d == 0.99
    t0, s0, b0 = next(net.teacher.parameters()), next(net.student.parameters()), before[0]
    assert torch.allclose(t0, 0.99 * b0 + 0.01 * s0)
    net.student.train()
    net(torch.randn(1, 3, 33, 33), role="student")  # batch 1: the ASPP pooling BN falls back to running stats


def test_sample_layouts_and_label_maps(tmp_path: Path) -> None:
    roots = write_sample(tmp_path, num_source=3, num_train=4, num_val=2, size=(32, 64))
    cfg = DataConfig(root=str(roots["cityscapes"]), source_root=str(roots["gtav"]), num_source=2, source_size=None)
    train = cityscapes_split(cfg, "train")
    assert len(train) == 4 and train[0].rel.startswith("leftImg8bit/train/") and train[0].city
    # the trainIds file equals the labelIds file through the official map
    ids = np.array(Image.open(str(train[0].label).replace("_labelTrainIds", "_labelIds")))
    table = np.full(256, 255, np.uint8)
    for k, v in LABELID_TO_TRAINID.items():
        table[k] = v
    assert np.array_equal(load_label(train[0], cfg), table[ids])
    train[0].label.unlink()  # no trainIds file: the labelIds one is converted
    assert np.array_equal(load_label(cityscapes_split(cfg, "train")[0], cfg), table[ids])
    src = source_samples(cfg, seed=0)
    assert len(src) == 2 and all(s.kind == "gtav" for s in src)
    gt = np.array(Image.open(src[0].label))  # palette PNG of labelIds
    assert Image.open(src[0].label).mode == "P" and np.array_equal(load_label(src[0], cfg), table[gt])
    x, y = load_sample(src[0], DataConfig(root=cfg.root, source_root=cfg.source_root, source_size=(16, 32)))
    assert x.shape == (1, 3, 16, 32) and y.shape == (1, 1, 16, 32)


@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4, (0, 1, 2, 3, 4), (2, 4, 1)])
def test_png16_round_trip_and_pillow_agree(tmp_path: Path, filter_type: int | tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, (7, 9, 3), dtype=np.uint16)
    write_png16(tmp_path / "rgb.png", rgb, filter_type)
    assert np.array_equal(read_png16(tmp_path / "rgb.png"), rgb)
    grey = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
    write_png16(tmp_path / "g.png", grey, filter_type)
    assert np.array_equal(np.array(Image.open(tmp_path / "g.png")).astype(np.uint16), grey)  # Pillow decodes I;16
    with Image.open(tmp_path / "rgb.png") as im:  # Pillow keeps the high byte of 16-bit RGB
        assert np.array_equal(np.array(im.convert("RGB")), (rgb >> 8).astype(np.uint8))


def test_synthia_labels_by_both_maps(tmp_path: Path) -> None:
    root = write_synthia_sample(tmp_path / "synthia", num=2, size=(24, 40))
    cfg = DataConfig(root=str(tmp_path), source="synthia", source_root=str(root), source_size=None)
    s = resolve_line("RGB/0000000.png", cfg, tmp_path, "test")
    raw = read_png16(s.label)[..., 0]
    ours = load_label(s, cfg)
    # DAFormer's 19-class map: raw sky (1) -> 10, raw road (3) -> 0, raw car (8) -> 13
    for r, t in ((1, 10), (3, 0), (8, 13)):
        if (raw == r).any():
            assert (ours[raw == r] == t).all()
    official = load_label(s, DataConfig(root=cfg.root, source="synthia", source_root=cfg.source_root,
                                        synthia_label_map="official_code", source_size=None))
    if (raw == 1).any():
        assert (official[raw == 1] == 9).all()  # STAL: sky becomes id 9 (terrain in Cityscapes trainIds)


def test_stal_list_lines(tmp_path: Path) -> None:
    cfg = DataConfig(root=str(tmp_path), source_root=str(tmp_path / "gta"))
    gta = resolve_line("leftImg8bit/train/gta5/gta5_00001_000019_leftImg8bit.png", cfg, tmp_path, "l")
    assert gta.kind == "gtav" and gta.label.name == "gta5_00001_000019_gtFine_labelTrainIds.png"
    cs = resolve_line("leftImg8bit/train/ulm/ulm_000001_000019_leftImg8bit.png", cfg, tmp_path, "l")
    assert cs.kind == "cityscapes" and cs.city == "ulm"
    native = resolve_line("images/00001.png", cfg, tmp_path, "l")
    assert native.label == tmp_path / "gta" / "labels" / "00001.png"
    (tmp_path / "l.txt").write_text("leftImg8bit/train/ulm/ulm_000001_000019_leftImg8bit.png\n\n")
    assert [s.city for s in read_list(tmp_path / "l.txt", cfg)] == ["ulm"]


def test_labelled_pool_and_step_sampler() -> None:
    src = [f"s{i}" for i in range(5)]
    tgt = ["t0", "t1"]
    pool = labeled_pool(src, tgt, 10, repeat=True, seed=0)  # type: ignore[arg-type]
    assert len(pool) == 8 + 5 and pool.count("t0") + pool.count("t1") == 8
    plan = StepPlan(13, 9, 4, 4, seed=0)
    assert len(StepSampler(plan, 1)) == plan.steps == 2  # 9 unlabelled // (4 x 1 process)
    batches = list(StepSampler(plan, 1))
    assert batches == [plan.codes(2), plan.codes(3)]
    items = [[plan.decode(c) for c in b] for b in batches]
    assert items == [[StepPlan(13, 9, 4, 4, seed=0).decode(c) for c in b] for b in batches]  # from (seed, step)
    assert all(i < 13 for b in items for i, _ in b[:4]) and all(b[4][0] >= 13 for b in items)
    # one pass over the labelled pool visits every item once before repeating
    seen = [plan.decode(c)[0] for step in range(13) for c in plan.codes(step)[:4]][:13]
    assert sorted(seen) == list(range(13))
