"""Retrieval evaluation (VSE++ protocol, Faghri et al. 2018; LSEH, Gong & Cosma 2023): galleries encoded in
batches, the similarity matrix in chunks, R@1/5/10, medr and meanr in both directions and their rsum; COCO 1K
(five folds averaged) or 5K. SGR/SAF score every (image, caption) pair with their similarity network in
bounded blocks (``model_sgraf.score_blocks``); an ensemble (SGRAF: SGR + SAF) averages its members' scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zsk.core.checkpoint import load_model_state
from zsk.core.device import autocast, autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.progress import progress
from zsk.core.task import Loaded, loaded_model, read_trained
from zsk.core.trainer import make_eval_loader
from zsk.data.captions import PrecompSplit
from zsk.metrics.retrieval import (
    FaissSearch,
    average_metrics,
    coco_1k,
    evaluate_embeddings,
    retrieval_metrics,
)
from zsk.tasks.retrieve.config import Config
from zsk.tasks.retrieve.data import ImageFeatures, ImageFiles, load_split
from zsk.tasks.retrieve.model import VSEModel
from zsk.tasks.retrieve.model_sgraf import LocalCaptions, score_blocks
from zsk.tasks.retrieve.train import build_model, build_tokenizer, check_split_features, frozen_prefixes

TASK = "retrieve"
PROTOCOLS = ("standard", "coco1k", "coco5k")


def _batched(seq: list, size: int):
    for s in range(0, len(seq), size):
        yield seq[s : s + size]


@torch.no_grad()
def encode_images(model: VSEModel, images, cfg: Config, device: torch.device, desc: str = "images") -> Tensor:
    """Embeddings of a gallery: ``images`` is a feature array ``(N, ...)`` or a list of image paths."""
    model.eval()
    ds = ImageFeatures(images) if isinstance(images, np.ndarray) else ImageFiles(list(images), cfg.model.image_size)
    # every rank encodes the whole gallery; the loader leaves the global RNG alone (exact resume)
    loader = make_eval_loader(ds, cfg.eval.batch_size, sharded=False)
    dtype = autocast_dtype(device, cfg.runtime.precision)
    out = []
    for x in progress(loader, desc=f"encode {desc}"):
        with autocast(device, dtype):
            out.append(model.encode_images(x.to(device), None).float())
    return torch.cat(out)


def is_pairwise(model: torch.nn.Module) -> bool:
    """True for networks that score pairs (SGR, SAF) instead of comparing two embeddings."""
    return bool(getattr(model, "pairwise", False))


@torch.no_grad()
def encode_captions(model: VSEModel, captions: list[str], tokenizer, cfg: Config,
                    device: torch.device) -> Tensor | LocalCaptions:
    """Embeddings of captions (padded batches of the tokenizer's ids); for SGR/SAF the per-word embeddings of
    each caption (:class:`LocalCaptions`)."""
    model.eval()
    if any(not c.strip() for c in captions):
        raise ZskError("empty caption given; every caption must hold text")
    ids = [tokenizer.encode(c) for c in captions]
    if cfg.data.max_words > 0:
        ids = [t[: cfg.data.max_words - 1] + [t[-1]] if len(t) > cfg.data.max_words else t for t in ids]
    dtype = autocast_dtype(device, cfg.runtime.precision)
    out: list[Tensor] = []
    for chunk in progress(list(_batched(ids, cfg.eval.batch_size)), desc="encode captions"):
        lens = torch.tensor([len(t) for t in chunk])
        toks = torch.full((len(chunk), int(lens.max())), tokenizer.pad_id, dtype=torch.long)
        for j, t in enumerate(chunk):
            toks[j, : len(t)] = torch.tensor(t)
        with autocast(device, dtype):
            emb = model.encode_captions(toks.to(device), lens.to(device)).float()
        if is_pairwise(model):
            out.extend(emb[j, : int(n)].clone() for j, n in enumerate(lens))  # no padded batch kept alive
        else:
            out.append(emb)
    return LocalCaptions(out) if is_pairwise(model) else torch.cat(out)


def similarity_matrix(model: torch.nn.Module, img: Tensor, cap: Tensor | LocalCaptions, cfg: Config,
                      device: torch.device) -> Tensor:
    """``(n_img, n_cap)`` scores on the CPU: cosine of the embeddings, or the pair network in blocks."""
    if isinstance(cap, LocalCaptions):
        return score_blocks(model, img, cap, cfg.eval.shard, device)
    return (img @ cap.T).float().cpu()


def split_images(split) -> np.ndarray | list[Path]:
    """A split's gallery: its feature array (precomputed) or its image paths (raw images)."""
    return split.features if isinstance(split, PrecompSplit) else [it.path for it in split.images]


def split_image_names(split) -> list[str]:
    """Names of a split's images: the ids file's entries, their positions, or the image paths."""
    if isinstance(split, PrecompSplit):
        return split.image_ids or [str(i) for i in range(split.num_images)]
    return [str(it.path) for it in split.images]


def encode_split(model: VSEModel, split, tokenizer, cfg: Config, device: torch.device) -> tuple[Tensor, Tensor]:
    """(image embeddings, caption embeddings) of a whole split."""
    return (encode_images(model, split_images(split), cfg, device),
            encode_captions(model, split.captions, tokenizer, cfg, device))


def flat_metrics(m: dict) -> dict[str, float]:
    """``{"i2t": {"r1": ..}, ...}`` -> ``{"i2t_r1": .., ..., "rsum": .., "r1r5_sum": ..}`` for the trainer's log."""
    out = {"rsum": float(m["rsum"])}
    for d in ("i2t", "t2i"):  # None: a metric faiss search cannot give (meanr)
        out.update({f"{d}_{k}": float(v) for k, v in m[d].items() if v is not None})
    # VSRN's model selection (train.py validate: r1 + r5 + r1i + r5i), train.best_metric: r1r5_sum
    out["r1r5_sum"] = out["i2t_r1"] + out["i2t_r5"] + out["t2i_r1"] + out["t2i_r5"]
    return out


def faiss_search(cfg: Config) -> FaissSearch | None:
    """The faiss search of ``eval.search=faiss`` (``eval.faiss_depth``, ``faiss_nlist``, ``faiss_nprobe``), or
    None for the exact scan."""
    if cfg.eval.search != "faiss":
        return None
    return FaissSearch(cfg.eval.faiss_depth, cfg.eval.faiss_nlist, cfg.eval.faiss_nprobe)


def score_split(model: VSEModel, split, tokenizer, cfg: Config, device: torch.device,
                protocol: str = "standard", ensemble: tuple = ()) -> dict:
    """Retrieval metrics of a split under a protocol: ``standard`` (all of the split, e.g. F30K 1K test or
    COCO 5K), ``coco1k`` (five folds of 1,000 images averaged) or ``coco5k`` (the whole split).
    ``ensemble``: further ``(model, tokenizer, cfg)`` members whose scores are averaged with this model's
    (SGRAF = SGR + SAF); each encodes the split with its own tokenizer."""
    cpi = split.captions_per_image
    if protocol == "coco1k" and split.num_images % cfg.eval.folds:
        raise ZskError(f"--protocol coco1k: {split.num_images} images do not split into {cfg.eval.folds} folds; "
                       "use the 5K testall split")
    members = [(model, tokenizer, cfg), *ensemble]
    search = faiss_search(cfg)
    if search is not None and (len(members) > 1 or is_pairwise(model)):
        raise ZskError(f"eval.search=faiss searches embeddings, but model.base={cfg.model.base}"
                       f"{' with an ensemble' if len(members) > 1 else ''} scores each (image, caption) pair; "
                       "use eval.search=exact")
    if len(members) == 1 and not is_pairwise(model):
        img, cap = encode_split(model, split, tokenizer, cfg, device)
        if protocol == "coco1k":
            return coco_1k(img, cap, cpi, cfg.eval.folds, cfg.eval.chunk, search)
        return evaluate_embeddings(img, cap, cpi, cfg.eval.chunk, search)
    encoded = [encode_split(m, split, tok, c, device) for m, tok, c in members]

    def sims(i0: int, i1: int) -> Tensor:
        total = None
        for (m, _, c), (img, cap) in zip(members, encoded, strict=True):
            part = cap.subset(i0 * cpi, i1 * cpi) if isinstance(cap, LocalCaptions) else cap[i0 * cpi : i1 * cpi]
            s = similarity_matrix(m, img[i0:i1], part, c, device)
            total = s if total is None else total + s
        return total / len(members)

    if protocol == "coco1k":
        size = split.num_images // cfg.eval.folds
        per_fold = [retrieval_metrics(sims(f * size, (f + 1) * size), cpi) for f in range(cfg.eval.folds)]
        out = average_metrics(per_fold)
        out["folds"] = per_fold
        return out
    return retrieval_metrics(sims(0, split.num_images), cpi)


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """A trained VSE network in eval mode with its config and, in ``parts["tokenizer"]``, the caption
    tokenizer it was trained with (the word vocabulary stored in the checkpoint, or BERT's)."""
    cfg, state = read_trained(TASK, checkpoint, Config, sets, recipe)
    extra = state.get("extra") or {}
    words = extra.get("vocab") or None
    _, text = cfg.model.resolved()
    if text != "bert" and not words:
        raise ZskError(f"{checkpoint} holds no vocabulary; it was not written by `zsk retrieve train`")
    tokenizer = build_tokenizer(cfg, vocab_words=words)
    prefixes = frozen_prefixes(cfg)
    # weights not in the checkpoint (frozen pretrained backbone) come from their source; all others from it
    model = build_model(cfg, len(tokenizer), load_pretrained=bool(prefixes))
    load_model_state(model, state["model"], prefixes, source=str(checkpoint))
    return loaded_model(model, cfg, state, checkpoint, device, {"tokenizer": tokenizer})


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None, *,
             protocol: str | None = None, ensemble: list[Path] | None = None,
             search: str | None = None) -> dict[str, Any]:
    """Metrics on a split: ``{"i2t": {...}, "t2i": {...}, "rsum": ...}`` plus the split, protocol and
    gallery sizes; ``protocol`` (default ``eval.protocol``): standard, coco1k (five 1K folds averaged,
    with ``folds``) or coco5k. ``ensemble``: further checkpoints whose scores are averaged with this one's
    (the SGRAF paper's SGR + SAF ensemble). ``search`` (default ``eval.search``): exact, or faiss (R@K and medr
    from the top ``eval.faiss_depth`` of a faiss search, for galleries too large to scan). Writes nothing (``zsk retrieve eval --out DIR`` saves the result)."""
    cfg: Config = loaded.cfg
    if search is not None:
        if search not in ("exact", "faiss"):
            raise ZskError(f"--search {search!r}: choose exact or faiss")
        cfg.eval.search = search
    protocol = protocol or cfg.eval.protocol
    if protocol not in PROTOCOLS:
        raise ZskError(f"--protocol {protocol!r}: choose standard, coco1k or coco5k")
    name = split or cfg.eval.split or ("testall" if protocol in ("coco1k", "coco5k") else cfg.data.test_split)
    data = load_split(cfg.data, name)
    check_split_features(cfg, data)
    members = []
    for path in ensemble or []:
        if not Path(path).is_file():
            raise ZskError(f"--ensemble {path}: checkpoint not found")
        other = load(Path(path), device=str(loaded.device))
        check_split_features(other.cfg, data)
        members.append((other.model, other.parts["tokenizer"], other.cfg))
    result = score_split(loaded.model, data, loaded.parts["tokenizer"], cfg, loaded.device, protocol, tuple(members))
    extra = {"ensemble": [str(loaded.checkpoint), *map(str, ensemble)]} if ensemble else {}
    return {**result, "split": name, "protocol": protocol, "images": data.num_images, "captions": data.num_captions,
            "base": cfg.model.base, **extra}
