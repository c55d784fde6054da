"""``zsk retrieve predict``, ``index`` and ``query``: caption queries -> images (t2i) and image queries
(``.npy`` features, or image files for raw-image models) -> captions (i2t) by the dot product of the
L2-normalised VSE embeddings; an encoded gallery kept on disk, searched exactly or through a FAISS IVF
index (inner product) when it is large."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, atomic_open, atomic_path, expand_inputs, output_folder, read_json
from zsk.core.progress import to_json
from zsk.core.task import Loaded
from zsk.data.captions import PrecompSplit, check_finite, read_caption_lines, read_features
from zsk.tasks.retrieve.config import Config
from zsk.tasks.retrieve.data import check_finite_features, load_split
from zsk.tasks.retrieve.evaluate import (
    encode_captions,
    encode_images,
    is_pairwise,
    load,
    similarity_matrix,
    split_image_names,
    split_images,
)
from zsk.tasks.retrieve.train import check_split_features

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
QUERY_SUFFIXES = (".npy", *IMAGE_SUFFIXES)
# a one-word argument ending so names a file the user meant, not a caption (missing, or of a kind not searched)
FILE_LIKE_SUFFIXES = (*QUERY_SUFFIXES, ".txt", ".json", ".jsonl", ".csv", ".tsv", ".npz", ".h5", ".pt")
INDEX_META = "index.json"
INDEX_KEYS = ("kind", "count", "dim", "checkpoint", "names")

Query = str | Path | StdinInput


@dataclass(frozen=True)
class QueryName:
    """Where a query came from: its ``input`` (the file, or the caption text) and, for a ``.npy`` file of
    several images, the image's ``row`` in it; ``text`` is the query as printed (``file[row]`` or the caption)."""

    input: str
    row: int | None
    text: str

    def fields(self) -> dict[str, Any]:
        """The ``input`` / ``row`` / ``query`` keys of a result row."""
        out: dict[str, Any] = {"input": self.input}
        if self.row is not None:
            out["row"] = self.row
        out["query"] = self.text
        return out


def check_positive(option: str, value: int) -> None:
    """``ZskError`` naming the command-line option when ``value < 1``."""
    if value < 1:
        raise ZskError(f"{option} must be >= 1, got {value}")


def _is_query_file(p: Path) -> bool:
    return p.name.lower().endswith(QUERY_SUFFIXES)


def _looks_like_file(text: str) -> bool:
    return not any(c.isspace() for c in text.strip()) and text.strip().lower().endswith(FILE_LIKE_SUFFIXES)


def is_image_query(inputs: Sequence[Query]) -> bool:
    """True when the inputs are image queries (``.npy`` / image files), False for caption queries (texts,
    stdin lines). Mixed inputs, other files and file names that do not exist are a ``ZskError`` naming them."""
    files: list[Path] = []
    texts: list[str] = []
    for q in inputs:
        if isinstance(q, StdinInput):
            texts.append("-")
            continue
        p = Path(q)
        if isinstance(q, Path) or p.is_file():
            if not p.is_file():
                raise ZskError(f"query file not found: {p}")
            if not _is_query_file(p):
                raise ZskError(f"{p}: not a query file; give .npy image features or image files "
                               f"({', '.join(IMAGE_SUFFIXES)}), caption texts, or caption lines on stdin ('- < {p}')")
            files.append(p)
        elif _looks_like_file(str(q)):
            raise ZskError(f"{q}: file not found (a caption query is a text such as 'a dog on the beach'; "
                           "to search with image features give an existing .npy file)")
        else:
            texts.append(str(q))
    if files and texts:
        raise ZskError(f"{files[0]} is an image query and {texts[0]!r} a caption query: give one kind per call "
                       "(images -> captions, or captions -> images)")
    return bool(files)


def read_text_queries(inputs: Sequence[Query]) -> tuple[list[str], list[QueryName]]:
    """Caption queries: texts as given, paths as their text, and the lines of stdin (``-``); with their names."""
    out: list[str] = []
    for q in inputs:
        if isinstance(q, StdinInput):
            out.extend(line.strip() for line in q.lines)
        else:
            out.append(str(q))
    if not out or any(not q.strip() for q in out):
        raise ZskError("empty query: give a caption text (or '-' to read lines from stdin)")
    return out, [QueryName(q, None, q) for q in out]


