"""`zsk contrast linear`: the linear evaluation of a pretrained MetAug checkpoint as its own run (frozen encoder
and generators, a new probe trained with eval.protocol's schedule on eval.layer's features)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from zsk.core.checkpoint import load_model_state
from zsk.core.recipe import dump_recipe
from zsk.core.run import release_run, start_run
from zsk.core.task import read_trained
from zsk.tasks.contrast.config import Config
from zsk.tasks.contrast.evaluate import network_of
from zsk.tasks.contrast.train import run_linear

PROBES = ("probe.", "online_probe.")  # trained anew here (their shape follows eval.layer / eval.features)


def linear_evaluation(checkpoint: Path, out: Path | None, sets: list[str] | None, device: str | None,
                      seed: int | None) -> dict[str, Any]:
    """Train and score a linear probe on the frozen network of `checkpoint` (its recipe, `sets` on top)."""
    cfg, state = read_trained("contrast", checkpoint, Config, sets)
    # the network first: a checkpoint that does not fit the recipe fails before a run folder is claimed
    net = network_of(cfg, state, checkpoint)
    weights = {k: v for k, v in (state.get("model") or {}).items() if not k.startswith(PROBES)}
    load_model_state(net, weights, PROBES, source=str(checkpoint))
    with tempfile.TemporaryDirectory() as tmp:
        recipe_file = Path(tmp) / "recipe.yaml"
        dump_recipe({k: v for k, v in (state.get("recipe") or {}).items() if k != "_source"}, recipe_file)
        ctx = start_run("contrast", Config, recipe_file, sets, out=out, device=device, seed=seed)
    try:
        return run_linear(ctx, net.to(ctx.device))
    finally:
        release_run(ctx)
