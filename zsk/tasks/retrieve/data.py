"""Datasets of (image, caption) pairs over the shared caption readers, tokenizers, and the sample writer."""

from __future__ import annotations

import io
import json
import pickle
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from zsk.core.errors import ZskError
from zsk.data.captions import (
    CaptionedImage,
    PrecompSplit,
    find_precomp_folder,
    read_iapr_split,
    read_karpathy,
    read_precomp,
    write_precomp,
)

PAD, START, END, UNK, MASK = "<pad>", "<start>", "<end>", "<unk>", "<mask>"
SPECIALS = (PAD, START, END, UNK)  # the official vocab.py's first four ids; <mask> is appended when needed
TOKENIZERS = ("nltk", "regex")

_TOKEN = re.compile(r"[a-z0-9]+|'[a-z]+|[^\sa-z0-9]")


def word_tokenize(text: str) -> list[str]:
    """Lower-cased word tokens by one regular expression (``data.tokenizer: regex``): words, clitics
    (``'s``) and punctuation apart. Fast, but not NLTK's rules (hyphenated words and ``n't`` differ)."""
    return _TOKEN.findall(text.lower())


_NLTK_WORDS = None


def nltk_word_tokenize(text: str) -> list[str]:
    """The official tokenizer (``data.tokenizer: nltk``): ``nltk.tokenize.word_tokenize`` of the lower-cased
    caption, as VSE++'s vocab.py and data.py call it. NLTK splits sentences with its punkt model first;
    when punkt is not installed each caption is one sentence (``preserve_line``), which only differs on
    captions with a full stop inside them."""
    global _NLTK_WORDS
    if _NLTK_WORDS is None:
        import nltk

        try:
            nltk.data.find("tokenizers/punkt_tab/english/")
            _NLTK_WORDS = nltk.tokenize.word_tokenize
        except LookupError:
            try:
                nltk.data.find("tokenizers/punkt/english.pickle")
                _NLTK_WORDS = nltk.tokenize.word_tokenize
            except LookupError:
                tok = nltk.tokenize.NLTKWordTokenizer()
                _NLTK_WORDS = tok.tokenize
    return list(_NLTK_WORDS(text.lower()))


def tokenizer_fn(name: str):
    """The word tokenizer of ``data.tokenizer``."""
    if name == "nltk":
        return nltk_word_tokenize
    if name == "regex":
        return word_tokenize
    raise ZskError(f"data.tokenizer: unknown {name!r}; choose {' or '.join(TOKENIZERS)}")


