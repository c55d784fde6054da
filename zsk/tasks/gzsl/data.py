"""DGP's `materials/` files, image folders by wnid, precomputed features, and the synthetic sample.

On-disk formats (the reference code's):

* ``imagenet-split.json``: ``{"train": [seen wnids, in the CNN's fc row order], "test": [unseen wnids]}``
* ``imagenet-testsets.json``: ``{"2-hops": [...], "3-hops": [...], "all": [...], ...}``
* ``awa2-split.json``: ``{"train", "test", "train_names", "test_names"}``
* ``fc-weights.json``: ``[[wnid, [w_1, ..., w_F, b]], ...]`` for the seen classes (flat rows are read too)
* graphs: see :mod:`zsk.data.graphs`; word vectors: :mod:`zsk.data.embeddings`
* images: ``<images>/<wnid>/*.JPEG`` (ImageNet fall 2011); features: ``X.npy`` (N x F) plus a text file
  with one wnid per line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import Dataset

from zsk.core.errors import ZskError
from zsk.core.io import read_json
from zsk.data.embeddings import l2_normalize_rows, load_glove
from zsk.data.graphs import (
    KnowledgeGraph,
    ancestor_groups,
    read_dense_grouped_graph,
    read_induced_graph,
    read_names,
    undirected_hops,
    wordnet_lemma_names,
    write_dense_grouped_graph,
    write_induced_graph,
)
from zsk.tasks.gzsl.word_vectors import embed_lemmas

if TYPE_CHECKING:
    from zsk.tasks.gzsl.config import Config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve(root: str | Path, path: str | Path) -> Path:
    """``path`` under ``root`` unless it is absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root).expanduser() / p


def check_out_dir(out: Path, what: str = "--out") -> None:
    """An output folder (``--out`` of predict and make-graph) must be a folder or not exist yet, below a folder."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ZskError(f"{what} {out}: {folder} is a file, not a folder")
            return


def _wnid_list(path: Path, obj: Any, key: str) -> list[str]:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise ZskError(f"{path}: {key!r} must be a list of wnids")
    return value


@dataclass
class Split:
    """Seen (train) and unseen (test) classes."""

    train: list[str]
    test: list[str]


def read_split(path: Path) -> Split:
    """``imagenet-split.json`` (or ``awa2-split.json``): train and test wnids, disjoint."""
    obj = read_json(path, "split file")
    train, test = _wnid_list(path, obj, "train"), _wnid_list(path, obj, "test")
    both = set(train) & set(test)
    if both:
        raise ZskError(f"{path}: wnid {sorted(both)[0]} is both a train and a test class")
    return Split(train=train, test=test)


def read_testsets(path: Path) -> dict[str, list[str]]:
    """``imagenet-testsets.json`` (test-set name -> wnids), or a folder of GCNZ-style lists
    (``data/list/2-hops.txt``: one wnid per line, the file stem names the test set)."""
    if path.is_dir():
        lists = sorted(path.glob("*.txt"))
        if not lists:
            raise ZskError(f"{path} holds no <testset>.txt wnid lists")
        return {p.stem: [ln.split()[0] for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
                for p in lists}
    obj = read_json(path, "test-set file")
    if not isinstance(obj, dict):
        raise ZskError(f"{path}: expected a mapping of test-set names to wnid lists")
    return {k: _wnid_list(path, obj, k) for k in obj}


def read_awa2_train(path: Path) -> list[str]:
    """``awa2-split.json``'s 40 train wnids (evaluate_awa2.py's seen classes)."""
    return _wnid_list(path, read_json(path, "AwA2 split file"), "train")


def read_awa2_split(path: Path) -> tuple[list[str], list[str]]:
    """``awa2-split.json`` -> (test wnids, test folder names such as 'killer+whale')."""
    obj = read_json(path, "AwA2 split file")
    wnids = _wnid_list(path, obj, "test")
    names = obj.get("test_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or len(names) != len(wnids):
        raise ZskError(f"{path}: 'test_names' must list one AwA2 folder name per 'test' wnid")
    return wnids, [str(n) for n in names]


def read_fc_weights(path: Path, seen: Sequence[str]) -> np.ndarray:
    """``fc-weights.json`` -> (M, F+1) rows in the order of ``seen``; the wnids must be exactly the
    seen classes (one classifier per seen class)."""
    obj = read_json(path, "classifier file")
    if not isinstance(obj, list) or not all(isinstance(r, list) and r and isinstance(r[0], str) for r in obj):
        raise ZskError(f"{path}: expected [[wnid, [w_1, ..., w_F, b]], ...] (DGP's fc-weights.json)")
    # DGP's process_resnet.py writes [wnid, [w_1..w_F, b]]; a flat [wnid, w_1, ..., b] row is read too
    rows = {r[0]: (r[1] if len(r) == 2 and isinstance(r[1], list) else r[1:]) for r in obj}
    if len(rows) != len(seen):
        raise ZskError(f"{path} holds {len(rows)} classifiers but the split has {len(seen)} seen (train) classes: "
                       f"the file must hold one row per train wnid")
    missing = [w for w in seen if w not in rows]
    if missing:
        raise ZskError(f"{path} has no classifier for seen class {missing[0]} ({len(missing)} missing)")
    lengths = {len(v) for v in rows.values()}
    if len(lengths) != 1:
        raise ZskError(f"{path}: classifier rows have different lengths {sorted(lengths)}")
    try:
        weights = np.asarray([rows[w] for w in seen], dtype=np.float32)
    except (TypeError, ValueError):
        raise ZskError(f"{path}: classifier rows must hold numbers after the wnid") from None
    if not np.isfinite(weights).all():
        row = int(np.nonzero(~np.isfinite(weights).all(axis=1))[0][0])
        raise ZskError(f"{path}: the classifier of {seen[row]} holds NaN or infinite values")
    return weights


def write_fc_weights(path: Path, wnids: Sequence[str], weights: np.ndarray) -> None:
    """Write ``fc-weights.json`` in DGP's layout (rows ``[wnid, [w_1..w_F, b]]``, process_resnet.py)."""
    path.write_text(json.dumps([[w, list(map(float, row))] for w, row in zip(wnids, weights, strict=True)]))


