"""``zsk gzsl predict``: the top-k classes of images (or rows of ``.npy`` feature files) among candidate
graph nodes, scored by the predicted classifiers (DGP, Kampffmeyer et al. CVPR 2019)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, atomic_open, output_names
from zsk.core.task import Loaded
from zsk.data.graphs import read_names, wordnet_lemma_names
from zsk.tasks.gzsl.config import Config
from zsk.tasks.gzsl.data import (
    GraphData,
    check_out_dir,
    eval_transform,
    load_feature_array,
    read_rgb,
    resolve,
)
from zsk.tasks.gzsl.evaluate import image_encoder, predicted_classifiers
from zsk.tasks.gzsl.metrics import append_bias_input


def _display_names(cfg: Config, wnids: Sequence[str]) -> dict[str, str]:
    names_path = resolve(cfg.data.root, cfg.data.names) if cfg.data.names else None
    if names_path is not None and names_path.is_file():
        table = read_names(names_path)
        return {w: (table.get(w) or [w])[0] for w in wnids}
    try:
        lemmas = wordnet_lemma_names(wnids, cfg.model.nltk_data)
        return {w: lem[0].replace("_", " ") for w, lem in zip(wnids, lemmas, strict=True)}
    except ZskError:
        return {w: w for w in wnids}


def read_candidates(path: Path, index: dict[str, int], graph_file: Path) -> list[str]:
    """A file of wnids (one per line) that must all be graph nodes."""
    try:
        wnids = [ln.split()[0] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise ZskError(f"candidates file not found: {path} (one wnid per line)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ZskError(f"cannot read candidates file {path}: {e} (one wnid per line)") from None
    missing = [w for w in wnids if w not in index]
    if missing:
        raise ZskError(f"{path}: wnid {missing[0]} is missing from the graph {graph_file}")
    if not wnids:
        raise ZskError(f"{path} lists no wnid")
    return wnids


FEATURES_HINT = "one pooled CNN feature row per image: an N x F or F .npy array"


def npy_shape(path: Path) -> tuple[int, ...]:
    """The shape in a ``.npy`` header, read without the data; a file that is not a complete ``.npy`` array of
    real numbers is a ``ZskError`` naming it (the data itself is checked when read)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # other header versions: read the whole array
                return tuple(load_feature_array(path, FEATURES_HINT).shape)
            data_start = f.tell()
    except FileNotFoundError:
        raise ZskError(f"features file not found: {path}") from None
    except (OSError, ValueError, EOFError) as e:
        raise ZskError(f"cannot read features {path}: {e} ({FEATURES_HINT})") from None
    if dtype.kind not in "biuf":
        raise ZskError(f"features {path} hold {dtype} values; expected real numbers ({FEATURES_HINT})")
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size < expected:
        raise ZskError(f"features {path} are truncated: {path.stat().st_size} bytes where shape {tuple(shape)} needs "
                       f"{expected}")
    return tuple(shape)


def _check_inputs(paths: Sequence[Path], width: int) -> None:
    """Fail before any work on an input that cannot be read: a ``.npy`` file of the wrong shape or width
    (``width`` with the bias column, or one less), or a file that is no image."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        if path.suffix.lower() == ".npy":
            shape = npy_shape(path)
            if len(shape) not in (1, 2):
                raise ZskError(f"features {path} have shape {shape}; expected N x F or F ({FEATURES_HINT})")
            if len(shape) == 2 and shape[0] == 0:
                raise ZskError(f"features {path} hold no rows (shape {shape})")
            if shape[-1] not in (width, width - 1):
                raise ZskError(f"{path}: features are {shape[-1]}-d but the classifiers are {width}-d (with bias: "
                               f"features + 1): use features of the CNN whose last layer was regressed")
            continue
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018 - the header is parsed on open
        except FileNotFoundError:
            raise ZskError(f"image not found: {path}") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ZskError(f"cannot read image {path}: {e} (give images or .npy feature files)") from None


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path, *, candidates: Path | None = None,
            top_k: int = 5) -> Iterator[dict[str, Any]]:
    """Classify images (or rows of ``.npy`` feature files) among the candidates (default: every graph node):
    one row ``{"input", "input_name", ["row"], "top": [{"wnid", "name", "score"}, ...]}`` per image or feature
    row (``input_name``: unique and stable per input, :func:`zsk.core.io.output_names`, so inputs that share a
    stem stay apart), all written to ``<out>/predictions.jsonl`` (atomically: a failed run leaves an earlier
    file as it was). Every input is checked before any is classified."""
    if top_k < 1:
        raise ZskError(f"--top-k must be >= 1, got {top_k}")
    if any(isinstance(p, StdinInput) for p in inputs):
        raise ZskError("gzsl predict reads image or .npy files; '-' gives their paths on stdin")
    paths = [Path(p) for p in inputs]  # type: ignore[arg-type]
    out = Path(out)
    check_out_dir(out)
    cfg: Config = loaded.cfg
    data: GraphData = loaded.parts["data"]
    dev = loaded.device
    index = data.index()
    cand = read_candidates(candidates, index, data.graph_file) if candidates else list(data.graph.wnids)
    pred = predicted_classifiers(loaded).float()
    w = pred[torch.tensor([index[c] for c in cand], device=dev)]
    _check_inputs(paths, w.shape[1])
    needs_images = any(p.suffix.lower() != ".npy" for p in paths)
    cnn = image_encoder(loaded) if needs_images else None
    names = _display_names(cfg, cand)
    transform = eval_transform(cfg.data.resize, cfg.data.crop) if needs_images else None
    k = min(top_k, len(cand))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZskError(f"cannot create the --out folder {out}: {e.strerror or e}") from None
    with atomic_open(out / "predictions.jsonl", "w") as log_file:
        for path, out_name in zip(paths, output_names(paths), strict=True):
            if path.suffix.lower() == ".npy":
                arr = load_feature_array(path, FEATURES_HINT)
                feats = torch.from_numpy(np.atleast_2d(arr)).to(dev)
                rows: list[int | None] = list(range(len(feats)))
            else:
                assert cnn is not None and transform is not None
                with torch.no_grad():
                    feats = cnn(transform(read_rgb(path)).unsqueeze(0).to(dev)).float()
                rows = [None]
            if feats.ndim != 2 or feats.shape[1] not in (w.shape[1], w.shape[1] - 1):
                raise ZskError(f"{path}: features are {feats.shape[-1]}-d but the classifiers are {w.shape[1]}-d")
            scores = append_bias_input(feats, w.shape[1]) @ w.T
            top = scores.topk(k, dim=1)
            for row, vals, idx in zip(rows, top.values.tolist(), top.indices.tolist(), strict=True):
                rec: dict[str, Any] = {"input": str(path), "input_name": out_name}
                if row is not None:
                    rec["row"] = row
                rec["top"] = [{"wnid": cand[j], "name": names[cand[j]], "score": v} for j, v in zip(idx, vals, strict=True)]
                log_file.write(json.dumps(rec) + "\n")
                yield rec