class Vocabulary:
    """Word <-> id map of the GRU text encoders in the official layout: <pad>=0, <start>=1, <end>=2,
    <unk>=3, then the words in first-seen order (VSE++ vocab.py); <mask> (caption augmentation) is appended
    after the words, so the word ids stay the official ones."""

    def __init__(self, words: list[str], tokenizer: str = "nltk") -> None:
        if list(words[: len(SPECIALS)]) != list(SPECIALS):
            raise ZskError("vocabulary must start with " + ", ".join(SPECIALS))
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.tokenizer = tokenizer
        self._tokenize = tokenizer_fn(tokenizer)

    @classmethod
    def build(cls, captions: list[str], threshold: int = 4, tokenizer: str = "nltk", mask: bool = False) -> Vocabulary:
        """Words occurring at least ``threshold`` times, in first-seen order after the specials (vocab.py)."""
        tok = tokenizer_fn(tokenizer)
        counts = Counter(t for c in captions for t in tok(c))
        kept = [w for w, n in counts.items() if n >= threshold and w not in SPECIALS and w != MASK]
        return cls(list(SPECIALS) + kept + ([MASK] if mask else []), tokenizer)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def mask_id(self) -> int:
        if MASK not in self.index:
            raise ZskError("this vocabulary has no <mask> word; caption augmentation (data.token_aug) needs one")
        return self.index[MASK]

    @property
    def pad_id(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        """``<start> w1 ... wn <end>`` as ids; unknown words -> <unk>."""
        unk = self.index[UNK]
        return [self.index[START]] + [self.index.get(t, unk) for t in self._tokenize(text)] + [self.index[END]]


class _PickledVocabulary:
    """Stand-in for the official ``vocab.Vocabulary`` class while unpickling: holds its attributes only."""


class _VocabUnpickler(pickle.Unpickler):
    """Unpickles the official vocabulary pickles and nothing else: the only global admitted is a class
    named ``Vocabulary`` (mapped to an inert stand-in); everything else is builtin containers and strings."""

    def find_class(self, module: str, name: str):  # noqa: D102
        if name == "Vocabulary":
            return _PickledVocabulary
        raise pickle.UnpicklingError(f"the file references {module}.{name}; a vocabulary pickle holds only a "
                                     "Vocabulary with word2idx/idx2word dictionaries")


def _words_from_maps(doc: dict, path: Path) -> list[str]:
    idx2word = doc.get("idx2word")
    word2idx = doc.get("word2idx")
    if isinstance(idx2word, dict) and idx2word:
        try:
            pairs = sorted((int(k), v) for k, v in idx2word.items())
        except (TypeError, ValueError):
            raise ZskError(f"{path}: idx2word keys must be integers") from None
    elif isinstance(word2idx, dict) and word2idx:
        pairs = sorted((int(v), k) for k, v in word2idx.items())
    else:
        raise ZskError(f"{path}: no word2idx / idx2word dictionaries (expected an official vocabulary file)")
    ids = [i for i, _ in pairs]
    if ids != list(range(len(ids))):
        raise ZskError(f"{path}: word ids are not 0..{len(ids) - 1}")
    words = [w.decode("utf-8") if isinstance(w, bytes) else str(w) for _, w in pairs]
    return words


def read_vocab_file(path: str | Path, tokenizer: str = "nltk") -> Vocabulary:
    """An official vocabulary: VSE++'s ``{name}_vocab.pkl`` (a pickled ``Vocabulary``, read with a restricted
    unpickler that runs no code) or the JSON form ``{"word2idx", "idx2word", "idx"}`` (SGRAF, VSE infinity
    BiGRU)."""
    path = Path(path)
    if not path.is_file():
        raise ZskError(f"vocabulary file not found: {path}")
    raw = path.read_bytes()
    if raw[:1] in (b"{", b" ", b"\n"):
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ZskError(f"{path}: not a JSON vocabulary ({e})") from None
    else:
        try:
            obj = _VocabUnpickler(io.BytesIO(raw), encoding="utf-8").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, UnicodeDecodeError,
                IndexError, KeyError) as e:
            raise ZskError(f"{path}: not an official vocabulary pickle ({e})") from None
        doc = obj.__dict__ if isinstance(obj, _PickledVocabulary) else obj
        if not isinstance(doc, dict):
            raise ZskError(f"{path}: the pickle holds a {type(doc).__name__}, not a vocabulary")
    words = _words_from_maps(doc, path)
    return Vocabulary(words, tokenizer)