def load_image_queries(inputs: Sequence[str | Path], cfg: Config) -> tuple[np.ndarray | list[Path], list[QueryName]]:
    """Image queries: ``.npy`` feature files (one image ``(regions, dim)`` or many ``(N, regions, dim)``;
    ``(dim,)`` / ``(N, dim)`` for global-vector features) for precomputed models, image files for the
    raw-image model."""
    if cfg.model.image_encoder == "cnn":
        paths = [Path(p) for p in inputs]
        for p in paths:
            if not p.is_file():
                raise ZskError(f"image not found: {p}")
            if p.suffix.lower() == ".npy":
                raise ZskError(f"{p}: this checkpoint encodes raw images; give image files ({', '.join(IMAGE_SUFFIXES)})")
        return paths, [QueryName(str(p), None, str(p)) for p in paths]
    feats, names = [], []
    for q in inputs:
        p = Path(q)
        if p.suffix.lower() != ".npy":
            raise ZskError(f"{q}: this checkpoint encodes precomputed features; give a .npy file of image features")
        if not p.is_file():
            raise ZskError(f"feature file not found: {p}")
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            raise ZskError(f"{p}: not a readable .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if arr.ndim not in (1, 2, 3) or not np.issubdtype(arr.dtype, np.floating):
            raise ZskError(f"{p}: expected float features (dim,), (regions, dim) or (N, regions, dim), "
                           f"got {arr.dtype} {tuple(arr.shape)}")
        # (N, regions, dim) is a batch; (regions, dim) one image, unless the model reads one global
        # vector per image (num_regions 1), where (N, dim) is a batch; (dim,) is one global vector
        if arr.ndim == 1 or (arr.ndim == 2 and cfg.model.num_regions > 1):
            arr = arr[None]
        if arr.shape[0] == 0 or arr.size == 0:
            raise ZskError(f"{p}: no image features (shape {tuple(arr.shape)})")
        m = cfg.model
        flat = m.resolved()[0] == "flatten" or m.pairwise  # SGR/SAF read exactly (num_regions, img_dim)
        ok = arr.shape[-1] == m.img_dim and (
            not flat or tuple(arr.shape[1:]) == (m.num_regions, m.img_dim) or (m.num_regions == 1 and arr.ndim == 2))
        if not ok:
            raise ZskError(f"{p}: per-image features {tuple(arr.shape[1:])} do not match the model "
                           f"(model.num_regions={m.num_regions}, model.img_dim={m.img_dim})")
        if feats and arr.shape[1:] != feats[0].shape[1:]:
            raise ZskError(f"{p}: per-image features {tuple(arr.shape[1:])} differ from {names[0].input}'s "
                           f"{tuple(feats[0].shape[1:])}; query files of one shape per call")
        check_finite(arr, p)
        feats.append(np.asarray(arr, dtype=np.float32))
        if arr.shape[0] > 1:
            names.extend(QueryName(str(p), i, f"{p}[{i}]") for i in range(arr.shape[0]))
        else:
            names.append(QueryName(str(p), None, str(p)))
    return np.concatenate(feats), names


def encode_queries(loaded: Loaded, inputs: Sequence[Query], image_queries: bool) -> tuple[Tensor, list[QueryName]]:
    """(query embeddings, query names): images (``.npy`` features or files) or caption texts."""
    cfg, dev = loaded.cfg, loaded.device
    if image_queries:
        imgs, names = load_image_queries([q for q in inputs if not isinstance(q, StdinInput)], cfg)
        return encode_images(loaded.model, imgs, cfg, dev, desc="queries"), names
    queries, names = read_text_queries(inputs)
    return encode_captions(loaded.model, queries, loaded.parts["tokenizer"], cfg, dev), names


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
    (texts, stdin lines) -> images (t2i); when the inputs are ``.npy``/image files, image queries ->
    captions (i2t). One row ``{"input", ["row"], "query", "direction", "split", "matches"}`` per query with
    its ``k`` best matches, also written to ``out/predictions.jsonl``."""
    check_positive("--top-k", k)
    out = output_folder(out)
    cfg: Config = loaded.cfg
    i2t = is_image_query(inputs)
    name = split or cfg.eval.split or cfg.data.test_split
    data = load_split(cfg.data, name)
    check_split_features(cfg, data)
    q, queries = encode_queries(loaded, inputs, image_queries=i2t)
    if i2t:
        gallery = encode_captions(loaded.model, data.captions, loaded.parts["tokenizer"], cfg, loaded.device)
        names = [split_image_names(data)[j // data.captions_per_image] for j in range(data.num_captions)]
        texts = data.captions
    else:
        gallery = encode_images(loaded.model, split_images(data), cfg, loaded.device)
        names, texts = split_image_names(data), None
    if is_pairwise(loaded.model):  # SGR/SAF: every (query, gallery item) pair through the similarity network
        sims = (similarity_matrix(loaded.model, q, gallery, cfg, loaded.device) if i2t
                else similarity_matrix(loaded.model, gallery, q, cfg, loaded.device).T)
        scores, idx = sims.topk(min(k, sims.shape[1]), dim=1)
    else:
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
        rows.append({**query.fields(), "direction": "i2t" if i2t else "t2i", "split": name, "matches": matches})
    with atomic_open(out / "predictions.jsonl", "w") as f:
        f.write("".join(to_json(r) + "\n" for r in rows))
    yield from rows


def build_index(checkpoint: Path, out: Path, images: Path | None = None, captions: Path | None = None,
                faiss_threshold: int = 100_000, nlist: int = 0, device: str | None = None) -> dict:
    """Encode a gallery once into ``out/``: image features (``.npy``) / an image folder, or a caption file.
    Galleries larger than ``faiss_threshold`` also get a FAISS IVF index (inner product)."""
    if (images is None) == (captions is None):
        raise ZskError("give exactly one of --images DIR_OR_NPY and --captions FILE")
    if nlist < 0:
        raise ZskError(f"--nlist must be >= 0 (0: 4 sqrt(N) lists), got {nlist}")
    if faiss_threshold < 0:
        raise ZskError(f"--faiss-threshold must be >= 0, got {faiss_threshold}")
    loaded = load(checkpoint, device=device)
    cfg, model, dev = loaded.cfg, loaded.model, loaded.device
    if is_pairwise(model):
        raise ZskError(f"{checkpoint}: model.base={cfg.model.base} scores each (image, caption) pair with its "
                       "similarity network, so there is no embedding index; search a split with "
                       "`zsk retrieve predict --checkpoint ... QUERY`")
    out = output_folder(out)
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
            check_finite_features(feats, images)
            emb = encode_images(model, feats, cfg, dev)
            ids_file = images.with_name(images.name.replace("_ims.npy", "_ids.txt"))
            names = [str(i) for i in range(len(feats))]
            if ids_file != images and ids_file.is_file():
                ids = [x.strip() for x in ids_file.read_text(encoding="utf-8", errors="replace").splitlines()
                       if x.strip()]
                if len(ids) == len(feats):
                    names = ids
        texts = None
    else:
        kind = "captions"
        texts = read_caption_lines(captions)
        emb = encode_captions(model, texts, loaded.parts["tokenizer"], cfg, dev)
        names = [str(i) for i in range(len(texts))]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZskError(f"cannot create the index folder {out}: {e}") from None
    emb_np = emb.cpu().numpy().astype(np.float32)
    with atomic_path(out / "embeddings.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, emb_np)
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
        with atomic_path(out / "faiss.index") as tmp:
            faiss.write_index(index, str(tmp))
        meta.update({"faiss": True, "nlist": n_lists})
    with atomic_open(out / INDEX_META, "w") as f:
        f.write(json.dumps(meta))
    return {"index": str(out), "kind": kind, "count": len(names), "dim": meta["dim"], "faiss": meta["faiss"]}


def _check_gallery(cfg: Config, probe: PrecompSplit, path: Path) -> None:
    try:
        check_split_features(cfg, probe)
    except ZskError as e:
        raise ZskError(str(e).replace(str(probe.ims_path), str(path))) from None


def read_index(index_dir: Path) -> tuple[dict, Path]:
    """The metadata of an index folder from ``build_index``, checked; ``(meta, embeddings or faiss file)``."""
    index_dir = Path(index_dir)
    meta_path = index_dir / INDEX_META
    if not meta_path.is_file():
        raise ZskError(f"{index_dir} is not a retrieve index (no {INDEX_META}); build one with `zsk retrieve index`")
    meta = read_json(meta_path, "retrieve index metadata")
    missing = [k for k in INDEX_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ZskError(f"{meta_path}: not an index written by `zsk retrieve index` (missing {', '.join(missing)}); "
                       "rebuild the index")
    if meta["kind"] not in ("images", "captions") or not isinstance(meta["names"], list) \
            or len(meta["names"]) != meta["count"] or (meta.get("texts") and len(meta["texts"]) != meta["count"]):
        raise ZskError(f"{meta_path}: inconsistent index metadata (kind, count, names, texts); rebuild the index")
    if meta.get("faiss"):
        store = index_dir / "faiss.index"
        if not store.is_file() or "nlist" not in meta:
            raise ZskError(f"{store}: the FAISS index of {meta_path} is missing; rebuild the index")
        return meta, store
    store = index_dir / "embeddings.npy"
    if not store.is_file():
        raise ZskError(f"{store}: the embeddings of {meta_path} are missing; rebuild the index")
    return meta, store


def _load_embeddings(store: Path, meta: dict) -> np.ndarray:
    try:
        emb = np.load(store, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise ZskError(f"{store}: not a readable .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                       "rebuild the index") from None
    if emb.shape != (meta["count"], meta["dim"]) or not np.issubdtype(emb.dtype, np.floating):
        raise ZskError(f"{store}: {emb.dtype} {tuple(emb.shape)} where {INDEX_META} says {meta['count']} x "
                       f"{meta['dim']} floats; rebuild the index")
    return emb.astype(np.float32, copy=False)


def query_index(index_dir: Path, inputs: Sequence[str], k: int = 10, nprobe: int = 16,
                device: str | None = None) -> list[dict]:
    """Search an index from ``build_index``: text queries against an image index, image queries
    (``.npy`` features or image files) against a caption index. FAISS when the index has one.
    One row ``{"input", ["row"], "query", "matches"}`` per query."""
    check_positive("--top-k", k)
    check_positive("--nprobe", nprobe)
    meta, store = read_index(index_dir)
    # '-' reads stdin through the shared reader: caption lines for an image index
    items: list[Query] = [expand_inputs([q], stdin="texts")[0] if q == "-" and meta["kind"] == "images" else q
                          for q in inputs]
    image_queries = is_image_query(items)
    if image_queries != (meta["kind"] == "captions"):
        wanted = "caption texts" if meta["kind"] == "images" else ".npy image features or image files"
        raise ZskError(f"{index_dir} is an index of {meta['kind']}: its queries are {wanted}")
    loaded = load(Path(meta["checkpoint"]), device=device)
    q, queries = encode_queries(loaded, items, image_queries=image_queries)
    q_np = q.cpu().numpy().astype(np.float32)
    if q_np.shape[1] != meta["dim"]:
        raise ZskError(f"{index_dir / INDEX_META}: {meta['dim']}-d index, but {meta['checkpoint']} embeds "
                       f"{q_np.shape[1]}-d queries; rebuild the index with that checkpoint")
    k = min(k, meta["count"])
    if meta.get("faiss"):
        import faiss

        try:
            index = faiss.read_index(str(store))
        except RuntimeError as e:
            raise ZskError(f"{store}: not a readable FAISS index ({str(e).splitlines()[0]}); rebuild the index") from None
        index.nprobe = min(nprobe, meta["nlist"])
        scores, idx = index.search(q_np, k)
    else:
        emb = torch.from_numpy(_load_embeddings(store, meta))
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
        out.append({**query.fields(), "matches": matches})
    return out
