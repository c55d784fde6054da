"""Issue 11 (segment): what the paper recipes build and run, checked against the official ZegCLIP code
(ZiqinZhou66/ZegCLIP): the backbone forward, the transductive schedule, the order of crop and label remap,
the Context recipe against the configuration it cites, the test-time resize and the cross-dataset recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from zsk.core.run import load_config
from zsk.core.stages import stage_config
from zsk.core.trainer import lr_factor
from zsk.data.images import PASCAL_CONTEXT_59_CLASSES, write_label
from zsk.data.seg_transforms import SegTestTransform, keep_ratio_test_size
from zsk.tasks.segment import splits
from zsk.tasks.segment.config import Config, ModelConfig
from zsk.tasks.segment.data import Benchmark, SegTrainDataset
from zsk.tasks.segment.model import PromptedVisionTransformer

PAPER = ["voc", "voc_transductive", "voc_fully", "coco_stuff", "coco_stuff_transductive", "coco_stuff_fully",
         "context", "coco_to_voc", "coco_to_context"]


@pytest.fixture(scope="module")
def tiny_clip():
    from zsk.models.clip import load_clip

    torch.manual_seed(0)
    return load_clip("tiny-vit-p8", None)


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_build_the_official_backbone(name: str) -> None:
    """The official block never calls its DropPath (models/backbone/utils.py) and the official encoder adds
    the class embedding to the CLS token twice (img_encoder.py): every paper recipe builds that model."""
    cfg, _ = load_config("segment", Config, f"segment/{name}", None)
    assert cfg.model.drop_path_rate == 0.0
    assert cfg.model.cls_embedding_twice is True
    assert cfg.eval.min_size == (None if name == "demo" else 512)


def test_frozen_vit_is_deterministic_in_training_without_prompt_dropout(tiny_clip) -> None:
    """With the default model settings (prompt dropout off here) train and eval features are identical:
    no stochastic depth in the frozen ViT."""
    mc = ModelConfig()
    enc = PromptedVisionTransformer(tiny_clip.model.visual, 2, (4, 4), mc.drop_path_rate, 0.0, mc.cls_embedding_twice)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    train = enc.train()(x)
    ev = enc.eval()(x)
    assert torch.equal(train[0], ev[0]) and torch.equal(train[1], ev[1])


@pytest.mark.parametrize("name,total,stop,second", [("voc_transductive", 20000, 10000, 10000),
                                                    ("coco_stuff_transductive", 80000, 40000, 40000)])
def test_transductive_stage_one_is_the_first_half_of_the_inductive_schedule(name: str, total: int, stop: int,
                                                                             second: int) -> None:
    """Official: stage 2 loads iter_10000 (iter_40000) of the 20k (80k) inductive run, so stage 1 ends with
    the prompts and head still at ~1.1e-4 (x10 groups), not at min_lr."""
    cfg, _ = load_config("segment", Config, f"segment/{name}", None)
    ind, st = stage_config(cfg.train, "inductive"), stage_config(cfg.train, "self_training")
    assert (ind.steps, ind.max_steps) == (total, stop)
    assert st.steps == second and st.max_steps is None
    lr_at_handover = lr_factor(stop, ind.steps, ind, base_lr=2e-4) * 2e-4
    assert 1.0e-4 < lr_at_handover < 1.2e-4


def _folder_bench(root: Path, label: np.ndarray) -> Benchmark:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros(label.shape + (3,), np.uint8)).save(root / "images" / "a.png")
    write_label(root / "masks" / "a.png", label)
    return Benchmark("folder", root, ["s0", "u1", "s2"], (1,), False)


def test_inductive_labels_are_cropped_on_global_ids_then_remapped(tmp_path: Path) -> None:
    """Official: the mmseg pipeline (RandomCrop's cat_max_ratio) sees global ids; the segmentor remaps seen
    ids and drops unseen ones afterwards (zegclip.py, _visiable_mask)."""
    label = np.zeros((8, 8), np.uint8)
    label[:, :5] = 1  # the unseen class covers 5/8 of the image
    label[:, 7] = 2
    bench = _folder_bench(tmp_path / "d", label)
    seen_by_transform = []

    def transform(image: np.ndarray, lab: np.ndarray, g=None):
        seen_by_transform.append(np.asarray(lab).copy())
        return torch.zeros(3, *lab.shape), torch.from_numpy(np.asarray(lab).astype(np.int64))

    lut = splits.inductive_label_lut(3, bench.seen)
    ds = SegTrainDataset(bench, "train", lut, transform)
    out = ds[0]["label"].numpy()
    assert np.array_equal(seen_by_transform[0], label)  # global ids, unseen included
    assert np.array_equal(out, lut[label])  # remapped after: seen -> 0..|S|-1, unseen -> 255


def test_context_recipe_follows_the_otseg_configuration_it_cites() -> None:
    """OTSeg's context59.py / vpt_context_vpt.py (cubeyoung/OTSeg): img_scale (520, 520) with the test
    Resize's min_size 512 (short side to 520), window 480 stride 80, class 'tv monitor'."""
    cfg, _ = load_config("segment", Config, "segment/context", None)
    ev = cfg.eval
    assert (ev.crop_size, ev.stride, tuple(ev.img_scale), ev.min_size) == (480, 80, (520, 520), 512)
    assert (cfg.data.crop_size, tuple(cfg.data.img_scale)) == (480, (520, 520))
    assert "tv monitor" in PASCAL_CONTEXT_59_CLASSES and "tvmonitor" not in PASCAL_CONTEXT_59_CLASSES
    assert keep_ratio_test_size(375, 500, (520, 520), 512) == (520, 693)


@pytest.mark.parametrize("h,w,scale,min_size,want", [
    (375, 500, (2048, 512), 512, (512, 683)),   # usual VOC image: short side to 512
    (300, 2000, (2048, 512), 512, (512, 3413)),  # > 4:1: the long side passes 2048 (mmseg min_size rule)
    (300, 2000, (2048, 512), None, (307, 2048)),  # without min_size: the long side bounds the resize
    (600, 400, (520, 520), 512, (780, 520)),
])
def test_test_time_resize_follows_mmseg_min_size(h: int, w: int, scale, min_size, want) -> None:
    assert keep_ratio_test_size(h, w, scale, min_size) == want
    img = np.zeros((h, w, 3), np.uint8)
    assert tuple(SegTestTransform(scale, "imagenet", min_size)(img).shape[-2:]) == want


@pytest.mark.parametrize("name,dataset,classes,templates", [("coco_to_voc", "voc", 20, "single"),
                                                            ("coco_to_context", "context60", 60, "multi")])
def test_cross_dataset_recipes(name: str, dataset: str, classes: int, templates: str) -> None:
    """configs/cross_dataset/coco-to-voc.py and coco-to-context.py: the COCO-Stuff model (N = 100) tested on
    every class of the target dataset (all seen: the 0.1 calibration shifts every class alike)."""
    from zsk.tasks.segment.data import load_benchmark

    cfg, _ = load_config("segment", Config, f"segment/{name}", None)
    assert cfg.model.num_prompts == 100 and cfg.data.dataset == dataset and cfg.model.text.templates == templates
    assert (cfg.eval.crop_size, cfg.eval.stride) == (512, 426)
    bench = load_benchmark(cfg.data)
    assert bench.num_classes == classes and bench.unseen == ()


@pytest.mark.parametrize("name", ["voc", "coco_stuff", "context", "voc_transductive"])
def test_paper_recipes_decay_every_trainable_parameter_as_the_official_optimizer(name: str) -> None:
    """mmcv's custom_keys rule applies only the first (longest) key contained in a name: the official
    'backbone' / 'head' keys shadow 'norm' and 'ln', so prompt_norm and the decoder's LayerNorms keep
    weight decay 0.01 in the paper's runs."""
    cfg, _ = load_config("segment", Config, f"segment/{name}", None)
    assert cfg.train.norm_decay_mult == 1.0
    from zsk.tasks.segment.config import TrainConfig

    assert TrainConfig(steps=1).norm_decay_mult == 1.0


def test_min_size_resize_refuses_only_extreme_aspect_ratios() -> None:
    from zsk.core.errors import ZskError
    from zsk.tasks.segment.evaluate import check_image_size

    check_image_size(375, 500, (2048, 512), 16, min_size=512)
    check_image_size(40, 56, (64, 32), 8, min_size=512)  # min_size above img_scale: short side 512
    check_image_size(100, 3200, (2048, 512), 16, min_size=512)  # 32:1 -> 512 x 16384
    with pytest.raises(ZskError, match="x.png.*32:1"):
        check_image_size(3, 2000, (2048, 512), 16, "image x.png", min_size=512)
