"""CONSTRAINT 2021 (and generic CSV/TSV/JSONL) corpora, tokenised per branch, plus the sample corpus.

CONSTRAINT 2021 English (Patwa et al., arXiv 2011.03327; github parthpatwa/covid19-fake-news-dectection):
`Constraint_Train.csv` (6,420), `Constraint_Val.csv` (2,140) and `english_test_with_labels.csv`
(2,140), columns `id, tweet, label`, labels `real` / `fake`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from zsk.core.cache import code_version, default_cache
from zsk.core.errors import ZskError
from zsk.data.tables import TextSamples, read_texts, write_table
from zsk.tasks.fakenews.config import Config, DataConfig
from zsk.tasks.fakenews.preprocess import clean_texts
from zsk.tasks.fakenews.tokenization import tokenizer_fingerprint

if TYPE_CHECKING:
    from zsk.tasks.fakenews.model import Branch

SPLIT_FILES = {"train": "train_file", "val": "val_file", "test": "test_file"}


@dataclass
class Corpus:
    """One split: raw texts (for output), cleaned texts (for the model), labels, ids, classes."""

    path: str
    texts: list[str]
    clean: list[str]
    labels: list[int] | None
    ids: list[str] | None
    classes: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def split_path(cfg: DataConfig, split: str) -> Path:
    """File of a split under `data.root`."""
    if split not in SPLIT_FILES:
        raise ZskError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_FILES)}")
    name = getattr(cfg, SPLIT_FILES[split])
    path = Path(name)
    return path if path.is_absolute() else Path(cfg.root) / path


def corpus_from_samples(s: TextSamples, cfg: DataConfig) -> Corpus:
    """Clean the texts of a read table (spec: Preprocessing)."""
    return Corpus(s.path, s.texts, clean_texts(s.texts, cfg.preprocess), s.labels, s.ids, s.classes)


def load_split(cfg: DataConfig, split: str, classes: list[str] | None = None) -> Corpus:
    """Read and clean one labelled split; classes from `data.classes`, else from the train file."""
    path = split_path(cfg, split)
    if not path.is_file():
        raise ZskError(f"{path}: {split} file not found; set data.root (and data.{SPLIT_FILES[split]}) "
                       f"or write the sample corpus with `zsk fakenews sample DIR`")
    samples = read_texts(path, cfg.text_column, cfg.label_column, cfg.id_column,
                         classes=classes or cfg.classes or None, label_map=cfg.label_map,
                         fmt=cfg.format, encoding=cfg.encoding)
    if len(samples.classes) < 2:
        raise ZskError(f"{path}: found only the label(s) {samples.classes}; a classifier needs at least two classes")
    if split == "train" and samples.labels is not None:
        # A classifier that sees one class cannot learn the task (it predicts that class everywhere);
        # no fakenews workflow trains on one class (the fusion MLP trains on the same file), so refuse.
        # Validation and test files of one class are only scored and stay allowed.
        seen = sorted(set(samples.labels))
        if len(seen) < 2:
            only = ", ".join(repr(samples.classes[i]) for i in seen) or "none"
            missing = ", ".join(repr(c) for i, c in enumerate(samples.classes) if i not in seen)
            raise ZskError(f"{path}: every training row has the label {only} (no {missing}); a classifier "
                           f"trained on one class cannot learn the task: give a training file with every class")
    return corpus_from_samples(samples, cfg)


def encode_texts(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise to a padded int32 matrix of ids (N, L) and the lengths (N,), L <= max_length."""
    ids: list[list[int]] = []
    for i in range(0, len(texts), 1024):
        ids.extend(tokenizer(texts[i:i + 1024], truncation=True, max_length=max_length,
                             padding=False)["input_ids"])
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    width = int(lengths.max()) if len(ids) else 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.full((len(ids), width), pad, dtype=np.int32)
    for i, row in enumerate(ids):
        out[i, : len(row)] = row
    return {"input_ids": torch.from_numpy(out), "lengths": torch.from_numpy(lengths)}


def encode_cached(tokenizer, texts: list[str], max_length: int, fingerprint: str, use_cache: bool = True) -> dict:
    """`encode_texts` through the zsk cache, keyed by the tokenizer, the texts and max_length."""
    if not use_cache:
        return encode_texts(tokenizer, texts, max_length)
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
    parts = {"tokenizer": fingerprint, "texts": digest, "n": len(texts), "max_length": max_length,
             "code": code_version(), "producer": "fakenews.encode_texts/1"}
    return default_cache().get_or_compute("fakenews-tokens", parts,
                                          lambda: encode_texts(tokenizer, texts, max_length))


