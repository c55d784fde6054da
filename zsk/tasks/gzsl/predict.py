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
from zsk.core.io import StdinInput
from zsk.core.task import Loaded
from zsk.data.graphs import read_names, wordnet_lemma_names
from zsk.tasks.gzsl.config import Config
from zsk.tasks.gzsl.data import GraphData, eval_transform, read_rgb, resolve
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
    missing = [w for w in wnids if w not in index]
    if missing:
        raise ZskError(f"{path}: wnid {missing[0]} is missing from the graph {graph_file}")
    if not wnids:
        raise ZskError(f"{path} lists no wnid")
    return wnids


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path, *, candidates: Path | None = None,
            top_k: int = 5) -> Iterator[dict[str, Any]]:
    """Classify images (or rows of ``.npy`` feature files) among the candidates (default: every graph node):
    one row ``{"input", ["row"], "top": [{"wnid", "name", "score"}, ...]}`` per image or feature row, also
    written to ``<out>/predictions.jsonl``."""
    if top_k < 1:
        raise ZskError("--top-k must be >= 1")
    if any(isinstance(p, StdinInput) for p in inputs):
        raise ZskError("gzsl predict reads image or .npy files; '-' gives their paths on stdin")
    paths = [Path(p) for p in inputs]  # type: ignore[arg-type]
    cfg: Config = loaded.cfg
    data: GraphData = loaded.parts["data"]
    dev = loaded.device
    needs_images = any(p.suffix.lower() != ".npy" for p in paths)
    cnn = image_encoder(loaded) if needs_images else None
    pred = predicted_classifiers(loaded).float()
    index = data.index()
    cand = read_candidates(candidates, index, data.graph_file) if candidates else list(data.graph.wnids)
    w = pred[torch.tensor([index[c] for c in cand], device=dev)]
    names = _display_names(cfg, cand)
    transform = eval_transform(cfg.data.resize, cfg.data.crop) if needs_images else None
    k = min(top_k, len(cand))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as log_file:
        for path in paths:
            if path.suffix.lower() == ".npy":
                try:
                    arr = np.load(path, allow_pickle=False)
                except (OSError, ValueError) as e:
                    raise ZskError(f"cannot read features {path}: {e}") from None
                feats = torch.from_numpy(np.atleast_2d(arr).astype(np.float32)).to(dev)
                rows = [(f"{path}", i) for i in range(len(feats))]
            else:
                assert cnn is not None and transform is not None
                with torch.no_grad():
                    feats = cnn(transform(read_rgb(path)).unsqueeze(0).to(dev)).float()
                rows = [(str(path), None)]
            if feats.ndim != 2 or feats.shape[1] not in (w.shape[1], w.shape[1] - 1):
                raise ZskError(f"{path}: features are {feats.shape[-1]}-d but the classifiers are {w.shape[1]}-d")
            scores = append_bias_input(feats, w.shape[1]) @ w.T
            top = scores.topk(k, dim=1)
            for (src, row), vals, idx in zip(rows, top.values.tolist(), top.indices.tolist(), strict=True):
                rec: dict[str, Any] = {"input": src}
                if row is not None:
                    rec["row"] = row
                rec["top"] = [{"wnid": cand[j], "name": names[cand[j]], "score": v} for j, v in zip(idx, vals, strict=True)]
                log_file.write(json.dumps(rec) + "\n")
                yield rec