class BertTokens:
    """A Hugging Face tokenizer adapted to the dataset: ``[CLS] ... [SEP]`` ids."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer

    def __len__(self) -> int:
        return len(self.tok)

    @property
    def mask_id(self) -> int:
        return int(self.tok.mask_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.tok.pad_token_id or 0)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=True, truncation=True, max_length=512))


def augment_tokens(ids: list[int], prob: float, mask_id: int, vocab_size: int, rng: random.Random) -> list[int]:
    """VSE infinity's caption augmentation: each inner word, with probability ``prob``, is masked (50%),
    replaced by a random word (10%) or deleted (40%); the first and last tokens (start/end) are kept."""
    if prob <= 0 or len(ids) <= 2:
        return ids
    out = [ids[0]]
    for t in ids[1:-1]:
        u = rng.random()
        if u < prob:
            u /= prob
            if u < 0.5:
                out.append(mask_id)
            elif u < 0.6:
                out.append(rng.randrange(len(SPECIALS), max(vocab_size, len(SPECIALS) + 1)))
            # else: deleted
        else:
            out.append(t)
    if len(out) == 1:  # never delete every word
        out.append(ids[1])
    out.append(ids[-1])
    return out


# ----------------------------------------------------------------------------- datasets


class PrecompPairs(Dataset):
    """Caption-indexed pairs of a precomputed split: item ``k`` is caption ``k`` with image
    ``k // captions_per_image`` and (training) the caption's LSA row."""

    def __init__(self, split: PrecompSplit, tokenizer, lsa: np.ndarray | None = None, train: bool = False,
                 region_drop: float = 0.0, token_aug: float = 0.0, max_words: int = 0, seed: int = 0) -> None:
        self.split = split
        self.tokens = [tokenizer.encode(c) for c in split.captions]
        if max_words > 0:
            self.tokens = [t[: max_words - 1] + [t[-1]] if len(t) > max_words else t for t in self.tokens]
        self.tokenizer = tokenizer
        if lsa is not None and lsa.shape[0] != split.num_captions:
            raise ZskError(f"LSA matrix has {lsa.shape[0]} rows for {split.num_captions} captions of {split.caps_path}")
        self.lsa = lsa
        self.train = train
        self.region_drop = region_drop
        self.token_aug = token_aug
        self.seed = seed
        self.cpi = split.captions_per_image

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, k: int) -> dict:
        img = torch.from_numpy(np.array(self.split.features[k // self.cpi], dtype=np.float32))
        toks = self.tokens[k]
        if self.train and (self.region_drop > 0 or self.token_aug > 0):
            rng = random.Random(hash((self.seed, k, torch.randint(0, 2**31 - 1, ()).item())))
            if self.region_drop > 0 and img.dim() == 2 and img.shape[0] > 1:
                keep = torch.tensor([rng.random() >= self.region_drop for _ in range(img.shape[0])])
                if keep.any():
                    img = img[keep]
            toks = augment_tokens(toks, self.token_aug, self.tokenizer.mask_id, len(self.tokenizer), rng)
        item = {"image": img, "tokens": torch.tensor(toks, dtype=torch.long), "index": k, "img_index": k // self.cpi}
        if self.lsa is not None:
            item["lsa"] = torch.from_numpy(np.asarray(self.lsa[k], dtype=np.float32))
        return item


def collate_pairs(items: list[dict], pad_id: int = 0) -> dict:
    """Pad region sets and token sequences; keep their lengths."""
    imgs = [it["image"] for it in items]
    batch: dict = {}
    if imgs[0].dim() == 2:  # (regions, dim), possibly different region counts after region drop
        lens = torch.tensor([i.shape[0] for i in imgs])
        out = imgs[0].new_zeros(len(imgs), int(lens.max()), imgs[0].shape[1])
        for j, i in enumerate(imgs):
            out[j, : i.shape[0]] = i
        batch["image"], batch["img_lengths"] = out, lens
    else:  # (dim,) global vectors or (3, H, W) pixels
        batch["image"] = torch.stack(imgs)
        batch["img_lengths"] = torch.ones(len(imgs), dtype=torch.long)
    toks = [it["tokens"] for it in items]
    cap_lens = torch.tensor([len(t) for t in toks])
    tokens = torch.full((len(toks), int(cap_lens.max())), pad_id, dtype=torch.long)
    for j, t in enumerate(toks):
        tokens[j, : len(t)] = t
    batch["tokens"], batch["cap_lengths"] = tokens, cap_lens
    batch["index"] = torch.tensor([it["index"] for it in items])
    batch["img_index"] = torch.tensor([it["img_index"] for it in items])
    if "lsa" in items[0]:
        batch["lsa"] = torch.stack([it["lsa"] for it in items])
    return batch


class Collate:
    """Picklable collate function bound to a pad id (DataLoader workers)."""

    def __init__(self, pad_id: int = 0) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        return collate_pairs(items, self.pad_id)


class ImageFeatures(Dataset):
    """The images of a precomputed split, one item per image (gallery encoding)."""

    def __init__(self, features: np.ndarray) -> None:
        self.features = features

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, i: int) -> Tensor:
        return torch.from_numpy(np.array(self.features[i], dtype=np.float32))


# ----------------------------------------------------------------------------- raw images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: Path, size: int, train: bool, rng: random.Random | None = None) -> Tensor:
    """RGB image -> normalised ``(3, size, size)`` tensor: random resized crop + flip when training,
    resize to size*256/224 and centre crop otherwise (VSE++'s transforms)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if train:
                rng = rng or random.Random()
                for _ in range(10):
                    area = w * h * rng.uniform(0.08, 1.0)
                    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
                    cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
                    if 0 < cw <= w and 0 < ch <= h:
                        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
                        break
                else:
                    cw, ch = min(w, h), min(w, h)
                    x0, y0 = (w - cw) // 2, (h - ch) // 2
                im = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.BILINEAR)
                if rng.random() < 0.5:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
            else:
                short = int(round(size * 256 / 224))
                scale = short / min(w, h)
                im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
                w, h = im.size
                x0, y0 = (w - size) // 2, (h - size) // 2
                im = im.crop((x0, y0, x0 + size, y0 + size))
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as e:
        raise ZskError(f"cannot read image {path}: {e}") from None
    arr = (arr - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


@dataclass
class RawSplit:
    """A raw-image split flattened to captions: caption k belongs to image k // captions_per_image."""

    images: list[CaptionedImage]
    captions: list[str]
    captions_per_image: int
    source: Path

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_captions(self) -> int:
        return len(self.captions)


class RawPairs(Dataset):
    """Caption-indexed pairs over image files (raw-image training)."""

    def __init__(self, split: RawSplit, tokenizer, size: int, lsa: np.ndarray | None = None, train: bool = False,
                 max_words: int = 0) -> None:
        self.split, self.size, self.lsa, self.train = split, size, lsa, train
        self.tokens = [tokenizer.encode(c) for c in split.captions]
        if max_words > 0:
            self.tokens = [t[: max_words - 1] + [t[-1]] if len(t) > max_words else t for t in self.tokens]
        self.cpi = split.captions_per_image

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, k: int) -> dict:
        rng = random.Random(torch.randint(0, 2**31 - 1, ()).item()) if self.train else None
        img = load_image(self.split.images[k // self.cpi].path, self.size, self.train, rng)
        item = {"image": img, "tokens": torch.tensor(self.tokens[k], dtype=torch.long), "index": k,
                "img_index": k // self.cpi}
        if self.lsa is not None:
            item["lsa"] = torch.from_numpy(np.asarray(self.lsa[k], dtype=np.float32))
        return item


class ImageFiles(Dataset):
    """Image files for gallery encoding (eval transform)."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        return load_image(self.paths[i], self.size, train=False)


# ----------------------------------------------------------------------------- split loading


def load_split(data_cfg, split: str, feature_shape: tuple[int, ...] | None = None) -> PrecompSplit | RawSplit:
    """One split in the recipe's ``data.format`` (validated by the shared readers)."""
    fmt = data_cfg.format
    cpi = data_cfg.captions_per_image
    if fmt == "precomp":
        folder = find_precomp_folder(data_cfg.root, data_cfg.name)
        data = read_precomp(folder, split, cpi, feature_shape)
        check_finite_features(data.features, data.ims_path)
        return data
    if fmt == "karpathy":
        if not data_cfg.karpathy_json:
            raise ZskError("data.karpathy_json: set the Karpathy split file (dataset_flickr30k.json / dataset_coco.json)")
        json_path = Path(data_cfg.karpathy_json)
        if not json_path.is_absolute() and not json_path.exists():
            json_path = Path(data_cfg.root) / json_path
        image_root = Path(data_cfg.image_root) if data_cfg.image_root else Path(data_cfg.root)
        items = read_karpathy(json_path, image_root, split, data_cfg.use_restval and split == data_cfg.train_split, cpi)
        source = json_path
    else:  # iapr
        if split not in data_cfg.split_files:
            raise ZskError(f"data.split_files has no list for split {split!r}; set data.split_files.{split}=FILE "
                           f"(valid: {', '.join(data_cfg.split_files) or 'none given'})")
        split_file = Path(data_cfg.split_files[split])
        if not split_file.is_absolute() and not split_file.exists():
            split_file = Path(data_cfg.root) / split_file
        if cpi != 1:
            raise ZskError("data.captions_per_image must be 1 for IAPR TC-12 (one description per image)")
        items = read_iapr_split(data_cfg.root, split_file)
        source = split_file
    captions = [c for it in items for c in it.captions]
    return RawSplit(items, captions, cpi, source)


FINITE_CHECK_CACHE_BYTES = 256 << 20  # feature files above this size remember their NaN/inf check in the cache


def check_finite_features(features: np.ndarray, path: Path) -> None:
    """Refuse a feature file with NaN/inf values (``ZskError`` naming it and the first bad image), which would
    otherwise train to a NaN loss or rank every gallery item at random. The check reads the file once
    (about a second per GB); files above 256 MB keep the result in the zsk cache, keyed by the file's size
    and modification time, so e.g. COCO's 33 GB training features are read for it once, not per run."""
    from zsk.data.captions import check_finite, nonfinite_rows

    if features.nbytes <= FINITE_CHECK_CACHE_BYTES:
        check_finite(features, path)
        return
    from zsk.core.cache import default_cache, file_fingerprint

    found = default_cache().get_or_compute(
        "retrieve-finite", {"features": file_fingerprint(path), "producer": "retrieve.finite.v1"},
        lambda: list(nonfinite_rows(features)))
    check_finite(features, path, (int(found[0]), int(found[1])))


def subset_split(split: PrecompSplit | RawSplit, max_images: int) -> PrecompSplit | RawSplit:
    """The first ``max_images`` images and their captions (fast validation)."""
    if max_images <= 0 or max_images >= split.num_images:
        return split
    n_caps = max_images * split.captions_per_image
    if isinstance(split, PrecompSplit):
        return PrecompSplit(split.folder, split.split, split.features[:max_images], split.captions[:n_caps],
                            split.captions_per_image, split.image_ids[:max_images])
    return RawSplit(split.images[:max_images], split.captions[:n_caps], split.captions_per_image, split.source)


# ----------------------------------------------------------------------------- sample data

# Concepts of the synthetic set: each image shows one subject in one place; its region features are
# noisy copies of the subject's and the place's prototypes, and its captions name both with synonyms.
_SUBJECTS = {
    "dog": ["dog", "puppy", "hound"], "cat": ["cat", "kitten", "kitty"], "man": ["man", "guy", "gentleman"],
    "woman": ["woman", "lady", "girl"], "bird": ["bird", "sparrow", "parrot"], "horse": ["horse", "pony", "stallion"],
    "car": ["car", "automobile", "sedan"], "boat": ["boat", "ship", "sailboat"],
}
_PLACES = {
    "beach": ["beach", "shore", "sand"], "park": ["park", "lawn", "meadow"], "street": ["street", "road", "avenue"],
    "kitchen": ["kitchen", "counter", "stove"], "snow": ["snow", "slope", "ice"], "lake": ["lake", "pond", "river"],
}
_VERBS = ["sitting", "standing", "resting", "waiting", "playing", "moving"]
_TEMPLATES = [
    "a {s} {v} on the {p}", "the {s} is {v} near the {p}", "there is a {s} at the {p}",
    "a photo of a {s} {v} by the {p}", "one {s} {v} in the {p} today",
]


def _sample_split(rng: np.random.Generator, n_images: int, protos_s: np.ndarray, protos_p: np.ndarray,
                  regions: int, noise: float) -> tuple[np.ndarray, list[str]]:
    subjects, places = list(_SUBJECTS), list(_PLACES)
    s_idx = rng.integers(0, len(subjects), n_images)
    p_idx = rng.integers(0, len(places), n_images)
    dim = protos_s.shape[1]
    feats = np.empty((n_images, regions, dim), dtype=np.float32)
    half = regions // 2
    feats[:, :half] = protos_s[s_idx][:, None]
    feats[:, half:] = protos_p[p_idx][:, None]
    feats += noise * rng.standard_normal(feats.shape).astype(np.float32)
    feats = np.maximum(feats, 0.0)  # BUTD features are post-ReLU
    captions = []
    for s, p in zip(s_idx, p_idx, strict=True):
        for t in range(5):
            captions.append(_TEMPLATES[t].format(
                s=rng.choice(_SUBJECTS[subjects[s]]), p=rng.choice(_PLACES[places[p]]), v=rng.choice(_VERBS)))
    return feats, captions


def write_sample(out_dir: str | Path, seed: int = 0, regions: int = 4, dim: int = 32,
                 sizes: dict[str, int] | None = None) -> Path:
    """Write a small synthetic precomputed dataset (``train``/``dev``/``test``/``testall`` splits, 5
    captions per image) whose image features cluster by the words of their captions. Returns the folder."""
    out = Path(out_dir)
    sizes = sizes or {"train": 240, "dev": 40, "test": 40, "testall": 100}
    rng = np.random.default_rng(seed)
    protos_s = rng.gamma(1.0, 1.0, (len(_SUBJECTS), dim)).astype(np.float32)
    protos_p = rng.gamma(1.0, 1.0, (len(_PLACES), dim)).astype(np.float32)
    for split, n in sizes.items():
        feats, caps = _sample_split(rng, n, protos_s, protos_p, regions, noise=0.6)
        write_precomp(out, split, feats, caps, [f"{split}_{i:05d}" for i in range(n)])
    (out / "README.txt").write_text(
        "Synthetic zsk retrieve sample in the precomputed (SCAN/BUTD) layout: {split}_caps.txt (5 captions per\n"
        "image), {split}_ims.npy (images x regions x dim float32), {split}_ids.txt. Generated by\n"
        "`zsk retrieve sample`.\n")
    return out
