"""LSEH step 1: caption cleaning, TF-IDF + truncated SVD, caching."""

from __future__ import annotations

import numpy as np
import pytest
from nltk.stem import PorterStemmer

from zsk.data.captions import read_precomp
from zsk.tasks.retrieve import lsa as lsa_mod
from zsk.tasks.retrieve.data import write_sample
from zsk.tasks.retrieve.lsa import (
    LsaSettings,
    clean_caption,
    english_stopwords,
    fit_lsa,
    lsa_for_caption_file,
)


def test_clean_caption() -> None:
    # non-letters except '#' become spaces, lower case, stop-words (a, s, on, the) dropped, Porter stems
    out = clean_caption("A Dog's ball, #1 running quickly on the beaches!", english_stopwords(), PorterStemmer())
    assert out == "dog ball # run quickli beach"


def test_lsa_shape_and_semantics(tmp_path) -> None:
    split = read_precomp(write_sample(tmp_path, sizes={"train": 60}), "train")
    vecs = fit_lsa(split.captions, LsaSettings(rank=400, n_iter=5))
    assert vecs.shape == (300, 400) and vecs.dtype == np.float32
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(1e-8)
    cos = unit @ unit.T
    img = np.arange(300) // 5
    same = (img[:, None] == img[None, :]) & ~np.eye(300, dtype=bool)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 300, 2000), rng.integers(0, 300, 2000)
    # captions of the same image are semantically closer than random caption pairs
    assert cos[same].mean() > 2 * cos[a, b].mean() and cos[same].mean() > cos[a, b].mean() + 0.1


def test_lsa_matches_tfidf_geometry_at_full_rank() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    caps = ["red car on a road", "blue car near the road", "a cat sleeps", "the cat eats fish", "fish in a lake"]
    vecs = fit_lsa(caps, LsaSettings(rank=400, n_iter=20))
    stop, stem = english_stopwords(), PorterStemmer()
    tfidf = TfidfVectorizer(stop_words="english").fit_transform([clean_caption(c, stop, stem) for c in caps]).toarray()
    # U Sigma keeps inner products of the TF-IDF rows when (almost) no rank is dropped
    gram_t, gram_l = tfidf @ tfidf.T, vecs @ vecs.T
    assert np.corrcoef(gram_t.ravel(), gram_l.ravel())[0, 1] > 0.95


def test_lsa_is_cached_per_file_and_settings(tmp_path, monkeypatch) -> None:
    folder = write_sample(tmp_path, sizes={"train": 20})
    split = read_precomp(folder, "train")
    first = lsa_for_caption_file(split.caps_path, split.captions, LsaSettings(rank=8, n_iter=3))

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(lsa_mod, "fit_lsa", boom)
    again = lsa_for_caption_file(split.caps_path, split.captions, LsaSettings(rank=8, n_iter=3))
    np.testing.assert_array_equal(first, again)
    with pytest.raises(AssertionError, match="recomputed"):
        lsa_for_caption_file(split.caps_path, split.captions, LsaSettings(rank=9, n_iter=3))
