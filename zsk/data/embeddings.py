"""Word vectors in the GloVe text format (``word v1 v2 ... vD`` per line), and phrase/synset averaging.

GloVe 6B (Pennington et al., 2014) is what DGP and GCNZ use for their graph's input features. Parsing
the 400K-word file takes a while, so :func:`load_glove` keeps the parsed table in the zsk cache keyed by
the file's path, size and modification time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsk.core.cache import Cache, code_version, default_cache, file_fingerprint
from zsk.core.errors import ZskError


@dataclass
class WordVectors:
    """A vocabulary and its vectors (rows of ``vectors`` follow ``words``)."""

    words: list[str]
    vectors: np.ndarray  # (V, D) float32

    def __post_init__(self) -> None:
        self._index = {w: i for i, w in enumerate(self.words)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def get(self, word: str) -> np.ndarray | None:
        """The vector of ``word`` or None when it is out of vocabulary."""
        i = self._index.get(word)
        return None if i is None else self.vectors[i]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_glove(path: str | Path, dim: int | None = None) -> WordVectors:
    """Parse a GloVe text file; every line must carry the same number of values (``dim`` if given).

    The word is everything before the last D fields, so tokens with spaces (GloVe 840B) survive. A
    word2vec text header (``<count> <dim>``, as gensim writes) is read as the dimension and skipped. A line
    with fewer values than D, or whose word is followed by more than D numbers, is a ``ZskError`` naming
    the file and line (an embedding dimension mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise ZskError(f"word vectors not found: {path} (a GloVe text file, 'word v1 ... vD' per line, "
                       f"e.g. glove.6B.300d.txt; set model.word_vectors)")
    words: list[str] = []
    rows: list[np.ndarray] = []
    first = True
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip()
            if not line:
                continue
            parts = line.split(" ")
            if first:
                first = False
                if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():  # word2vec header
                    header = int(parts[1])
                    if dim is not None and header != dim:
                        raise ZskError(f"{path}:{lineno}: the header says {header}-d vectors, expected {dim}-d "
                                       f"(embedding dimension mismatch)")
                    dim = header
                    continue
            if dim is None:
                # the first line fixes D: the longest numeric tail
                k = len(parts) - 1
                while k > 0 and _is_number(parts[k]):
                    k -= 1
                dim = len(parts) - 1 - k
                if dim < 1:
                    raise ZskError(f"{path}:{lineno}: not in GloVe format ('word v1 ... vD')")
            if len(parts) < dim + 1:
                raise ZskError(f"{path}:{lineno}: {len(parts) - 1} values where the file's dimension is {dim} "
                               f"(embedding dimension mismatch; is the file truncated?)")
            if len(parts) > dim + 1 and all(_is_number(p) for p in parts[1:]):
                raise ZskError(f"{path}:{lineno}: {len(parts) - 1} values where the file's dimension is {dim} "
                               f"(embedding dimension mismatch)")
            try:
                vec = np.asarray(parts[-dim:], dtype=np.float32)
            except ValueError:
                raise ZskError(f"{path}:{lineno}: non-numeric value in a GloVe vector") from None
            if not np.isfinite(vec).all():
                raise ZskError(f"{path}:{lineno}: NaN or infinite value in the vector of {' '.join(parts[:-dim])!r}")
            words.append(" ".join(parts[:-dim]))
            rows.append(vec)
    if not rows:
        raise ZskError(f"word vectors file {path} is empty")
    return WordVectors(words=words, vectors=np.stack(rows).astype(np.float32))


def load_glove(path: str | Path, cache: Cache | None = None) -> WordVectors:
    """:func:`read_glove` through the zsk cache (keyed by the file's fingerprint)."""
    path = Path(path)
    if not path.is_file():
        return read_glove(path)  # raises the clear error
    cache = cache or default_cache()
    value = cache.get_or_compute("glove", {"file": file_fingerprint(path), "code": code_version()},
                                 lambda: _as_storable(read_glove(path)))
    return WordVectors(words=list(value["words"]), vectors=np.asarray(value["vectors"], dtype=np.float32))


def _as_storable(wv: WordVectors) -> dict:
    return {"words": wv.words, "vectors": wv.vectors}


def word_vector(wv: WordVectors, word: str) -> np.ndarray | None:
    """One word, lower-cased; when absent, the mean of its '-'-split sub-words that are present."""
    word = word.lower()
    v = wv.get(word)
    if v is not None:
        return v
    if "-" in word:
        subs = [s for s in (wv.get(p) for p in word.split("-") if p) if s is not None]
        if subs:
            return np.mean(subs, axis=0)
    return None


def phrase_vector(wv: WordVectors, lemma: str) -> np.ndarray | None:
    """A (multi-word) lemma: the mean of its '_'- or space-split words that are found (spec "Input
    features"); None when none is."""
    found = [v for v in (word_vector(wv, w) for w in lemma.replace(" ", "_").split("_") if w) if v is not None]
    return np.mean(found, axis=0) if found else None


def synset_vector(wv: WordVectors, lemmas: Sequence[str]) -> np.ndarray:
    """A synset: the mean over its lemmas that have a vector; a zero vector when none has."""
    found = [v for v in (phrase_vector(wv, lemma) for lemma in lemmas) if v is not None]
    return np.mean(found, axis=0).astype(np.float32) if found else np.zeros(wv.dim, dtype=np.float32)


def l2_normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


def embed_synsets(wv: WordVectors, lemma_lists: Sequence[Sequence[str]], normalize: bool = True) -> np.ndarray:
    """One vector per node from its lemma names, rows L2-normalised (DGP's graph input X)."""
    x = np.stack([synset_vector(wv, lemmas) for lemmas in lemma_lists]) if lemma_lists else np.zeros((0, wv.dim))
    return l2_normalize_rows(x) if normalize else x.astype(np.float32)
