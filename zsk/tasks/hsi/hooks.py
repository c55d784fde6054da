"""hsi's hooks for `info`, `sample`, `zsk demo` and `zsk bench`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.errors import ZskError
from zsk.core.stages import stage_config
from zsk.core.task import Loaded, run_demo
from zsk.tasks.hsi import data as hsi_data
from zsk.tasks.hsi.config import Config
from zsk.tasks.hsi.evaluate import scene_probabilities
from zsk.tasks.hsi.train import PiecewiseStep, build_model, grid_offset, padded_cube

DEFAULT_BENCH_SHAPE = (145, 145, 200)  # Indian Pines, the benchmark cube


def scene_shape(cfg: Config) -> tuple[tuple[int, int, int], list[str], str]:
    """(rows, cols, bands) and class names of the recipe's scene: read from the file when present, else the
    benchmark table; returns also where the numbers come from."""
    try:
        image_path, image_key, labels_path, labels_key, bench = hsi_data.resolve_files(cfg.data)
    except ZskError:
        bench = hsi_data.BENCHMARKS.get(cfg.data.dataset or "")
        if (bench is None or bench.shape is None) and cfg.data.bands and cfg.data.class_names:
            return (0, 0, cfg.data.bands), list(cfg.data.class_names), "recipe (data.bands; files not found under data.root)"
        if bench is None or bench.shape is None:
            raise
        names = cfg.data.class_names or list(bench.class_names)
        b = bench.shape[2] - (cfg.data.drop_last_bands or bench.drop_last_bands)
        return (bench.shape[0], bench.shape[1], b), names, "benchmark table (files not found under data.root)"
    scene = hsi_data.load_scene(cfg.data)
    return scene.image.shape, scene.class_names, str(image_path)  # type: ignore[return-value]


def info(cfg: Config) -> dict:
    """Parameters (total/trainable per part), GFLOPs per pixel of dense inference, and the class table."""
    (h, w, b), names, source = scene_shape(cfg)
    bands = cfg.data.pca or b
    net = build_model(cfg, bands, len(names)).eval()
    total, trainable = count_params(net)
    parts = {"features": count_params(net.potentials.features)[0], "unary": count_params(net.potentials.unary)[0]}
    if net.potentials.pairwise is not None:
        parts["pairwise"] = count_params(net.potentials.pairwise)[0]
    if net.refine is not None:
        parts["refine"] = count_params(net.refine)[0]
    # FLOPs of dense inference on a 16 x 16 tile, counted on the meta device (shapes only, no arithmetic)
    tile = 16
    unpadded = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pad="none"))
    tile_cube = torch.zeros(bands, tile + 2 * (cfg.model.patch // 2), tile + 2 * (cfg.model.patch // 2), device="meta")
    meta_net = build_model(cfg, bands, len(names)).eval().to("meta")
    flops = count_flops(lambda: scene_probabilities(meta_net, tile_cube, unpadded))
    return {
        "model": cfg.model.name,
        "scene": {"rows": h, "cols": w, "bands": b, "bands_used": bands, "source": source},
        "band_groups": [list(g) for g in net.potentials.features.groups],
        "params_total": total,
        "params_trainable": trainable,
        "params_by_part": parts,
        "gflops": flops / tile**2 / 1e9,
        "gflops_unit": "per pixel of dense inference",
        "classes": {str(i + 1): n for i, n in enumerate(names)},
    }


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """The piecewise stage's Trainer step (its optimizer and settings) on `batch_size` training nodes with their
    neighbour pairs, and one dense prediction of the recipe's scene size (145 x 145 x 200 for Indian Pines);
    random weights and a synthetic cube."""
    try:
        (h, w, b), names, _ = scene_shape(cfg)
    except ZskError:
        (h, w, b), names = DEFAULT_BENCH_SHAPE, [f"class_{i}" for i in range(1, 17)]
    if h == 0:  # band count from the recipe, no scene at hand: bench the standard scene size
        h, w = DEFAULT_BENCH_SHAPE[:2]
    bands = cfg.data.pca or b
    k = len(names)
    train_cfg = stage_config(cfg.train, "piecewise")
    bs = batch_size or train_cfg.batch_size
    g = torch.Generator().manual_seed(0)
    cube = torch.rand(bands, h, w, generator=g)
    padded = padded_cube(cube, cfg).to(device)
    off = grid_offset(cfg)
    train_map = torch.full((h, w), -1, dtype=torch.long)
    inner = torch.zeros(h, w, dtype=torch.bool)
    inner[off : h - off, off : w - off] = True
    chosen = (torch.rand(h, w, generator=g) < 0.3) & inner
    train_map[chosen] = torch.randint(0, k, (int(chosen.sum()),), generator=g)
    net = build_model(cfg, bands, k).to(device)
    step = PiecewiseStep(padded, train_map.to(device), cfg.model.patch, off, cfg.model.crf_radius,
                         train_cfg.unary_weight, train_cfg.pairwise_weight)
    batch = torch.randperm(len(step), generator=g)[:bs]

    buffers: dict[str, torch.Tensor] = {}  # the node features reused from call to call, as predict does

    def infer_step() -> None:
        scene_probabilities(net, padded, cfg, buffers=buffers)

    return BenchSpec(model=net.potentials, step_fn=step, batch=batch, train_cfg=train_cfg, infer_step=infer_step,
                     train_samples=len(batch), infer_samples=h * w, unit="nodes", infer_unit="pixels",
                     extra=lambda: {"scene": f"{h}x{w}x{bands}", "model": cfg.model.name,
                                    "branch_padding": cfg.model.branch_padding})


def sample(out: Path, seed: int = 0, *, size: int = 64, bands: int = 48) -> dict[str, Any]:
    """Write a small synthetic scene (HDF5, MATLAB, ENVI, NumPy, with labels) for demo.yaml and tests."""
    from zsk.core.io import output_folder

    paths = hsi_data.write_sample(output_folder(Path(out), "sample folder"), size, size, bands, seed=seed)
    return {"directory": str(out), **paths}


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (`data.root: "@sample"`): the default sample scene (64 x 64 x 48, seed 0)."""
    hsi_data.write_sample(root)
    return {"data.root": str(root)}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train `hsi/demo` on the sample scene, evaluate OA on its test pixels and predict the ENVI copy of the cube."""

    def inputs(loaded: Loaded, data: dict) -> list[Path]:
        return [Path(data["root"]) / "sample.hdr"]

    return run_demo(_task(), workdir, device, "OA", inputs)


def _task() -> Any:
    from zsk.tasks.hsi.cli import TASK

    return TASK
