"""Datasets of the refer task over :mod:`zsk.data.refer`: images and masks resized to a square (PIL
bilinear / nearest, as LGFormer's ``transforms.Resize``), ImageNet normalisation, BERT token ids truncated
to ``max_tokens`` and zero-padded with an attention mask (LGFormer ``data/dataset_refer_bert.py``). Training
draws one random sentence of each ref per epoch; evaluation runs every sentence of every ref.
``write_sample`` writes a synthetic set in the same on-disk layout (pickled refs, COCO polygons)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from zsk.core.errors import ZskError
from zsk.core.io import atomic_open
from zsk.data.images import read_image
from zsk.data.refer import RefItem, decode_mask, load_refer
from zsk.tasks.refer.config import Config, DataConfig

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def fill_root(value: str, root: str) -> str:
    """``{root}`` in a recipe path replaced by ``data.root``."""
    return value.replace("{root}", str(root))


class Tokenizer:
    """BERT WordPiece ids of an expression: ``[CLS] ... [SEP]`` truncated to ``max_tokens`` (the [SEP] is
    cut with the rest, as the official dataset), padded with 0, and the attention mask."""

    def __init__(self, tokenizer: Any, max_tokens: int) -> None:
        self.tok, self.max_tokens = tokenizer, max_tokens

    @classmethod
    def from_spec(cls, spec: str, root: str, max_tokens: int, lowercase: bool = True) -> Tokenizer:
        """A vocab.txt file (``{root}`` substituted) or a Hugging Face tokenizer name/folder."""
        path = Path(fill_root(spec, root)).expanduser()
        if path.suffix == ".txt":
            if not path.is_file():
                raise ZskError(f"model.tokenizer: vocab file {path} not found; give a BERT vocab.txt or a tokenizer name")
            try:
                vocab = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ZskError(f"model.tokenizer: cannot read vocab file {path} ({e})") from None
            return cls.from_vocab(vocab, max_tokens, lowercase)
        from zsk.models.hf import load_hf_tokenizer

        return cls(load_hf_tokenizer(str(path) if path.exists() else spec, option="model.tokenizer"), max_tokens)

    @classmethod
    def from_vocab(cls, vocab: Sequence[str], max_tokens: int, lowercase: bool = True) -> Tokenizer:
        """Rebuild from a checkpoint's stored vocabulary (so eval/predict need no tokenizer download)."""
        from transformers import BertTokenizer

        table = {tok: i for i, tok in enumerate(vocab)}
        missing = [t for t in SPECIAL_TOKENS if t not in table]
        if missing or len(table) != len(vocab):
            raise ZskError(f"the tokenizer vocabulary lacks {missing or 'unique tokens'}; give a BERT vocab.txt "
                           "(one token per line, [PAD] [UNK] [CLS] [SEP] [MASK] included)")
        return cls(BertTokenizer(vocab=table, do_lower_case=lowercase), max_tokens)

    def vocab(self) -> list[str]:
        """Tokens in id order (stored in checkpoints)."""
        items = sorted(self.tok.get_vocab().items(), key=lambda kv: kv[1])
        return [t for t, _ in items]

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and attention mask of one expression, ``max_tokens`` long."""
        ids = self.tok.encode(text, add_special_tokens=True)[: self.max_tokens]
        return ids + [0] * (self.max_tokens - len(ids)), [1] * len(ids) + [0] * (self.max_tokens - len(ids))

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, max_tokens) token ids and attention masks."""
        pairs = [self.encode(t) for t in texts]
        return (torch.tensor([p[0] for p in pairs], dtype=torch.long),
                torch.tensor([p[1] for p in pairs], dtype=torch.long))


def image_tensor(rgb: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, size, size) normalised float tensor of an RGB uint8 image resized bilinearly (PIL)."""
    im = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.array(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def mask_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    """(size, size) uint8 mask resized with nearest neighbour (PIL)."""
    return torch.from_numpy(np.array(Image.fromarray(mask).resize((size, size), Image.NEAREST), dtype=np.uint8))


def load_pair(item: RefItem, d: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """The ref's RGB image and its mask, with the image checked against the size in instances.json."""
    rgb = read_image(item.image)
    if rgb.shape[:2] != (item.height, item.width):
        raise ZskError(f"image {item.image} is {rgb.shape[1]}x{rgb.shape[0]} but instances.json says "
                       f"{item.width}x{item.height}; use the COCO train2014 image the annotations were made on")
    return rgb, decode_mask(item, d.mask_parts)


def check_root(d: DataConfig) -> None:
    """``data.root`` must be a folder (checked before anything under it is read, so the error names the root)."""
    if not Path(d.root).is_dir():
        raise ZskError(f"data.root {d.root} is not a folder; give the refer layout root (<root>/{d.dataset}/"
                       f"refs({d.split_by}).p, instances.json, images/mscoco/images/train2014) or write one with "
                       "`zsk refer sample DIR`")


def refs_of(cfg: Config, split: str, limit: int | None = None) -> list[RefItem]:
    """The refs of a split of the recipe's dataset (the first ``limit`` when given), every image checked to
    exist up front so that a missing file stops the run before training or evaluation starts."""
    d = cfg.data
    check_root(d)
    image_dir = fill_root(d.image_dir, d.root)
    items = load_refer(d.root, d.dataset, d.split_by, split, image_dir)
    items = items[:limit] if limit else items
    missing = sorted({it.image for it in items if not it.image.is_file()})
    if missing:
        raise ZskError(f"image {missing[0]} not found ({len(missing)} of the {split} images missing); put the COCO "
                       f"train2014 images in data.image_dir = {image_dir}")
    return items