def load_feature_array(path: Path, hint: str = "an N x F .npy array of image features") -> np.ndarray:
    """A ``.npy`` array of real numbers (without pickles), as float32; a missing, truncated, pickled,
    non-numeric or non-finite file is a ``ZskError`` naming it."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ZskError(f"features file not found: {path} ({hint})") from None
    except (OSError, ValueError, EOFError) as e:
        raise ZskError(f"cannot read features {path}: {e} ({hint})") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        kind = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise ZskError(f"features {path} hold {kind} values; expected real numbers ({hint})")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ZskError(f"features {path} hold {bad} NaN or infinite value{'s' if bad > 1 else ''}: recompute them "
                       f"(zsk gzsl features) or drop those rows")
    return x


def read_features(features: Path, labels: Path) -> tuple[np.ndarray, list[str]]:
    """Precomputed image features (``.npy``, N x F) and their wnids (one per line)."""
    x = load_feature_array(features, "set eval.features to an N x F .npy file")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ZskError(f"features {features} have shape {x.shape}; expected N x F with N, F >= 1")
    try:
        names = [ln.strip() for ln in labels.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise ZskError(f"labels file not found: {labels} (set eval.labels: one wnid per line, one line per "
                       f"row of {features.name})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ZskError(f"cannot read labels file {labels}: {e} (one wnid per line)") from None
    if len(names) != x.shape[0]:
        raise ZskError(f"{labels} has {len(names)} labels for {x.shape[0]} feature rows in {features}: one wnid per "
                       f"line, one line per row")
    return x, names


def list_images(root: Path, wnids: Sequence[str], folder_names: Sequence[str] | None = None
                ) -> tuple[list[Path], list[int], list[str]]:
    """Images under ``root/<wnid>/`` (or ``root/<folder_names[i]>/``) -> (paths, class index, wnids
    without any image). Classes missing on disk are reported, not fatal: ImageNet fall 2011 is no longer
    distributed and later releases lack some classes."""
    folders = list(folder_names) if folder_names is not None else list(wnids)
    paths: list[Path] = []
    labels: list[int] = []
    missing: list[str] = []
    for i, (wnid, name) in enumerate(zip(wnids, folders, strict=True)):
        d = root / name
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if d.is_dir() else []
        if not files:
            missing.append(wnid)
        paths.extend(files)
        labels.extend([i] * len(files))
    return paths, labels, missing


def read_rgb(path: Path) -> Image.Image:
    """An image as RGB; unreadable -> ZskError naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise ZskError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ZskError(f"cannot read image {path}: {e}") from None


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is ``size`` (bilinear), the longer one to int(size * long / short), truncated
    as torchvision's Resize(size) that DGP's datasets/imagenet.py uses."""
    w, h = image.size
    if min(w, h) == size:
        return image
    if w <= h:
        return image.resize((size, max(1, int(size * h / w))), Image.BILINEAR)
    return image.resize((max(1, int(size * w / h)), size), Image.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` window."""
    w, h = image.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def random_resized_crop(image: Image.Image, size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None
                        ) -> Image.Image:
    """A random crop of 8-100% of the area and 3/4-4/3 aspect ratio, resized to ``size`` (Inception-style
    augmentation, as torchvision's RandomResizedCrop); ten tries, then the central crop."""
    w, h = image.size
    area = w * h
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = float(np.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1]))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            return image.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    side = min(w, h)
    return center_crop(image, side).resize((size, size), Image.BILINEAR)


