"""Shims that let the SATS official code (QIU023/SATS_Continual_Semantic_Seg, torch 1.8 + apex + mmcv era) be
imported and run on the CPU for tools/parity/css.py. Nothing here reimplements the compared code: the shims
stand in for packages the compared functions never use (inplace_abn, einops, the DeepLab/saliency modules)
and for apex's ``amp.scale_loss``, which records the loss it is given."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
import types
from pathlib import Path
from typing import Any

import torch
from common import cpu_shims, stub_module

SCALED: list[torch.Tensor] = []  # every loss passed to apex.amp.scale_loss (the official total loss)


@contextlib.contextmanager
def _scale_loss(loss: torch.Tensor, optimizer: Any):  # noqa: ANN202 - apex's signature
    SCALED.append(loss.detach().clone())
    yield loss


def _drop_undefined_line(train: types.ModuleType) -> None:
    """``Trainer.train`` starts with ``relevant_matrix_combined = relevant_matrix_combined.to(device)``, a name
    defined nowhere (UnboundLocalError: the released code cannot train). Recompile the method from the
    checkout's own source with that one statement replaced by ``pass``; nothing else changes."""
    line = "relevant_matrix_combined = relevant_matrix_combined.to(device)"
    src = "\n".join(ln[4:] if ln.startswith("    ") else ln for ln in inspect.getsource(train.Trainer.train).splitlines())
    if line not in src:
        raise SystemExit("error: Trainer.train of this checkout differs from the compared commit; update css_shims")
    namespace: dict[str, Any] = {}
    exec(compile(src.replace(line, "pass"), train.__file__, "exec"), train.__dict__, namespace)  # noqa: S102
    train.Trainer.train = namespace["train"]


def install(root: Path) -> dict[str, types.ModuleType]:
    """Stub the unused imports, make ``modules`` a namespace over the checkout's ``modules/`` without its
    ``__init__`` (which imports inplace_abn's DeepLab), and import the compared official modules."""
    cpu_shims()
    stub_module("apex", amp=types.SimpleNamespace(scale_loss=_scale_loss))
    stub_module("apex.amp", scale_loss=_scale_loss)
    stub_module("inplace_abn")
    stub_module("einops", rearrange=lambda *a, **k: None, reduce=lambda *a, **k: None)
    stub_module("einops.layers.torch", Rearrange=object)
    stub_module("models")
    pkg = types.ModuleType("modules")
    pkg.__path__ = [str(root / "modules")]  # type: ignore[attr-defined]
    sys.modules["modules"] = pkg
    segformer = importlib.import_module("modules.segformer")
    mit = importlib.import_module("modules.segformer_offical.mix_transformer")
    for name in ("SegFormer_Body", "SegFormer_Head", "segformer_type_args"):
        setattr(pkg, name, getattr(segformer, name))
    for name in ("DeeplabV3", "DSS", "build_model"):
        setattr(pkg, name, None)
    out = {"segformer": segformer, "mit": mit}
    for name in ("segmentation_module", "train", "tasks", "utils.loss", "dataset.utils", "dataset.ade", "dataset.transform"):
        out[name] = importlib.import_module(name)
    _drop_undefined_line(out["train"])
    out["train"].distributed = types.SimpleNamespace(get_rank=lambda: 0, get_world_size=lambda: 1)
    out["train"].torch.distributed.reduce = lambda *a, **k: None
    return out
