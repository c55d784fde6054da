"""Description semantics by latent semantic analysis (LSEH step 1, spec "Step 1").

Training captions are cleaned (letters and ``#`` only, lower case, NLTK English stop-words removed,
Porter-stemmed), weighted by TF-IDF and projected by truncated SVD to ``rank`` (400) dimensions. The
``N_captions x rank`` matrix ``U Sigma`` gives each training caption a semantic vector; LSEH turns
dot products of these vectors into per-pair margins. Computed once per corpus and kept in the zsk
cache, keyed by the caption file and every LSA setting.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from zsk.core.cache import code_version, default_cache, file_fingerprint
from zsk.core.progress import log, warn

# NLTK's English stop-word list (nltk.corpus.stopwords, 179 words). Kept here so the LSA runs without
# downloading NLTK corpora; when the corpus is installed it is used instead.
_NLTK_ENGLISH_STOPWORDS = """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he
him his himself she she's her hers herself it it's its itself they them their theirs themselves what
which who whom this that that'll these those am is are was were be been being have has had having do
does did doing a an the and but if or because as until while of at by for with about against between
into through during before after above below to from up down in out on off over under again further
then once here there when where why how all any both each few more most other some such no nor not
only own same so than too very s t can will just don don't should should've now d ll m o re ve y ain
aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't
ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't
won won't wouldn wouldn't
""".split()

_NON_WORD = re.compile(r"[^a-zA-Z#]")


def english_stopwords() -> frozenset[str]:
    """NLTK's English stop-words (the installed corpus when present, else the embedded copy)."""
    try:
        from nltk.corpus import stopwords

        return frozenset(stopwords.words("english"))
    except LookupError:
        return frozenset(_NLTK_ENGLISH_STOPWORDS)


def clean_caption(text: str, stop: frozenset[str], stemmer) -> str:
    """Spec step 1.1-1.2: keep letters and '#', lower-case, drop stop-words, Porter-stem, re-join."""
    tokens = _NON_WORD.sub(" ", text).lower().split()
    return " ".join(stemmer.stem(t) for t in tokens if t not in stop)


@dataclass(frozen=True)
class LsaSettings:
    """TF-IDF + truncated SVD settings (spec step 1.3-1.4; defaults are the official code's)."""

    rank: int = 400
    n_iter: int = 100
    random_state: int = 122


def fit_lsa(captions: list[str], settings: LsaSettings = LsaSettings()) -> np.ndarray:
    """``U Sigma`` of the TF-IDF matrix of the cleaned captions: an ``N x rank`` float32 matrix.

    When the vocabulary is smaller than ``rank`` (tiny corpora) the rank is reduced to
    ``vocabulary - 1`` and the result is zero-padded to ``rank`` columns, which leaves every dot
    product unchanged.
    """
    from nltk.stem import PorterStemmer
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    stop = english_stopwords()
    stemmer = PorterStemmer()
    cleaned = [clean_caption(c, stop, stemmer) for c in captions]
    tfidf = TfidfVectorizer(stop_words="english", smooth_idf=True).fit_transform(cleaned)
    n_terms = tfidf.shape[1]
    rank = min(settings.rank, n_terms - 1, tfidf.shape[0] - 1)
    if rank < settings.rank:
        warn(f"LSA: {n_terms} terms / {tfidf.shape[0]} captions, rank reduced from {settings.rank} to {rank}")
    if rank < 1:
        return np.zeros((len(captions), settings.rank), dtype=np.float32)
    svd = TruncatedSVD(
        n_components=rank, algorithm="randomized", n_iter=settings.n_iter, random_state=settings.random_state
    )
    us = svd.fit_transform(tfidf).astype(np.float32)
    if rank < settings.rank:
        us = np.pad(us, ((0, 0), (0, settings.rank - rank)))
    return us


def lsa_for_caption_file(caps_path: str | Path, captions: list[str], settings: LsaSettings) -> np.ndarray:
    """The LSA matrix of a training caption file, from the zsk cache or computed and stored."""
    key = {"captions": file_fingerprint(caps_path), "settings": asdict(settings), "code": code_version(),
           "producer": "retrieve.lsa.v1"}

    def compute() -> np.ndarray:
        log(f"LSA: TF-IDF + SVD (rank {settings.rank}) over {len(captions)} captions of {caps_path}")
        return fit_lsa(captions, settings)

    return default_cache().get_or_compute("retrieve-lsa", key, compute)
