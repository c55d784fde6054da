"""Import the weights that ACNet's official ``train.py`` saves (leftthomas/ACNet: ``{save_root}/{data}_{backbone}_{dim}``
followed by ``_extractor.pth``, ``_generator.pth``, ``_discriminator.pth`` and ``_proxies.pth``, plain state dicts)
into one zsk checkpoint, so ``zsk sbir eval`` / ``predict`` run the authors' trained networks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zsk.core.checkpoint import load_model_state, read_state_dict, save_checkpoint
from zsk.core.errors import ZskError
from zsk.core.recipe import load_recipe, parse_config
from zsk.core.run import absolute_root
from zsk.tasks.sbir.config import Config

PARTS = ("extractor", "generator", "discriminator", "proxies")


def _read(path: Path) -> dict[str, torch.Tensor]:
    state = read_state_dict(path, "official weights", "--prefix names the .pth files train.py saved, e.g. "
                            "result/sketchy_resnet50_512 for result/sketchy_resnet50_512_extractor.pth", unwrap=False)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ZskError(f"official weights {path} are not a state dict of tensors")
    return state


def convert_official(prefix: str | Path, recipe: str | Path, out: str | Path, sets: list[str] | None = None,
                     seen_classes: list[str] | None = None) -> dict[str, Any]:
    """Write ``out``: a zsk sbir checkpoint holding the official networks, with the recipe (``--recipe``/``--set``:
    backbone, d, data) they are evaluated with. The number of seen classes comes from the proxies (``W``:
    (d, classes)); their names, when ``seen_classes`` is None, from the recipe's training folders if readable."""
    from zsk.tasks.sbir.train import build_model

    prefix = Path(prefix)
    states = {part: _read(prefix.with_name(f"{prefix.name}_{part}.pth")) for part in PARTS}
    w = states["proxies"].get("W")
    if w is None or w.dim() != 2:
        raise ZskError(f"{prefix}_proxies.pth has no 2-D 'W' (pytorch-metric-learning NormalizedSoftmaxLoss); "
                       "give the proxies file train.py saved")
    recipe_dict = absolute_root(load_recipe(recipe, sets))
    recipe_dict.pop("_source", None)
    cfg: Config = parse_config(Config, recipe_dict)
    if w.shape[0] != cfg.model.emb_dim:
        raise ZskError(f"{prefix}_proxies.pth has d = {w.shape[0]} but model.emb_dim = {cfg.model.emb_dim}; "
                       f"pass --set model.emb_dim={w.shape[0]}")
    num_seen = int(w.shape[1])
    if seen_classes is None:
        try:
            from zsk.tasks.sbir.data import read_split

            seen_classes = read_split(cfg.data, "train").classes
        except ZskError:
            seen_classes = []
    if seen_classes and len(seen_classes) != num_seen:
        raise ZskError(f"the recipe's training folders hold {len(seen_classes)} classes but {prefix}_proxies.pth has "
                       f"{num_seen} proxies; point data.root at the dataset the weights were trained on")
    model = build_model(parse_config(Config, {**recipe_dict, "model": {**recipe_dict.get("model", {}), "pretrained": None}}),
                        num_seen)
    state = {f"extractor.{k}": v for k, v in states["extractor"].items()}
    state |= {f"generator.{k}": v for k, v in states["generator"].items()}
    state |= {f"discriminator.{k}": v for k, v in states["discriminator"].items()}
    state["proxies"] = w.T.contiguous()
    load_model_state(model, state, source=str(prefix))  # strict: a wrong backbone or width is named here
    save_checkpoint(out, {"task": "sbir", "stage": "", "recipe": recipe_dict, "model": model.state_dict(),
                          "extra": {"num_seen": num_seen, "seen_classes": list(seen_classes), "unseen_classes": [],
                                    "source": f"official ACNet weights {prefix}_*.pth"},
                          "metrics": {}, "step": 0})
    return {"checkpoint": str(out), "backbone": cfg.model.backbone, "emb_dim": cfg.model.emb_dim,
            "seen_classes": num_seen, "next": f"zsk sbir eval --checkpoint {out} --json"}
