"""Node vectors from lemma names, looked up as DGP's ``materials/glove.py`` does.

For each lemma of a synset: the whole lemma as written (case kept, e.g. ``hot_dog``, ``Persian_cat``);
when absent, its ``_``/space-split terms, each looked up as written and, when absent, as the mean of its
``-``-split sub-terms that are found; the lemma is the mean of the terms found. The synset is the mean of
its lemmas that were found, a zero vector when none was. GloVe 6B is lower-case, so a capitalised word
(a proper noun such as ``Persian``) is not found and drops out, as in the official graph files.
``case="lower"`` (a zsk option, ``model.lemma_case: lower``) folds every lookup to lower case.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zsk.data.embeddings import WordVectors, l2_normalize_rows


def _term_vector(wv: WordVectors, term: str, fold) -> np.ndarray | None:
    v = wv.get(fold(term))
    if v is not None:
        return v
    subs = [s for s in (wv.get(fold(p)) for p in term.split("-")) if s is not None]
    if not subs:
        return None
    acc = np.zeros(wv.dim, dtype=np.float32)
    for s in subs:
        acc += s
    return acc / np.float32(len(subs))


def lemma_vector(wv: WordVectors, lemma: str, case: str = "keep") -> np.ndarray | None:
    """One lemma: the whole lemma first, then the mean of its terms found; None when nothing is found."""
    fold = str.lower if case == "lower" else (lambda s: s)
    v = wv.get(fold(lemma))
    if v is not None:
        return v
    found = [t for t in (_term_vector(wv, term, fold) for term in lemma.replace("_", " ").split(" "))
             if t is not None]
    if not found:
        return None
    acc = np.zeros(wv.dim, dtype=np.float32)
    for t in found:
        acc += t
    return acc / np.float32(len(found))


def synset_vector(wv: WordVectors, lemmas: Sequence[str], case: str = "keep") -> np.ndarray:
    """The mean over a synset's lemmas that have a vector; zeros when none has."""
    found = [v for v in (lemma_vector(wv, lemma, case) for lemma in lemmas) if v is not None]
    if not found:
        return np.zeros(wv.dim, dtype=np.float32)
    acc = np.zeros(wv.dim, dtype=np.float32)
    for v in found:
        acc += v
    return acc / np.float32(len(found))


def embed_lemmas(wv: WordVectors, lemma_lists: Sequence[Sequence[str]], case: str = "keep",
                 normalize: bool = True) -> np.ndarray:
    """One vector per node (rows L2-normalised unless ``normalize`` is false)."""
    if not lemma_lists:
        return np.zeros((0, wv.dim), dtype=np.float32)
    x = np.stack([synset_vector(wv, lemmas, case) for lemmas in lemma_lists]).astype(np.float32)
    return l2_normalize_rows(x) if normalize else x
