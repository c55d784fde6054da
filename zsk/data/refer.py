"""Reader of the referring-expression benchmarks in the ``refer`` layout (lichengunc/refer ``refer.py``, used
by LAVT, LGFormer and most RIS code): ``{root}/{dataset}/refs({split_by}).p`` (a pickled list of refs),
``{root}/{dataset}/instances.json`` (COCO format) and the images of ``image_dir``.

The refs pickle is read with an unpickler that admits only builtin containers, strings and numbers: a file
asking for any class or function (which is how pickles run code) is refused with a ``ZskError``, never
executed. Masks are decoded with pycocotools as ``refer.getMask`` does.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsk.core.errors import ZskError
from zsk.core.io import read_json

REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


class _BuiltinsOnlyUnpickler(pickle.Unpickler):
    """Refuses every global: lists, dicts, tuples, strings, bytes, numbers, bools and None need none."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, and refs files hold only lists, dicts, "
                                     "strings and numbers")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle builtin containers only (see the module docstring); Python 2 strings decode as latin-1."""
    return _BuiltinsOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def read_refs(path: str | Path) -> list[dict[str, Any]]:
    """The refs of a ``refs(<split_by>).p`` file, each checked for ``ref_id``, ``ann_id``, ``image_id``,
    ``split`` and a non-empty ``sentences`` list of dicts with ``raw`` or ``sent``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ZskError(f"refs file not found: {p} (set data.root / data.dataset / data.split_by to the refer "
                       "layout: <root>/<dataset>/refs(<split_by>).p)") from None
    except OSError as e:
        raise ZskError(f"cannot read refs file {p}: {e.strerror or e}") from None
    try:
        refs = safe_unpickle(data)
    except Exception as e:  # noqa: BLE001 - any failure of a malformed pickle is the file's fault
        raise ZskError(f"refs file {p} is not a plain refs pickle ({type(e).__name__}: {e}); use the refs(*).p "
                       "files of the refer API") from None
    if not isinstance(refs, list) or not refs:
        raise ZskError(f"refs file {p} must hold a non-empty list of refs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict) or any(k not in ref for k in REF_KEYS):
            raise ZskError(f"refs file {p}: ref #{i} lacks one of {list(REF_KEYS)}; not a refer refs file")
        sents = ref["sentences"]
        if not isinstance(sents, list) or not sents or not all(
                isinstance(s, dict) and isinstance(s.get("raw", s.get("sent")), str) for s in sents):
            raise ZskError(f"refs file {p}: ref {ref['ref_id']} has no sentences (a list of {{'raw': ...}}); "
                           "every ref needs at least one expression")
    return refs


def select_split(refs: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """Refs of a split as ``REFER.getRefIds``: testA/testB/testC match every split containing the
    letter, ``test`` every split containing "test", other names match exactly."""
    if split in ("testA", "testB", "testC"):
        return [r for r in refs if split[-1] in r["split"]]
    if split == "test":
        return [r for r in refs if "test" in r["split"]]
    return [r for r in refs if r["split"] == split]


@dataclass(frozen=True)
class RefItem:
    """One ref: its annotation's mask is the target of every one of its expressions."""

    ref_id: int
    image_id: int
    ann_id: int
    image: Path
    height: int
    width: int
    segmentation: Any
    sentences: tuple[str, ...]


def _check_segmentation(seg: Any, ann_id: Any, path: Path) -> None:
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise ZskError(f"{path}: annotation {ann_id} has an RLE without 'counts'/'size'")
        return
    if not isinstance(seg, list) or not seg:
        raise ZskError(f"{path}: annotation {ann_id} has no segmentation (polygons or RLE)")
    for poly in seg:
        if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                or not all(isinstance(v, (int, float)) for v in poly)):
            raise ZskError(f"{path}: annotation {ann_id} has a polygon that is not a flat list of >= 3 x, y pairs")


def load_refer(root: str | Path, dataset: str, split_by: str, split: str, image_dir: str | Path) -> list[RefItem]:
    """The refs of one split joined with their images and annotations (``instances.json``)."""
    base = Path(root) / dataset
    refs_path, inst_path = base / f"refs({split_by}).p", base / "instances.json"
    refs = read_refs(refs_path)
    chosen = select_split(refs, split)
    if not chosen:
        found = sorted({str(r["split"]) for r in refs})
        raise ZskError(f"split {split!r} has no refs in {refs_path} (it holds {found}); choose one of them")
    inst = read_json(inst_path, "instances file")
    if not isinstance(inst, dict) or not isinstance(inst.get("images"), list) or not isinstance(inst.get("annotations"), list):
        raise ZskError(f"{inst_path}: not a COCO instances file (needs 'images' and 'annotations' lists)")
    try:
        images = {im["id"]: im for im in inst["images"]}
        anns = {a["id"]: a for a in inst["annotations"]}
    except (KeyError, TypeError):
        raise ZskError(f"{inst_path}: every image and annotation needs an 'id'") from None
    out = []
    for r in chosen:
        ann, im = anns.get(r["ann_id"]), images.get(r["image_id"])
        if ann is None or im is None:
            what = f"annotation {r['ann_id']}" if ann is None else f"image {r['image_id']}"
            raise ZskError(f"{inst_path}: ref {r['ref_id']} of {refs_path.name} names {what}, which is not in the "
                           "file; use the instances.json shipped with these refs")
        try:
            file_name, h, w = str(im["file_name"]), int(im["height"]), int(im["width"])
        except (KeyError, TypeError, ValueError):
            raise ZskError(f"{inst_path}: image {r['image_id']} needs file_name, height and width") from None
        _check_segmentation(ann.get("segmentation"), r["ann_id"], inst_path)
        sents = tuple(str(s.get("raw", s.get("sent"))) for s in r["sentences"])
        out.append(RefItem(int(r["ref_id"]), int(r["image_id"]), int(r["ann_id"]), Path(image_dir) / file_name,
                           h, w, ann["segmentation"], sents))
    return out


def decode_mask(item: RefItem, parts: str = "union") -> np.ndarray:
    """(H, W) uint8 mask of a ref: pycocotools decodes each polygon (or the RLE) and the parts are summed as
    ``refer.getMask``; ``parts="union"`` keeps every covered pixel, ``"official"`` only sum == 1 (LAVT's and
    LGFormer's datasets set ``annot[mask == 1] = 1``, dropping pixels where parts overlap)."""
    from pycocotools import mask as mask_utils

    seg = item.segmentation
    if isinstance(seg, list):
        rle = mask_utils.frPyObjects(seg, item.height, item.width)
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, item.height, item.width)
    else:
        rle = seg
    m = mask_utils.decode(rle)
    if m.ndim == 3:
        m = m.astype(np.int64).sum(axis=2)
    m = m.astype(np.uint8)
    return (m == 1).astype(np.uint8) if parts == "official" else (m > 0).astype(np.uint8)
