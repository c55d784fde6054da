"""``zsk retrieve predict``, ``index`` and ``query``: caption queries -> images (t2i) and image queries
(``.npy`` features, or image files for raw-image models) -> captions (i2t) by the dot product of the
L2-normalised VSE embeddings; an encoded gallery kept on disk, searched exactly or through a FAISS IVF
index (inner product) when it is large."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, atomic_open, expand_inputs
from zsk.core.progress import to_json
from zsk.core.task import Loaded
from zsk.data.captions import PrecompSplit, read_caption_lines, read_features
from zsk.tasks.retrieve.config import Config
from zsk.tasks.retrieve.data import load_split
from zsk.tasks.retrieve.evaluate import encode_captions, encode_images, load, split_image_names, split_images
from zsk.tasks.retrieve.train import check_split_features

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
QUERY_SUFFIXES = (".npy", *IMAGE_SUFFIXES)
INDEX_META = "index.json"

Query = str | Path | StdinInput


def read_text_queries(inputs: Sequence[Query]) -> list[str]:
    """Caption queries: texts as given, paths as their text, and the lines of stdin (``-``)."""
    out: list[str] = []
    for q in inputs:
        if isinstance(q, StdinInput):
            out.extend(line.strip() for line in q.lines)
        else:
            out.append(str(q))
    if not out or any(not q.strip() for q in out):
        raise ZskError("empty query: give a caption text (or '-' to read lines from stdin)")
    return out


def load_image_queries(inputs: Sequence[str | Path], cfg: Config) -> tuple[np.ndarray | list[Path], list[str]]:
    """Image queries: ``.npy`` feature files (one image ``(regions, dim)`` or many ``(N, regions, dim)``;
    ``(dim,)`` / ``(N, dim)`` for global-vector features) for precomputed models, image files for the
    raw-image model."""
    if cfg.model.image_encoder == "cnn":
        paths = [Path(p) for p in inputs]
        for p in paths:
            if not p.is_file():
                raise ZskError(f"image not found: {p}")
        return paths, [str(p) for p in paths]
    feats, names = [], []
    for q in inputs:
        p = Path(q)
        if p.suffix != ".npy":
            raise ZskError(f"{q}: this checkpoint encodes precomputed features; give a .npy file of image features")
        if not p.is_file():
            raise ZskError(f"feature file not found: {p}")
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            raise ZskError(f"{p}: not a readable .npy array ({e})") from None
        if arr.ndim not in (1, 2, 3) or not np.issubdtype(arr.dtype, np.floating):
            raise ZskError(f"{p}: expected float features (dim,), (regions, dim) or (N, regions, dim), "
                           f"got {arr.dtype} {tuple(arr.shape)}")
        # (N, regions, dim) is a batch; (regions, dim) one image, unless the model reads one global
        # vector per image (num_regions 1), where (N, dim) is a batch; (dim,) is one global vector
        if arr.ndim == 1 or (arr.ndim == 2 and cfg.model.num_regions > 1):
            arr = arr[None]
        m = cfg.model
        flat = m.resolved()[0] == "flatten"
        ok = arr.shape[-1] == m.img_dim and (
            not flat or tuple(arr.shape[1:]) == (m.num_regions, m.img_dim) or (m.num_regions == 1 and arr.ndim == 2))
        if not ok:
            raise ZskError(f"{p}: per-image features {tuple(arr.shape[1:])} do not match the model "
                           f"(model.num_regions={m.num_regions}, model.img_dim={m.img_dim})")
        feats.append(np.asarray(arr, dtype=np.float32))
        names.extend([f"{p}[{i}]" for i in range(arr.shape[0])] if arr.shape[0] > 1 else [str(p)])
    return np.concatenate(feats), names


def encode_queries(loaded: Loaded, inputs: Sequence[Query], image_queries: bool) -> tuple[Tensor, list[str]]:
    """(query embeddings, query names): images (``.npy`` features or files) or caption texts."""
    cfg, dev = loaded.cfg, loaded.device
    if image_queries:
        imgs, queries = load_image_queries([q for q in inputs if not isinstance(q, StdinInput)], cfg)
        return encode_images(loaded.model, imgs, cfg, dev, desc="queries"), queries
    queries = read_text_queries(inputs)
    return encode_captions(loaded.model, queries, loaded.parts["tokenizer"], cfg, dev), queries


def top_k(queries: Tensor, gallery: Tensor, k: int, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Exact (scores, indices) of the ``k`` highest dot products per query, chunked over queries."""
    k = min(k, gallery.shape[0])
    scores, idx = [], []
    for s in range(0, queries.shape[0], chunk):
        v, i = (queries[s : s + chunk] @ gallery.T).topk(k, dim=1)
        scores.append(v)
        idx.append(i)
    return torch.cat(scores), torch.cat(idx)


