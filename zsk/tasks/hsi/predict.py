"""`zsk hsi predict`: per-pixel class maps of whole cubes (any format `zsk.data.cubes` reads, or a .npy on
stdin): `<name>_labels.npy` / `.png` (indexed, the class palette), optional `<name>_probs.npy` and a
`<name>_preview.png` (RGB composite beside the prediction, with a legend)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, output_folder, output_names
from zsk.core.task import Loaded
from zsk.data import cubes
from zsk.data.images import write_label
from zsk.tasks.hsi import data as hsi_data
from zsk.tasks.hsi.config import Config
from zsk.tasks.hsi.evaluate import scene_probabilities, to_image_grid
from zsk.tasks.hsi.train import grid_offset, padded_cube


def read_input_cube(source: Path | StdinInput, key: str | None) -> np.ndarray:
    """A validated cube from a path (any supported format) or stdin's bytes (a .npy stream)."""
    if isinstance(source, StdinInput):
        return cubes.read_cube_bytes(source.data, source.name)
    return cubes.read_cube(Path(source), key)


def save_label_png(path: Path, labels: np.ndarray, palette: np.ndarray) -> None:
    """Label map 0..K as an indexed PNG with the class palette (0 black)."""
    write_label(path, labels, palette)


def rgb_composite(cube: np.ndarray, bands: list[int] | tuple[int, ...]) -> np.ndarray:
    """(H, W, 3) uint8 composite of three bands, each stretched between its 2nd and 98th percentile."""
    idx = [min(int(b), cube.shape[2] - 1) for b in bands]
    rgb = cube[..., idx].astype(np.float64)
    lo = np.percentile(rgb, 2, axis=(0, 1))
    hi = np.percentile(rgb, 98, axis=(0, 1))
    rgb = np.clip((rgb - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return (rgb * 255).astype(np.uint8)


def save_preview(path: Path, cube: np.ndarray, labels: np.ndarray, class_names: list[str], palette: np.ndarray,
                 rgb_bands: list[int], title: str) -> None:
    """Side-by-side PNG: RGB composite | predicted classes with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    axes[0].imshow(rgb_composite(cube, rgb_bands))
    axes[0].set_title(f"RGB composite (bands {', '.join(map(str, rgb_bands))})")
    axes[1].imshow(palette[labels])
    axes[1].set_title("prediction")
    for ax in axes:
        ax.axis("off")
    present = sorted(set(np.unique(labels).tolist()) - {0})
    handles = [Patch(color=palette[c] / 255.0, label=class_names[c - 1]) for c in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, max(1, len(handles))), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path, *, key: str | None = None,
            probs: bool = False, preview: bool = True) -> Iterator[dict[str, Any]]:
    """Label maps for whole cubes: `<name>_labels.png` / `.npy`, optional `<name>_probs.npy` (`probs`),
    `<name>_preview.png` (`preview`); `key` names the array inside .mat/.h5 inputs. `<name>` is unique per input
    (`zsk.core.io.output_names`: x.h5 and x.mat give x_h5 and x_mat), so no input overwrites another's files.
    A cube with NaN/inf values is refused unless `data.non_finite: zero`, which leaves those pixels 0."""
    net, extra = loaded.model, loaded.extra
    cfg: Config = loaded.cfg
    names = list(extra["class_names"])
    palette = extra["palette"].numpy().astype(np.uint8)
    out = output_folder(out)
    buffers: dict[str, torch.Tensor] = {}  # node features of one cube, reused by the next of the same size
    for source, name in zip(inputs, output_names(inputs), strict=True):
        raw = read_input_cube(source, key)
        where = source.name if isinstance(source, StdinInput) else str(source)
        expected = int(extra["preprocess"]["bands_in"])
        if raw.shape[2] != expected:
            raise ZskError(f"{where}: cube has {raw.shape[2]} bands but the checkpoint {loaded.checkpoint} was trained "
                           f"on {expected} bands")
        hsi_data.check_scene_size(raw.shape, cfg.model.patch, cfg.data.pad, where)
        invalid = hsi_data.non_finite_pixels(raw, where, cfg.data.non_finite)
        cube = hsi_data.apply_preprocess(raw, extra["preprocess"], where)
        padded = padded_cube(torch.from_numpy(cube).permute(2, 0, 1).contiguous(), cfg).to(loaded.device)
        p = scene_probabilities(net, padded, cfg, desc=f"predict {name}", buffers=buffers)["final"]
        full = to_image_grid(p, raw.shape[:2], grid_offset(cfg), fill=0).cpu()
        if invalid.any():
            full[torch.from_numpy(invalid)] = 0.0
        labels = (full.argmax(-1) + 1).numpy().astype(np.uint8 if len(names) < 256 else np.int32)
        if grid_offset(cfg):
            labels[~hsi_data.border_mask(raw.shape[:2], grid_offset(cfg))] = 0
        labels[invalid] = 0  # data.non_finite=zero: no prediction where the cube has no valid spectrum
        files = {"labels_npy": out / f"{name}_labels.npy", "labels_png": out / f"{name}_labels.png"}
        np.save(files["labels_npy"], labels)
        save_label_png(files["labels_png"], labels, palette)
        if probs:
            files["probs"] = out / f"{name}_probs.npy"
            np.save(files["probs"], full.numpy().astype(np.float32))
        if preview:
            files["preview"] = out / f"{name}_preview.png"
            shown = np.where(invalid[..., None], 0, raw) if invalid.any() else raw
            save_preview(files["preview"], shown, labels, names, palette, extra["rgb_bands"],
                         f"{name}: {loaded.checkpoint.parent.name}")
        counts = np.bincount(labels.ravel(), minlength=len(names) + 1)
        yield {"input": where, "shape": list(raw.shape), **{k: str(v) for k, v in files.items()},
               "class_pixels": {n: int(c) for n, c in zip(names, counts[1:], strict=True)}}