class TrainSet(Dataset):
    """One item per ref: the image, its mask and one of its sentences drawn at random (torch RNG, which
    the trainer seeds per epoch and sample)."""

    def __init__(self, items: Sequence[RefItem], tokenizer: Tokenizer, d: DataConfig) -> None:
        self.items, self.d = list(items), d
        self.tokens = [tokenizer.batch(it.sentences) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rgb, mask = load_pair(self.items[i], self.d)
        ids, att = self.tokens[i]
        j = int(torch.randint(len(ids), (1,)))
        return {"image": image_tensor(rgb, self.d.image_size, self.d.mean, self.d.std),
                "mask": mask_tensor(mask, self.d.image_size), "input_ids": ids[j], "attention_mask": att[j]}


class EvalSet(Dataset):
    """One item per ref with all its sentences; ``original`` also returns the mask at the image's size."""

    def __init__(self, items: Sequence[RefItem], tokenizer: Tokenizer, d: DataConfig, original: bool = False) -> None:
        self.items, self.d, self.original = list(items), d, original
        self.tokens = [tokenizer.batch(it.sentences) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rgb, mask = load_pair(self.items[i], self.d)
        ids, att = self.tokens[i]
        out = {"image": image_tensor(rgb, self.d.image_size, self.d.mean, self.d.std),
               "mask": mask_tensor(mask, self.d.image_size), "input_ids": ids, "attention_mask": att,
               "ref_id": self.items[i].ref_id}
        if self.original:
            out["mask_original"] = torch.from_numpy(mask)
        return out


def first_item(batch: list[Any]) -> Any:
    """Collate for evaluation loaders with batch size 1."""
    return batch[0]


# ----------------------------------------------------------------------------- synthetic sample

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "triangle", "circle")


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[list[float]]:
    """COCO polygons (flat x, y lists); a square is stored as two parts, as some COCO objects are."""
    if shape == "square":
        return [[cx - r, cy - r, cx, cy - r, cx, cy + r, cx - r, cy + r],
                [cx, cy - r, cx + r, cy - r, cx + r, cy + r, cx, cy + r]]
    if shape == "triangle":
        return [[cx, cy - r, cx + r, cy + r, cx - r, cy + r]]
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    return [[float(v) for xy in zip(cx + r * np.cos(ang), cy + r * np.sin(ang), strict=True) for v in xy]]


def write_sample(root: str | Path, num_images: int = 40, size: int = 64, seed: int = 0,
                 dataset: str = "refcoco", split_by: str = "unc") -> Path:
    """A synthetic referring set in the refer layout: every image shows two objects (different colour and
    shape, one on each side); each object is a ref with three expressions. Writes ``images/mscoco/images/
    train2014/*.jpg``, ``<dataset>/instances.json``, ``<dataset>/refs(<split_by>).p`` and a ``vocab.txt``.
    Splits by image: 10 % each for val / testA / testB, the rest train. Returns ``root``."""
    from PIL import ImageDraw

    root = Path(root)
    rng = np.random.default_rng(seed)
    img_dir = root / "images" / "mscoco" / "images" / "train2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    (root / dataset).mkdir(parents=True, exist_ok=True)
    n_eval = max(1, int(round(num_images * 0.1)))  # images per evaluation split
    n_train = num_images - 3 * n_eval
    if n_train < 1:
        raise ZskError(f"sample: {num_images} images leave none for training; write at least 4")
    rest = ["val", "testA", "testB"]
    images, anns, refs, words = [], [], [], set()
    cats = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    for i in range(num_images):
        image_id = 100 + i
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        split = "train" if i < n_train else rest[(i - n_train) // n_eval]
        bg = rng.integers(90, 160, size=3)
        arr = np.clip(bg + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        canvas = Image.fromarray(arr)
        draw = ImageDraw.Draw(canvas)
        colours = rng.choice(list(COLOURS), 2, replace=False)
        shapes = rng.choice(SHAPES, 2, replace=False)
        for k, side in enumerate(("left", "right")):
            r = float(rng.uniform(0.12, 0.2) * size)
            cx = float(rng.uniform(r + 1, size / 2 - r - 1) + (size / 2 if side == "right" else 0))
            cy = float(rng.uniform(r + 1, size - r - 1))
            polys = _polygon(str(shapes[k]), cx, cy, r)
            for poly in polys:
                draw.polygon([(poly[j], poly[j + 1]) for j in range(0, len(poly), 2)], fill=COLOURS[str(colours[k])])
            ann_id = image_id * 10 + k
            xs = [v for p in polys for v in p[0::2]]
            ys = [v for p in polys for v in p[1::2]]
            anns.append({"id": ann_id, "image_id": image_id, "category_id": SHAPES.index(str(shapes[k])) + 1,
                         "segmentation": polys, "area": float((max(xs) - min(xs)) * (max(ys) - min(ys))),
                         "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "iscrowd": 0})
            texts = [f"the {colours[k]} {shapes[k]}", f"{colours[k]} thing on the {side}",
                     f"{shapes[k]} on the {side} side"]
            sentences = []
            for j, t in enumerate(texts):
                toks = t.split()
                words.update(toks)
                sentences.append({"raw": t, "sent": t, "tokens": toks, "sent_id": ann_id * 10 + j})
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id,
                         "category_id": SHAPES.index(str(shapes[k])) + 1, "split": split,
                         "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                         "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
        with atomic_open(img_dir / file_name) as f:
            canvas.save(f, format="JPEG", quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
    with atomic_open(root / dataset / "instances.json", "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    with atomic_open(root / dataset / f"refs({split_by}).p") as f:
        pickle.dump(refs, f, protocol=2)
    with atomic_open(root / "vocab.txt", "w") as f:
        f.write("\n".join([*SPECIAL_TOKENS, *sorted(words)]) + "\n")
    return root