class TokenizedTexts(Dataset):
    """Samples of one split tokenised for every branch; items are indices, batches are built by
    `collate` with vectorised slicing and trimmed to the longest sequence in the batch."""

    def __init__(self, encodings: dict[str, dict[str, torch.Tensor]], labels: list[int] | None,
                 pad_ids: dict[str, int]) -> None:
        self.encodings = encodings
        self.labels = torch.tensor(labels, dtype=torch.long) if labels is not None else None
        self.pad_ids = pad_ids
        sizes = {len(e["lengths"]) for e in encodings.values()}
        if len(sizes) != 1:
            raise ValueError("branches tokenised different numbers of samples")
        self.n = sizes.pop()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict:
        """Batch {"index", "label"?, "inputs": {branch: {input_ids, attention_mask}}}."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        inputs = {}
        for name, enc in self.encodings.items():
            lengths = enc["lengths"][idx]
            width = max(int(lengths.max()), 1)
            ids = enc["input_ids"][idx, :width].long()
            mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
            inputs[name] = {"input_ids": ids, "attention_mask": mask}
        batch = {"index": idx, "inputs": inputs}
        if self.labels is not None:
            batch["label"] = self.labels[idx]
        return batch


def tokenize_corpus(branches: Mapping[str, Branch], texts: list[str], labels: list[int] | None, cfg: Config) -> TokenizedTexts:
    """Tokenise cleaned texts for every branch (through the zsk cache when data.cache is on)."""
    encodings = {
        n: encode_cached(b.tokenizer, texts, cfg.data.max_length, tokenizer_fingerprint(b.tokenizer), cfg.data.cache)
        for n, b in branches.items()
    }
    pads = {n: int(b.tokenizer.pad_token_id or 0) for n, b in branches.items()}
    return TokenizedTexts(encodings, labels, pads)


def concat_datasets(a: TokenizedTexts, b: TokenizedTexts) -> TokenizedTexts:
    """One dataset holding the samples of `a` then `b` (padding widened as needed)."""
    encodings = {}
    for n in a.encodings:
        x, y = a.encodings[n], b.encodings[n]
        width = max(x["input_ids"].shape[1], y["input_ids"].shape[1])
        pad = a.pad_ids[n]

        def widen(t: Tensor, width: int = width, pad: int = pad) -> Tensor:
            return F.pad(t, (0, width - t.shape[1]), value=pad)

        encodings[n] = {"input_ids": torch.cat([widen(x["input_ids"]), widen(y["input_ids"])]),
                        "lengths": torch.cat([x["lengths"], y["lengths"]])}
    labels = torch.cat([a.labels, b.labels]).tolist() if a.labels is not None and b.labels is not None else None
    return TokenizedTexts(encodings, labels, a.pad_ids)


class FeatureSet(Dataset):
    """Precomputed fusion inputs (the frozen branches' outputs) with labels: the fusion stage's data."""

    def __init__(self, features: Tensor, labels: Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict:
        """Batch {"index", "fused", "label"}."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"index": idx, "fused": self.features[idx], "label": self.labels[idx]}


# ----------------------------------------------------------------------------- sample corpus

_REAL_CUES = ["ministry", "confirmed", "tests", "recovered", "official", "guidelines", "hospital", "dashboard",
              "statistics", "authorities", "surveillance", "trial", "reported", "cases", "health"]
_FAKE_CUES = ["miracle", "cure", "hoax", "secret", "5g", "conspiracy", "garlic", "bioweapon", "exposed", "shocking",
              "bleach", "microchip", "cover-up", "banned", "truth"]
_SHARED = ["covid-19", "covid19", "coronavirus", "pandemic", "lockdown", "vaccine", "people", "india", "world",
           "government", "news", "today", "new", "virus", "mask", "IndiaFightsCorona"]
_STOP = ["the", "is", "a", "of", "and", "in", "to", "for", "this", "that", "on", "with"]
_DECOR = ["😱", "!!!", "🙏", "#", "@WHO", "...", "?", "➡️", "&amp;", ":"]


def _sample_text(rng: random.Random, label: str) -> str:
    own, other = (_REAL_CUES, _FAKE_CUES) if label == "real" else (_FAKE_CUES, _REAL_CUES)
    words = rng.sample(own, 3) + rng.sample(_SHARED, 3) + rng.sample(_STOP, 3)
    if rng.random() < 0.2:
        words.append(rng.choice(other))
    rng.shuffle(words)
    if rng.random() < 0.5:
        words.insert(rng.randrange(len(words) + 1), rng.choice(_DECOR))
    if rng.random() < 0.4:
        words.append(f"https://t.co/{''.join(rng.choices('abcdefghijkmnpqrstuvwxyz0123456789', k=10))}")
    if rng.random() < 0.3:
        words.insert(0, f"#{rng.choice(['IndiaFightsCorona', 'COVID19', 'Lockdown'])}")
    return " ".join(words)


SAMPLE_SIZES = {"Constraint_Train.csv": 320, "Constraint_Val.csv": 96, "english_test_with_labels.csv": 96}


def write_sample(out_dir: str | Path, seed: int = 0) -> dict[str, int]:
    """Write a small synthetic labelled corpus in the CONSTRAINT layout (id, tweet, label), plus a
    synonym-groups file for hard-example augmentation; deterministic for a given seed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts = {}
    next_id = 1
    for name, n in SAMPLE_SIZES.items():
        rows = []
        for i in range(n):
            label = "real" if (i % 2 == 0) != (rng.random() < 0.04) else "fake"  # ~52% real as in CONSTRAINT
            rows.append({"id": next_id, "tweet": _sample_text(rng, label), "label": label})
            next_id += 1
        write_table(out / name, rows, ["id", "tweet", "label"], fmt="csv")
        counts[name] = n
    (out / "synonyms.txt").write_text(
        "# one group of interchangeable words per line\n"
        "cure remedy treatment\nhoax fake fabrication\nconfirmed verified\nofficial authorised\n"
        "secret hidden\nshocking stunning\nvirus pathogen\npeople citizens\n", encoding="utf-8")
    return counts