def to_normalized_tensor(image: Image.Image) -> Tensor:
    """HWC uint8 RGB -> CHW float, ImageNet mean/std normalised."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


class EvalTransform:
    """Resize (shorter side) -> CenterCrop -> normalised tensor (spec "Protocol": 256 -> 224)."""

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        if crop > resize:
            raise ZskError(f"data.crop ({crop}) must not exceed data.resize ({resize})")
        self.resize, self.crop = resize, crop

    def __call__(self, image: Image.Image) -> Tensor:
        return to_normalized_tensor(center_crop(resize_shorter(image, self.resize), self.crop))


class TrainTransform:
    """RandomResizedCrop + horizontal flip -> normalised tensor (stage two fine-tuning)."""

    def __init__(self, crop: int = 224) -> None:
        self.crop = crop

    def __call__(self, image: Image.Image) -> Tensor:
        image = random_resized_crop(image, self.crop)
        if float(torch.rand(())) < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_normalized_tensor(image)


def eval_transform(resize: int = 256, crop: int = 224) -> EvalTransform:
    """The evaluation preprocessing."""
    return EvalTransform(resize, crop)


def train_transform(crop: int = 224) -> TrainTransform:
    """The fine-tuning augmentation."""
    return TrainTransform(crop)


class ImageList(Dataset):
    """(image tensor, class index) over a list of files."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Any) -> None:
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(read_rgb(self.paths[i])), self.labels[i]


# ----------------------------------------------------------------------------- sample data

SAMPLE_FEATURE_DIM = 512  # the pooled width of torchvision's resnet18, so the image path runs on it too
SAMPLE_WORD_DIM = 50


def _sample_tree(branching: Sequence[int]) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    """A complete tree: node depths, (child, parent) edges, leaves (creation order, root = 0)."""
    depth, edges, level = [0], [], [0]
    for b in branching:
        nxt = []
        for parent in level:
            for _ in range(b):
                node = len(depth)
                depth.append(depth[parent] + 1)
                edges.append((node, parent))
                nxt.append(node)
        level = nxt
    return depth, edges, level


