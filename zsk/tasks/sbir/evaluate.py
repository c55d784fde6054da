"""Zero-shot SBIR evaluation (leftthomas/ACNet ``train.py`` ``val`` and ``utils.py`` ``compute_metric``): the
unseen photos are embedded by E (the gallery), the unseen sketches by E(G(s)) (the queries), and the gallery
is ranked by cosine similarity; mAP@all, mAP@200, P@100 and P@200 follow SAKE's protocol
(:mod:`zsk.metrics.ranking`). Gallery embeddings of a trained checkpoint are cached in ``$ZSK_CACHE`` under a
content key (checkpoint and gallery file fingerprints), so repeated evaluations and predictions, also from
concurrent jobs, embed a gallery once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsk.core.cache import code_version, default_cache, file_fingerprint
from zsk.core.checkpoint import load_model_state
from zsk.core.device import autocast, autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.progress import progress
from zsk.core.task import Loaded, loaded_model, read_trained
from zsk.core.trainer import make_eval_loader
from zsk.metrics.ranking import PROTOCOL, per_query_metrics
from zsk.tasks.sbir.config import Config
from zsk.tasks.sbir.data import DomainSplit, ImageFiles, load_split
from zsk.tasks.sbir.model import ACNet
from zsk.tasks.sbir.train import METRICS, build_model


@torch.no_grad()
def embed_images(encode: Callable[[torch.Tensor], torch.Tensor], paths: Sequence[Path], cfg: Config,
                 device: torch.device, desc: str = "embedding") -> torch.Tensor:
    """(N, d) float32 embeddings of image files through ``encode`` (E for photos, E∘G for sketches), in
    order, batched by ``eval.batch_size``."""
    loader = make_eval_loader(ImageFiles(paths, cfg.data.image_size), cfg.eval.batch_size,
                              workers=cfg.runtime.workers, sharded=False)
    dtype = autocast_dtype(device, cfg.runtime.precision)
    out = []
    for batch in progress(loader, total=len(loader), desc=desc):
        with autocast(device, dtype):
            out.append(encode(batch.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def gallery_embeddings(model: ACNet, cfg: Config, paths: Sequence[Path], device: torch.device,
                       checkpoint: Path | None = None) -> torch.Tensor:
    """Photo embeddings E(p) of a gallery; with a ``checkpoint`` (and ``eval.cache_gallery``) read from / written
    to the content-addressed cache, keyed by the checkpoint's and every photo's fingerprint."""
    def compute() -> torch.Tensor:
        return embed_images(model.embed_photos, paths, cfg, device, "embedding gallery")

    if checkpoint is None or not cfg.eval.cache_gallery:
        return compute()
    key = {"what": "sbir-gallery", "code": code_version(), "checkpoint": file_fingerprint(checkpoint),
           "image_size": cfg.data.image_size, "precision": cfg.runtime.precision, "device": device.type,
           "files": [file_fingerprint(p) for p in paths]}
    return default_cache().get_or_compute("sbir-gallery", key, compute)


def evaluate_split(model: nn.Module, cfg: Config, split: DomainSplit, device: torch.device, *,
                   cache: bool = False, checkpoint: Path | None = None) -> dict[str, Any]:
    """Retrieval metrics of the split's sketches against its photos, their mean ``precise`` (ACNet's
    checkpoint-selection value) and the same four metrics per class (``per_class``: the unseen classes)."""
    net: ACNet = model  # type: ignore[assignment]
    was_training = net.training
    net.eval()
    sketches = split.sketches[: cfg.eval.max_queries] if cfg.eval.max_queries else split.sketches
    gallery = gallery_embeddings(net, cfg, [p for p, _ in split.photos], device, checkpoint if cache else None)
    queries = embed_images(net.embed_sketches, [p for p, _ in sketches], cfg, device, "embedding sketches")
    net.train(was_training)
    q_labels = torch.tensor([c for _, c in sketches])
    g_labels = torch.tensor([c for _, c in split.photos])
    on = device if device.type == "cuda" else torch.device("cpu")  # float64 ranking: CUDA or CPU (MPS has no fp64)
    per = {k: v.cpu() for k, v in per_query_metrics(queries.to(on), q_labels.to(on), gallery.to(on), g_labels.to(on),
                                                     map_k=(200,), precision_k=(100, 200)).items()}
    res: dict[str, Any] = {k: float(per[k].mean()) for k in METRICS}
    res["precise"] = sum(res[k] for k in METRICS) / len(METRICS)
    res.update(queries=len(sketches), gallery=len(split.photos), classes=len(split.classes), protocol=PROTOCOL)
    res["per_class"] = {name: {k: float(per[k][q_labels == c].mean()) for k in METRICS} | {"queries": int((q_labels == c).sum())}
                        for c, name in enumerate(split.classes) if bool((q_labels == c).any())}
    return res


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """A trained ACNet in eval mode with the config it was trained with; every weight comes from the
    checkpoint (no pretrained weights are read)."""
    cfg, state = read_trained("sbir", checkpoint, Config, sets, recipe)
    extra = state.get("extra") or {}
    if "num_seen" not in extra:
        raise ZskError(f"{checkpoint} has no seen-class count (extra.num_seen); use a checkpoint written by zsk sbir train")
    model = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None)),
                        int(extra["num_seen"]))
    load_model_state(model, state["model"], source=str(checkpoint))
    return loaded_model(model, cfg, state, checkpoint, device)


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None) -> dict[str, Any]:
    """mAP@all, mAP@200, P@100, P@200 (fractions) of the unseen split (default ``eval.split``: val), SAKE's
    protocol; the gallery embeddings come from the cache when this checkpoint embedded them before.
    Writes nothing (``zsk sbir eval --out DIR`` saves the result)."""
    cfg: Config = loaded.cfg
    data = load_split(cfg.data, split or cfg.eval.split or "val")
    return evaluate_split(loaded.model, cfg, data, loaded.device, cache=True, checkpoint=loaded.checkpoint)
