"""Caption dataset readers by format: precomputed features + captions, Karpathy split JSON, IAPR TC-12.

Formats:

- **precomputed** (SCAN / BUTD layout, used by VSE++, VSRN, SGRAF, VSE infinity): a folder with
  ``{split}_caps.txt`` (one caption per line, ``captions_per_image`` consecutive lines per image),
  ``{split}_ims.npy`` (float features ``(N_img, regions, dim)`` or ``(N_img, dim)``), optional
  ``{split}_ids.txt``. Caption line ``k`` belongs to image ``k // captions_per_image``.
- **Karpathy JSON** (``dataset_{coco,flickr30k,flickr8k}.json``): ``{"images": [{"filename",
  "filepath"?, "split": train|val|test|restval, "sentences": [{"raw", "tokens"}]}]}`` next to an
  image folder.
- **IAPR TC-12**: ``annotations_complete_eng/NN/ID.eng`` SGML files with ``<DESCRIPTION>`` and
  ``<IMAGE>`` fields (one description per image), ``images/NN/ID.jpg``; splits are lists of image ids.

Every reader validates what it opens and raises :class:`ZskError` naming the file and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsk.core.errors import ZskError
from zsk.core.io import read_json

PRECOMP_SPLITS: tuple[str, ...] = ("train", "dev", "test", "testall")


@dataclass
class PrecompSplit:
    """One split of a precomputed-feature dataset."""

    folder: Path
    split: str
    features: np.ndarray  # (N_img, R, D) or (N_img, D); memory-mapped when read from disk
    captions: list[str]
    captions_per_image: int
    image_ids: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def caps_path(self) -> Path:
        return self.folder / f"{self.split}_caps.txt"

    @property
    def ims_path(self) -> Path:
        return self.folder / f"{self.split}_ims.npy"


def find_precomp_folder(root: str | Path, name: str = "") -> Path:
    """The folder holding ``*_caps.txt``: ``root`` itself, ``root/{name}_precomp`` or ``root/{name}/precomp``
    (the VSE infinity layout)."""
    root = Path(root)
    candidates = [root]
    if name:
        candidates += [root / f"{name}_precomp", root / name / "precomp"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*_caps.txt")):
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise ZskError(
        f"no precomputed caption dataset found (looked for *_caps.txt in {tried}); "
        "set data.root to the folder holding {split}_caps.txt and {split}_ims.npy "
        "(or write a sample with `zsk retrieve sample DIR`)"
    )


def read_caption_lines(path: str | Path) -> list[str]:
    """Captions from a text file, one per line; an empty line is an error naming its line number."""
    path = Path(path)
    if not path.is_file():
        raise ZskError(f"caption file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # a trailing newline or blank tail is harmless
        lines.pop()
    if not lines:
        raise ZskError(f"{path}: no captions (empty file)")
    for i, line in enumerate(lines):
        if not line.strip():
            raise ZskError(f"{path}: line {i + 1} is an empty caption; every line must hold one caption")
    return [line.strip() for line in lines]


def read_features(path: str | Path, mmap: bool = True) -> np.ndarray:
    """Image features ``(N, D)`` or ``(N, R, D)`` from ``.npy``, validated (float, finite shape)."""
    path = Path(path)
    if not path.is_file():
        raise ZskError(f"image feature file not found: {path}")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise ZskError(f"{path}: not a readable .npy array ({e}); write features with numpy.save") from None
    if arr.ndim not in (2, 3):
        raise ZskError(
            f"{path}: features have shape {tuple(arr.shape)}; expected (images, dim) or (images, regions, dim)"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ZskError(f"{path}: features have dtype {arr.dtype}; expected float32/float16")
    if arr.shape[0] == 0 or arr.shape[-1] == 0:
        raise ZskError(f"{path}: empty feature array {tuple(arr.shape)}")
    return arr


def nonfinite_rows(features: np.ndarray, chunk_bytes: int = 64 << 20) -> tuple[int, int]:
    """(number of images with a NaN/inf value, index of the first one or -1) of a feature array
    ``(N, ...)``, read in chunks of about ``chunk_bytes`` (a memory-mapped file is read once, never whole)."""
    n = int(features.shape[0])
    per_row = max(1, int(np.prod(features.shape[1:])) * features.dtype.itemsize)
    step = max(1, chunk_bytes // per_row)
    count, first = 0, -1
    for s in range(0, n, step):
        block = np.asarray(features[s : s + step])
        bad = ~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        if bad.any():
            count += int(bad.sum())
            if first < 0:
                first = s + int(np.argmax(bad))
    return count, first


def check_finite(features: np.ndarray, path: str | Path, counts: tuple[int, int] | None = None) -> None:
    """``ZskError`` naming ``path`` when some image's features hold NaN or inf (``counts``: a precomputed
    :func:`nonfinite_rows` result)."""
    count, first = counts if counts is not None else nonfinite_rows(features)
    if count:
        raise ZskError(f"{path}: {count} image(s) have NaN or inf features (first: image {first}); "
                       "re-extract the features or drop those images")


def read_precomp(
    folder: str | Path,
    split: str,
    captions_per_image: int = 5,
    feature_shape: tuple[int, ...] | None = None,
    mmap: bool = True,
) -> PrecompSplit:
    """Read one split of the precomputed layout and check it: caption count = ``captions_per_image`` x
    image count, and (when given) per-image feature shape ``feature_shape`` (e.g. ``(36, 2048)``)."""
    folder = Path(folder)
    caps_path = folder / f"{split}_caps.txt"
    ims_path = folder / f"{split}_ims.npy"
    captions = read_caption_lines(caps_path)
    feats = read_features(ims_path, mmap=mmap)
    n_img = feats.shape[0]
    if len(captions) != captions_per_image * n_img:
        raise ZskError(
            f"{caps_path}: {len(captions)} captions for {n_img} images in {ims_path.name}; expected "
            f"{captions_per_image} captions per image ({captions_per_image * n_img} lines). Fix the files or "
            f"set data.captions_per_image"
        )
    if feature_shape is not None and tuple(feats.shape[1:]) != tuple(feature_shape):
        raise ZskError(
            f"{ims_path}: per-image feature shape {tuple(feats.shape[1:])} does not match the model's "
            f"{tuple(feature_shape)}; set model.img_dim / model.num_regions to the file's shape"
        )
    ids_path = folder / f"{split}_ids.txt"
    image_ids: list[str] = []
    if ids_path.is_file():
        try:
            ids = [x.strip() for x in ids_path.read_text(encoding="utf-8").splitlines() if x.strip()]
        except UnicodeDecodeError:
            raise ZskError(f"{ids_path}: not a UTF-8 text file of image ids (one per line)") from None
        if len(ids) == n_img:
            image_ids = ids
        elif len(ids) == len(captions):
            image_ids = ids[::captions_per_image]
        else:
            raise ZskError(
                f"{ids_path}: {len(ids)} ids for {n_img} images / {len(captions)} captions; "
                "expected one id per image or per caption"
            )
    return PrecompSplit(folder, split, feats, captions, captions_per_image, image_ids)


def write_precomp(
    folder: str | Path, split: str, features: np.ndarray, captions: list[str], image_ids: list[str] | None = None
) -> None:
    """Write one split in the precomputed layout (used by sample writers and tests)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}_ims.npy", np.asarray(features, dtype=np.float32))
    (folder / f"{split}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    if image_ids is not None:
        (folder / f"{split}_ids.txt").write_text("\n".join(image_ids) + "\n")


def read_lsa_matrix(path: str | Path, num_rows: int | None = None) -> np.ndarray:
    """A ``train_svd.txt`` file (comma-separated, one LSA row per training caption)."""
    import warnings

    path = Path(path)
    if not path.is_file():
        raise ZskError(f"LSA file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on an empty file; the row count below names it
            mat = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ZskError(f"{path}: not a comma-separated numeric matrix ({first})") from None
    except OSError as e:
        raise ZskError(f"cannot read LSA file {path}: {e}") from None
    if num_rows is not None and mat.shape[0] != num_rows:
        raise ZskError(f"{path}: {mat.shape[0]} rows for {num_rows} training captions; recompute it "
                       "(`zsk retrieve lsa`) or unset data.lsa_file")
    if mat.shape[0] and mat.shape[1] == 0:
        raise ZskError(f"{path}: rows hold no values")
    bad = ~np.isfinite(mat).all(axis=1)
    if bad.any():
        raise ZskError(f"{path}: {int(bad.sum())} row(s) hold NaN or inf (first: line {int(np.argmax(bad)) + 1}); "
                       "recompute it with `zsk retrieve lsa`")
    return mat


def write_lsa_matrix(path: str | Path, mat: np.ndarray) -> None:
    """Write an LSA matrix as ``train_svd.txt`` (comma-separated rows)."""
    np.savetxt(path, np.asarray(mat, dtype=np.float32), delimiter=",", fmt="%.8g")


# ----------------------------------------------------------------------------- Karpathy JSON


@dataclass
class CaptionedImage:
    """One image file with its captions (raw-image training, IAPR TC-12)."""

    path: Path
    captions: list[str]
    image_id: str = ""


def read_karpathy(
    json_path: str | Path,
    image_root: str | Path,
    split: str,
    use_restval: bool = False,
    captions_per_image: int | None = 5,
    check_files: bool = True,
) -> list[CaptionedImage]:
    """Images and captions of one Karpathy split (``train`` | ``val``/``dev`` | ``test``).

    ``use_restval`` adds COCO's 30,504 ``restval`` images to ``train`` (VSE++ ``--use_restval``).
    Images with more than ``captions_per_image`` captions keep the first ones (COCO has a few with 6-7);
    fewer is an error naming the image.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    doc = read_json(json_path, "Karpathy split file")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ZskError(f"{json_path}: expected a Karpathy split file with an 'images' list")
    wanted = {"dev": "val"}.get(split, split)
    splits = {wanted} | ({"restval"} if use_restval and wanted == "train" else set())
    out: list[CaptionedImage] = []
    for i, entry in enumerate(doc["images"]):
        try:
            if entry["split"] not in splits:
                continue
            rel = Path(entry.get("filepath", "")) / entry["filename"]
            caps = [s["raw"].strip() if "raw" in s else " ".join(s["tokens"]) for s in entry["sentences"]]
        except (KeyError, TypeError, AttributeError):
            raise ZskError(
                f"{json_path}: image entry {i} lacks 'split', 'filename' or 'sentences' with 'raw'/'tokens'"
            ) from None
        caps = [c for c in caps if c]
        if captions_per_image is not None:
            if len(caps) < captions_per_image:
                raise ZskError(
                    f"{json_path}: image {rel} has {len(caps)} captions, expected {captions_per_image}"
                )
            caps = caps[:captions_per_image]
        path = image_root / rel
        if check_files and not path.is_file():
            raise ZskError(f"{json_path}: image {path} not found; set data.image_root to the image folder")
        out.append(CaptionedImage(path, caps, str(entry.get("imgid", entry.get("cocoid", i)))))
    if not out:
        raise ZskError(f"{json_path}: no images in split '{split}'")
    return out


# ----------------------------------------------------------------------------- IAPR TC-12

_SGML_FIELD = re.compile(r"<(DESCRIPTION|IMAGE|DOCNO)>(.*?)</\1>", re.S | re.I)


def read_iapr_annotation(path: str | Path) -> tuple[str, str]:
    """(description, image relative path) from one IAPR TC-12 ``.eng`` annotation file."""
    path = Path(path)
    raw = path.read_bytes().decode("latin-1")  # the collection is ISO-8859-1
    fields = {m.group(1).upper(): " ".join(m.group(2).split()) for m in _SGML_FIELD.finditer(raw)}
    desc = fields.get("DESCRIPTION", "").strip().rstrip(";").strip()
    if not desc:
        raise ZskError(f"{path}: no <DESCRIPTION> text; IAPR TC-12 annotations need one description per image")
    image = fields.get("IMAGE", "")
    if not image:
        raise ZskError(f"{path}: no <IMAGE> field")
    return desc, image


def read_iapr_split(root: str | Path, split_file: str | Path, check_files: bool = True) -> list[CaptionedImage]:
    """IAPR TC-12 images and their single description for the image ids listed in ``split_file``
    (one id such as ``25`` or ``00/25`` per line), from ``root/annotations_complete_eng``."""
    root, split_file = Path(root), Path(split_file)
    ann_root = root / "annotations_complete_eng"
    if not ann_root.is_dir():
        raise ZskError(f"IAPR TC-12 annotations not found: {ann_root}; set data.root to the iaprtc12 folder")
    if not split_file.is_file():
        raise ZskError(f"IAPR TC-12 split list not found: {split_file}")
    by_id = {p.stem: p for p in ann_root.glob("*/*.eng")}
    by_rel = {f"{p.parent.name}/{p.stem}": p for p in by_id.values()}
    out: list[CaptionedImage] = []
    try:
        listed = split_file.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as e:
        raise ZskError(f"IAPR TC-12 split list {split_file} is not a text file of image ids: {e}") from None
    for line_no, line in enumerate(listed, 1):
        key = line.strip()
        if not key:
            continue
        key = key.removesuffix(".jpg").removesuffix(".eng")
        ann = by_rel.get(key) or by_id.get(Path(key).name)
        if ann is None:
            raise ZskError(f"{split_file}: line {line_no}: no annotation for image id '{key}' under {ann_root}")
        desc, image = read_iapr_annotation(ann)
        path = root / image
        if check_files and not path.is_file():
            raise ZskError(f"{ann}: image {path} not found")
        out.append(CaptionedImage(path, [desc], Path(key).name))
    if not out:
        raise ZskError(f"{split_file}: no image ids listed")
    return out