def write_sample(out: str | Path, seed: int = 0, images_per_class: int = 12, image_size: int = 48) -> dict:
    """Write a small synthetic hierarchy in DGP's on-disk formats under ``out`` and return a summary.

    A tree (root -> 3 -> 9 -> 36 leaves) plus a few second parents (multiple inheritance). Every node has a
    latent classifier that drifts from its parent's; its word vector is a fixed random projection of that
    latent plus noise, so classifiers are predictable from embeddings and graph neighbours, as DGP assumes.
    Seen classes: 2 leaves under 6 of the 9 mid nodes (12). Test classes: the 24 other leaves, whose image
    features are the latent plus noise. Also writes tiny JPEGs in ``datasets/imagenet/<wnid>/`` and the
    GloVe/edge-list/words.txt inputs from which ``zsk gzsl make-graph`` rebuilds the graph.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    depth, tree_edges, leaves = _sample_tree([3, 3, 4])
    n = len(depth)
    mids = [i for i in range(n) if depth[i] == 2]
    # second parents: a few leaves also hang under their parent's sibling (WordNet has multiple inheritance)
    parent_of = dict(tree_edges)
    extra_edges = []
    for leaf in leaves[::9]:
        p = parent_of[leaf]
        siblings = [m for m in mids if parent_of[m] == parent_of[p] and m != p]
        extra_edges.append((leaf, siblings[0]))
    seen_nodes = [c for m in mids[:6] for c in [leaf for leaf in leaves if parent_of[leaf] == m][:2]]
    test_nodes = [leaf for leaf in leaves if leaf not in seen_nodes]
    internal = [i for i in range(n) if i not in leaves]

    # latent classifiers: z_child = z_parent + noise (in creation order the parent comes first)
    f = SAMPLE_FEATURE_DIM
    z = np.zeros((n, f), dtype=np.float32)
    z[0] = rng.normal(0, 1.0, f)
    for child, parent in tree_edges:
        z[child] = z[parent] + rng.normal(0, 0.8, f)
    for child, parent in extra_edges:
        z[child] = 0.8 * z[child] + 0.2 * z[parent]
    bias = rng.normal(0, 0.1, n).astype(np.float32)
    projection = rng.normal(0, 1.0 / np.sqrt(f), (f, SAMPLE_WORD_DIM)).astype(np.float32)
    words = (z @ projection + rng.normal(0, 0.3, (n, SAMPLE_WORD_DIM))).astype(np.float32)

    # node order as in DGP: seen (sorted), test, then the induced internal nodes
    wnid_of = {i: f"n{10000000 + i:08d}" for i in range(n)}
    node_of = {w: i for i, w in wnid_of.items()}
    seen_w = sorted(wnid_of[i] for i in seen_nodes)
    seen_nodes = [node_of[w] for w in seen_w]
    order = seen_nodes + test_nodes + internal
    pos = {node: k for k, node in enumerate(order)}
    wnids = [wnid_of[i] for i in order]
    edges = np.asarray(sorted((pos[c], pos[p]) for c, p in tree_edges + extra_edges), dtype=np.int64)

    # word vectors: GloVe file with one word per node ("cls<k>") and a two-word lemma for some nodes
    names = {i: [f"cls{i}"] for i in range(n)}
    glove_rows = {f"cls{i}": words[i] for i in range(n)}
    for i in internal:  # internal nodes get a multi-word lemma whose words average to their vector
        a = words[i] + rng.normal(0, 0.05, SAMPLE_WORD_DIM).astype(np.float32)
        glove_rows[f"grp{i}a"], glove_rows[f"grp{i}b"] = a, 2 * words[i] - a
        names[i] = [f"grp{i}a_grp{i}b"]
    with open(out / "glove.sample.50d.txt", "w", encoding="utf-8") as fh:
        for word, vec in glove_rows.items():
            fh.write(word + " " + " ".join(f"{v:.6f}" for v in vec) + "\n")
    (out / "words.txt").write_text("".join(f"{wnid_of[i]}\t{', '.join(names[i])}\n" for i in order))
    (out / "edges.txt").write_text("# child parent\n" + "".join(f"{wnid_of[c]} {wnid_of[p]}\n"
                                                                for c, p in tree_edges + extra_edges))
    vectors = l2_normalize_rows(np.stack([np.mean([glove_rows[w] for w in names[i][0].split("_")], axis=0)
                                          for i in order]))

    graph = KnowledgeGraph(wnids=wnids, edges=edges, vectors=vectors)
    write_induced_graph(out / "imagenet-induced-graph.json", graph)
    write_dense_grouped_graph(out / "imagenet-dense-grouped-graph.json", graph, ancestor_groups(n, edges))
    test_w = [wnid_of[i] for i in test_nodes]
    (out / "imagenet-split.json").write_text(json.dumps({"train": seen_w, "test": test_w}))
    hops = undirected_hops(n, edges, list(range(len(seen_w))))
    testsets = {"train": seen_w,
                "2-hops": [w for w in test_w if 0 < hops[pos[node_of[w]]] <= 2],
                "3-hops": [w for w in test_w if 0 < hops[pos[node_of[w]]] <= 3],
                "all": test_w}
    (out / "imagenet-testsets.json").write_text(json.dumps(testsets))
    xml = [wnid_of[i] for i in internal]
    (out / "imagenet-xml-wnids.json").write_text(json.dumps(xml))
    awa_test = test_w[:4]
    (out / "awa2-split.json").write_text(json.dumps({
        "train": seen_w[:4], "test": awa_test, "train_names": [f"animal+{w}" for w in seen_w[:4]],
        "test_names": [f"animal+{w}" for w in awa_test]}))

    # the seen classes' "CNN" classifiers [W | b], and unseen-class image features
    write_fc_weights(out / "fc-weights.json", seen_w, np.concatenate([z[seen_nodes], bias[seen_nodes, None]], 1))
    feats, labels = [], []
    for i in test_nodes:
        direction = z[i] / np.linalg.norm(z[i])
        feats.append(3.0 * direction + rng.normal(0, 1.0 / np.sqrt(f), (images_per_class, f)))
        labels += [wnid_of[i]] * images_per_class
    (out / "features").mkdir(exist_ok=True)
    np.save(out / "features" / "test.npy", np.concatenate(feats).astype(np.float32))
    (out / "features" / "test-labels.txt").write_text("".join(w + "\n" for w in labels))

    # tiny JPEGs per leaf class (the image path: eval on images, predict, stage-two fine-tuning)
    colors = rng.integers(30, 226, size=(n, 3))
    for i in leaves:
        d = out / "datasets" / "imagenet" / wnid_of[i]
        d.mkdir(parents=True, exist_ok=True)
        for k in range(3):
            arr = np.clip(colors[i] + rng.normal(0, 25, (image_size, image_size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{wnid_of[i]}_{k}.JPEG", quality=90)
    for w in awa_test:
        d = out / "datasets" / "awa2" / "JPEGImages" / f"animal+{w}"
        d.mkdir(parents=True, exist_ok=True)
        src = out / "datasets" / "imagenet" / w / f"{w}_0.JPEG"
        (d / f"animal+{w}_0.jpg").write_bytes(src.read_bytes())
    return {"root": str(out), "nodes": n, "edges": int(len(edges)), "seen": len(seen_w), "unseen": len(test_w),
            "testsets": {k: len(v) for k, v in testsets.items()}, "feature_dim": f, "word_dim": SAMPLE_WORD_DIM,
            "feature_rows": int(len(labels))}


def predicted_snapshot(wnids: Sequence[str], pred: Tensor) -> dict:
    """The ``epoch-N.pred`` content: ``{"wnids", "pred"}`` (loadable with weights_only)."""
    return {"wnids": list(wnids), "pred": pred.detach().float().cpu()}


def read_snapshot(path: Path) -> tuple[list[str], Tensor]:
    """Read an ``epoch-N.pred`` snapshot (ours, or the reference code's torch-saved dict)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ZskError(f"classifier snapshot not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise ZskError(f"cannot read classifier snapshot {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(obj, dict) or "wnids" not in obj or "pred" not in obj:
        raise ZskError(f"{path} is not a classifier snapshot ({{'wnids', 'pred'}})")
    pred = torch.as_tensor(obj["pred"]).float()
    if pred.ndim != 2 or pred.shape[0] != len(obj["wnids"]):
        raise ZskError(f"{path}: 'pred' has shape {tuple(pred.shape)} for {len(obj['wnids'])} wnids")
    return list(obj["wnids"]), pred


# ----------------------------------------------------------------------------- graph data


@dataclass
class GraphData:
    """The knowledge graph with its input vectors, the seen classes and where everything came from."""

    graph: KnowledgeGraph
    seen: list[str]
    seen_idx: np.ndarray
    unseen: list[str]
    groups: list[np.ndarray]  # unmerged (u, ancestor) pairs by hop distance
    graph_file: Path
    split_file: Path

    def index(self) -> dict[str, int]:
        return self.graph.index()

    @property
    def vectors(self) -> np.ndarray:
        assert self.graph.vectors is not None
        return self.graph.vectors


def node_lemmas(cfg: Config, wnids: Sequence[str]) -> list[list[str]]:
    """Lemma names per node: ``data.names`` (words.txt) when it exists, else nltk's WordNet."""
    names_path = resolve(cfg.data.root, cfg.data.names) if cfg.data.names else None
    if names_path is not None and names_path.is_file():
        table = read_names(names_path)
        missing = [w for w in wnids if w not in table]
        if missing:
            raise ZskError(f"{names_path} has no name for {missing[0]} ({len(missing)} graph nodes missing)")
        return [[n.replace(" ", "_") for n in table[w]] for w in wnids]
    return wordnet_lemma_names(wnids, cfg.model.nltk_data)


def normalize_inputs(x: np.ndarray, how: str = "l2") -> np.ndarray:
    """The graph's input features X: ``l2`` rows scaled to unit norm (DGP's F.normalize, eps 1e-12),
    ``sum`` rows divided by their sum (GCNZ's preprocess_features_dense2; zero sums stay zero), ``none``."""
    x = np.asarray(x, dtype=np.float32)
    if how == "l2":
        return l2_normalize_rows(x)
    if how == "sum":
        s = x.astype(np.float64).sum(axis=1, keepdims=True)
        inv = np.where(s == 0, 0.0, 1.0 / np.where(s == 0, 1.0, s))
        return (x * inv).astype(np.float32)
    return x


def load_graph_data(cfg: Config) -> GraphData:
    """Read the split, the induced graph (and the dense grouped graph when given) and validate that
    every split wnid is a graph node."""
    root = cfg.data.root
    split_file = resolve(root, cfg.data.split)
    split = read_split(split_file)
    graph_file = resolve(root, cfg.data.graph)
    graph = read_induced_graph(graph_file)
    if cfg.data.dense_graph:
        dense_file = resolve(root, cfg.data.dense_graph)
        dense, groups = read_dense_grouped_graph(dense_file)
        if dense.wnids != graph.wnids:
            raise ZskError(f"{dense_file} lists other nodes than {graph_file}: build both from the same graph "
                           f"(zsk gzsl make-graph)")
        if graph.vectors is not None and dense.vectors is not None and dense.vectors.shape != graph.vectors.shape:
            raise ZskError(f"{dense_file} has {dense.vectors.shape[1]}-d vectors but {graph_file} has "
                           f"{graph.vectors.shape[1]}-d (embedding dimension mismatch)")
    else:
        groups = ancestor_groups(graph.num_nodes, graph.edges)
    if cfg.model.word_vectors:
        glove = load_glove(resolve(root, cfg.model.word_vectors))
        graph.vectors = embed_lemmas(glove, node_lemmas(cfg, graph.wnids), case=cfg.model.lemma_case)
    if graph.vectors is None or graph.vectors.shape[0] == 0:
        raise ZskError(f"{graph_file} carries no 'vectors': rebuild it with word vectors (zsk gzsl make-graph "
                       f"--glove FILE) or set model.word_vectors to a GloVe file")
    # the official trainers normalise the stored vectors on load (train_gcn_*.py: F.normalize); GCNZ's
    # code divides each row by its sum (preprocess_features_dense2); model.input_norm: none keeps them
    graph.vectors = normalize_inputs(graph.vectors, cfg.model.input_norm)
    index = graph.index()
    for kind, wnids in (("train", split.train), ("test", split.test)):
        missing = [w for w in wnids if w not in index]
        if missing:
            raise ZskError(f"{kind} wnid {missing[0]} of {split_file} is missing from the graph {graph_file} "
                           f"({len(missing)} missing): rebuild the graph from this split")
    seen_idx = np.asarray([index[w] for w in split.train], dtype=np.int64)
    return GraphData(graph=graph, seen=split.train, seen_idx=seen_idx, unseen=split.test, groups=groups,
                     graph_file=graph_file, split_file=split_file)


def load_targets(cfg: Config, data: GraphData, fc: nn.Linear | None) -> Tensor:
    """The seen classes' classifiers [W | b] (or W alone when model.target_bias is false), rows L2-normalised
    (spec "Regression targets")."""
    if cfg.data.fc_weights:
        path = resolve(cfg.data.root, cfg.data.fc_weights)
        w = torch.from_numpy(read_fc_weights(path, data.seen))
        if not cfg.model.target_bias:
            w = w[:, :-1]
    else:
        if fc is None:
            raise ZskError("data.fc_weights is null, so the targets come from the CNN's last layer, but no CNN was built")
        if fc.out_features != len(data.seen):
            raise ZskError(f"the CNN {cfg.model.cnn} has {fc.out_features} classes but {data.split_file} has "
                           f"{len(data.seen)} train wnids: they must be its fc rows, in order")
        w = fc.weight.detach().float().cpu()
        if cfg.model.target_bias:
            w = torch.cat([w, fc.bias.detach().float().cpu().view(-1, 1)], dim=1)
    return torch.nn.functional.normalize(w, dim=1)


def snapshot_classifiers(path: Path, data: GraphData) -> Tensor:
    """The classifiers of an ``epoch-N.pred`` snapshot, in the graph's node order."""
    wnids, pred = read_snapshot(path)
    index = {w: i for i, w in enumerate(wnids)}
    missing = [w for w in data.graph.wnids if w not in index]
    if missing:
        raise ZskError(f"{path} has no classifier for graph node {missing[0]} ({len(missing)} missing): "
                       f"use a snapshot predicted on {data.graph_file}")
    return pred[[index[w] for w in data.graph.wnids]]
