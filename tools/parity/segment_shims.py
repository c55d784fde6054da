"""Shims that let ZegCLIP's official code (ZiqinZhou66/ZegCLIP, an mmsegmentation 0.24 project) import on a
CPU-only machine without mmcv-full or mmseg: their registries and the few base classes and helpers the
compared modules touch are stubbed here; the official modules themselves (models/backbone, models/decode_heads,
models/losses, models/segmentor) are imported from the checkout unchanged. timm, ftfy and regex are the real
packages. The official ``models/__init__.py`` (which also imports the mmseg datasets) is bypassed by
registering ``models`` as a bare package over the checkout's folder.

Two rules of the libraries under the official code are written out here, with their source, because the
libraries are not installed: mmcv 1.x ``PolyLrUpdaterHook`` with linear warm-up (mmcv/runner/hooks/lr_updater.py)
and mmcv 1.x ``DefaultOptimizerConstructor``'s ``custom_keys`` rule (mmcv/runner/optimizer/default_constructor.py:
keys sorted alphabetically, then by length, longest first; the first key contained in a parameter's name sets
its lr_mult and decay_mult, the others are not consulted).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import add_official, cpu_shims, stub_module
from torch import nn


class Registry(dict):
    """A minimal mmcv Registry: ``register_module()`` as a decorator, ``build(cfg)`` from ``type``."""

    def register_module(self, name: str | None = None, force: bool = False, module: Any = None):
        def deco(cls):
            self[name or cls.__name__] = cls
            return cls

        return deco(module) if module is not None else deco

    def build(self, cfg: dict) -> Any:
        cfg = dict(cfg)
        return self[cfg.pop("type")](**cfg)


BACKBONES, HEADS, LOSSES, SEGMENTORS = Registry(), Registry(), Registry(), Registry()


class BaseDecodeHead(nn.Module):
    """The attributes of mmseg 0.24's BaseDecodeHead that ATMSingleHeadSeg uses."""

    def __init__(self, in_channels, channels, *, num_classes, dropout_ratio=0.1, conv_cfg=None, norm_cfg=None,
                 act_cfg=None, in_index=-1, input_transform=None, loss_decode=None, ignore_index=255,
                 sampler=None, align_corners=False, init_cfg=None, **kwargs) -> None:
        super().__init__()
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.ignore_index, self.align_corners = ignore_index, align_corners
        self.loss_decode = LOSSES.build(loss_decode)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)


def _identity_decorator(*args, **kwargs):
    if args and callable(args[0]) and not kwargs:
        return args[0]
    return lambda f: f


def _resize(input, size=None, scale_factor=None, mode="nearest", align_corners=None, warning=True):
    return F.interpolate(input, size, scale_factor, mode, align_corners)


def _add_prefix(inputs: dict, prefix: str) -> dict:
    return {f"{prefix}.{k}": v for k, v in inputs.items()}


def setup(root: Path) -> Path:
    """Put ``root`` on the path with the stubs in place; returns ``root``."""
    root = add_official(root)
    cpu_shims()
    builder = stub_module("mmseg.models.builder", BACKBONES=BACKBONES, HEADS=HEADS, LOSSES=LOSSES,
                          SEGMENTORS=SEGMENTORS, build_backbone=BACKBONES.build, build_head=HEADS.build)
    stub_module("mmseg.models", builder=builder)
    stub_module("mmseg.models.backbones", ResNet=nn.Module, VisionTransformer=nn.Module)
    stub_module("mmseg.models.decode_heads.decode_head", BaseDecodeHead=BaseDecodeHead)
    stub_module("mmseg.models.losses", accuracy=lambda pred, target, **k: torch.zeros(()))
    stub_module("mmseg.models.segmentors.base", BaseSegmentor=nn.Module)
    stub_module("mmseg.models.segmentors.encoder_decoder", EncoderDecoder=nn.Module)
    stub_module("mmseg.ops", Upsample=nn.Upsample, resize=_resize)
    stub_module("mmseg.core", add_prefix=_add_prefix)
    stub_module("mmcv.cnn", ConvModule=nn.Module)
    stub_module("mmcv.runner", auto_fp16=_identity_decorator, force_fp32=_identity_decorator)
    import timm.models.layers as timm_layers  # timm >= 0.9 keeps the old path without the ``drop`` module name

    if not hasattr(timm_layers, "drop"):
        import timm.layers.drop as timm_drop

        timm_layers.drop = timm_drop
    if "tkinter" not in sys.modules:
        try:
            import tkinter  # noqa: F401
        except ImportError:
            stub_module("tkinter", OUTSIDE="outside")  # img_encoder.py imports a constant it never uses
    for pkg in ("models", "models.backbone", "models.decode_heads", "models.losses", "models.segmentor"):
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(root / pkg.replace(".", "/"))]
        sys.modules[pkg] = mod
    return root


def official_param_groups(named: list[tuple[str, nn.Parameter]], base_lr: float, base_wd: float,
                          custom_keys: dict[str, dict[str, float]]) -> dict[str, tuple[float, float]]:
    """mmcv 1.x DefaultOptimizerConstructor with ``paramwise_cfg.custom_keys``: name -> (lr, weight decay)."""
    keys = sorted(sorted(custom_keys), key=len, reverse=True)
    out = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        lr, wd = base_lr, base_wd
        for key in keys:
            if key in name:
                lr = base_lr * custom_keys[key].get("lr_mult", 1.0)
                wd = base_wd * custom_keys[key].get("decay_mult", 1.0)
                break
        out[name] = (lr, wd)
    return out


def mmcv_poly_lr(it: int, max_iters: int, base_lr: float, power: float, min_lr: float, warmup_iters: int,
                 warmup_ratio: float) -> float:
    """mmcv 1.x PolyLrUpdaterHook (by_epoch=False) with linear warm-up, set before iteration ``it``."""
    regular = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr
    if it >= warmup_iters:
        return regular
    k = (1 - it / warmup_iters) * (1 - warmup_ratio)
    return regular * (1 - k)


def mmseg_random_crop(source: Path) -> type:
    """mmseg 0.24.1's ``RandomCrop`` (mmseg/datasets/pipelines/transforms.py) from the PyPI wheel
    ``mmsegmentation==0.24.1`` (a .whl or its unpacked folder), imported without mmcv: the module is loaded
    under a private package name, its ``..builder.PIPELINES`` is a bare Registry and ``mmcv`` /
    ``mmcv.utils`` are stubs (RandomCrop itself uses only NumPy; the stubs serve the other classes'
    decorators at import time)."""
    import importlib.util
    import zipfile

    rel = "mmseg/datasets/pipelines/transforms.py"
    if source.is_file():
        with zipfile.ZipFile(source) as z:
            code = z.read(rel).decode()
        origin = f"{source}!{rel}"
    else:
        code = (source / rel).read_text()
        origin = str(source / rel)
    stub_module("mmcv")
    stub_module("mmcv.utils", deprecated_api_warning=_identity_decorator, is_tuple_of=lambda *a, **k: True)
    pkg = "_zsk_mmseg0241"
    stub_module(f"{pkg}.datasets.pipelines")
    stub_module(f"{pkg}.datasets.builder", PIPELINES=Registry())
    for name in (pkg, f"{pkg}.datasets", f"{pkg}.datasets.pipelines"):
        sys.modules[name].__path__ = []
    spec = importlib.util.spec_from_loader(f"{pkg}.datasets.pipelines.transforms", loader=None, origin=origin)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = f"{pkg}.datasets.pipelines"
    sys.modules[spec.name] = module
    exec(compile(code, origin, "exec"), module.__dict__)
    return module.RandomCrop