def predict(loaded: Loaded, inputs: Sequence[Query], out: Path, *, split: str | None = None,
            k: int = 5) -> Iterator[dict[str, Any]]:
    """Retrieve from a dataset split (default ``eval.split`` or ``data.test_split``): caption queries
    (texts, stdin lines) -> images (t2i); when every input is a ``.npy``/image file, image queries ->
    captions (i2t). One row per query with its ``k`` best matches, also written to ``out/predictions.jsonl``."""
    cfg: Config = loaded.cfg
    name = split or cfg.eval.split or cfg.data.test_split
    data = load_split(cfg.data, name)
    check_split_features(cfg, data)
    i2t = all(isinstance(q, (str, Path)) and Path(q).suffix in QUERY_SUFFIXES and Path(q).is_file() for q in inputs)
    q, queries = encode_queries(loaded, inputs, image_queries=i2t)
    if i2t:
        gallery = encode_captions(loaded.model, data.captions, loaded.parts["tokenizer"], cfg, loaded.device)
        names = [split_image_names(data)[j // data.captions_per_image] for j in range(data.num_captions)]
        texts = data.captions
    else:
        gallery = encode_images(loaded.model, split_images(data), cfg, loaded.device)
        names, texts = split_image_names(data), None
    scores, idx = top_k(q, gallery, k)
    rows = []
    for qi, query in enumerate(queries):
        matches = []
        for r, (s, j) in enumerate(zip(scores[qi].tolist(), idx[qi].tolist(), strict=True)):
            m = {"rank": r + 1, "index": j, "score": round(s, 6)}
            if texts is None:
                m["image"] = names[j]
            else:
                m["caption"], m["image"] = texts[j], names[j]
            matches.append(m)
        rows.append({"query": query, "direction": "i2t" if i2t else "t2i", "split": name, "matches": matches})
    out = Path(out)
    with atomic_open(out / "predictions.jsonl", "w") as f:
        f.write("".join(to_json(r) + "\n" for r in rows))
    yield from rows


def build_index(checkpoint: Path, out: Path, images: Path | None = None, captions: Path | None = None,
                faiss_threshold: int = 100_000, nlist: int = 0, device: str | None = None) -> dict:
    """Encode a gallery once into ``out/``: image features (``.npy``) / an image folder, or a caption file.
    Galleries larger than ``faiss_threshold`` also get a FAISS IVF index (inner product)."""
    if (images is None) == (captions is None):
        raise ZskError("give exactly one of --images DIR_OR_NPY and --captions FILE")
    loaded = load(checkpoint, device=device)
    cfg, model, dev = loaded.cfg, loaded.model, loaded.device
    if images is not None:
        kind = "images"
        if images.is_dir():
            if cfg.model.image_encoder != "cnn":
                raise ZskError(f"{images} is a folder of images, but this checkpoint encodes precomputed features; "
                               "pass a .npy file of features (or train with model.image_encoder=cnn)")
            paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise ZskError(f"{images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            emb = encode_images(model, paths, cfg, dev)
            names = [str(p) for p in paths]
        else:
            if cfg.model.image_encoder == "cnn":
                raise ZskError(f"{images}: this checkpoint encodes raw images; pass a folder of image files")
            feats = read_features(images)
            probe = PrecompSplit(images.parent, images.stem, feats, [], 1)
            _check_gallery(cfg, probe, images)
            emb = encode_images(model, feats, cfg, dev)
            ids_file = images.with_name(images.name.replace("_ims.npy", "_ids.txt"))
            names = [str(i) for i in range(len(feats))]
            if ids_file != images and ids_file.is_file():
                ids = [x.strip() for x in ids_file.read_text().splitlines() if x.strip()]
                if len(ids) == len(feats):
                    names = ids
        texts = None
    else:
        kind = "captions"
        texts = read_caption_lines(captions)
        emb = encode_captions(model, texts, loaded.parts["tokenizer"], cfg, dev)
        names = [str(i) for i in range(len(texts))]
    out.mkdir(parents=True, exist_ok=True)
    emb_np = emb.cpu().numpy().astype(np.float32)
    np.save(out / "embeddings.npy", emb_np)
    meta = {"format": 1, "kind": kind, "count": len(names), "dim": int(emb_np.shape[1]),
            "checkpoint": str(Path(checkpoint).resolve()), "names": names, "texts": texts, "faiss": False}
    if len(names) > faiss_threshold:
        import faiss

        n_lists = nlist or max(1, int(4 * math.sqrt(len(names))))
        n_lists = min(n_lists, len(names))
        quantizer = faiss.IndexFlatIP(emb_np.shape[1])
        index = faiss.IndexIVFFlat(quantizer, emb_np.shape[1], n_lists, faiss.METRIC_INNER_PRODUCT)
        index.train(emb_np)
        index.add(emb_np)
        faiss.write_index(index, str(out / "faiss.index"))
        meta.update({"faiss": True, "nlist": n_lists})
    (out / INDEX_META).write_text(json.dumps(meta))
    return {"index": str(out), "kind": kind, "count": len(names), "dim": meta["dim"], "faiss": meta["faiss"]}


def _check_gallery(cfg: Config, probe: PrecompSplit, path: Path) -> None:
    try:
        check_split_features(cfg, probe)
    except ZskError as e:
        raise ZskError(str(e).replace(str(probe.ims_path), str(path))) from None


def query_index(index_dir: Path, inputs: Sequence[str], k: int = 10, nprobe: int = 16,
                device: str | None = None) -> list[dict]:
    """Search an index from ``build_index``: text queries against an image index, image queries
    (``.npy`` features or image files) against a caption index. FAISS when the index has one."""
    meta_path = index_dir / INDEX_META
    if not meta_path.is_file():
        raise ZskError(f"{index_dir} is not a retrieve index (no {INDEX_META}); build one with `zsk retrieve index`")
    meta = json.loads(meta_path.read_text())
    loaded = load(Path(meta["checkpoint"]), device=device)
    # '-' reads stdin through the shared reader: caption lines for an image index
    items = [expand_inputs([q], stdin="texts")[0] if q == "-" and meta["kind"] == "images" else q for q in inputs]
    q, queries = encode_queries(loaded, items, image_queries=meta["kind"] != "images")
    q_np = q.cpu().numpy().astype(np.float32)
    k = min(k, meta["count"])
    if meta.get("faiss"):
        import faiss

        index = faiss.read_index(str(index_dir / "faiss.index"))
        index.nprobe = min(nprobe, meta["nlist"])
        scores, idx = index.search(q_np, k)
    else:
        emb = torch.from_numpy(np.load(index_dir / "embeddings.npy"))
        s, i = top_k(torch.from_numpy(q_np), emb, k)
        scores, idx = s.numpy(), i.numpy()
    out = []
    for qi, query in enumerate(queries):
        matches = []
        for r, (s, j) in enumerate(zip(scores[qi].tolist(), idx[qi].tolist(), strict=True)):
            if j < 0:
                continue
            m = {"rank": r + 1, "index": int(j), "name": meta["names"][j], "score": round(float(s), 6)}
            if meta.get("texts"):
                m["caption"] = meta["texts"][j]
            matches.append(m)
        out.append({"query": query, "matches": matches})
    return out
