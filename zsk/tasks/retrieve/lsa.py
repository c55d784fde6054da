"""Description semantics by latent semantic analysis (LSEH step 1, Gong & Cosma 2023).

Training captions are cleaned (letters and ``#`` only, lower case, NLTK English stop-words removed,
Porter-stemmed), weighted by TF-IDF and projected by truncated SVD to ``rank`` (400) dimensions. The
``N_captions x rank`` matrix ``U Sigma`` gives each training caption a semantic vector; LSEH turns
dot products of these vectors into per-pair margins. Computed once per corpus and kept in the zsk
cache, keyed by the caption file and every LSA setting. :func:`training_lsa` gives the rows of a
recipe's training split; :func:`write_lsa_file` (``zsk retrieve lsa``) writes them as ``train_svd.txt``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zsk.core.cache import code_version, default_cache, file_fingerprint
from zsk.core.progress import log, warn
from zsk.data.captions import PrecompSplit, write_lsa_matrix
from zsk.tasks.retrieve.data import RawSplit, load_split

if TYPE_CHECKING:
    from zsk.tasks.retrieve.config import Config

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
    """LSEH step 1 cleaning (official code): keep letters and '#', lower-case, drop stop-words, Porter-stem, re-join."""
    tokens = _NON_WORD.sub(" ", text).lower().split()
    return " ".join(stemmer.stem(t) for t in tokens if t not in stop)


@dataclass(frozen=True)
class LsaSettings:
    """TF-IDF + truncated SVD settings (LSEH step 1; defaults are the official code's)."""

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


def training_lsa(cfg: Config, split: PrecompSplit | RawSplit) -> np.ndarray:
    """LSA rows of the training captions: from ``data.lsa_file`` or computed once and cached (Step 1)."""
    from zsk.data.captions import read_lsa_matrix

    if cfg.data.lsa_file:
        return read_lsa_matrix(cfg.data.lsa_file, split.num_captions)
    settings = LsaSettings(cfg.data.lsa_rank, cfg.data.lsa_iter, cfg.data.lsa_seed)
    if isinstance(split, PrecompSplit):
        return lsa_for_caption_file(split.caps_path, split.captions, settings)
    return _raw_lsa(cfg, split, settings)


def _raw_lsa(cfg: Config, split: RawSplit, settings: LsaSettings) -> np.ndarray:
    key = {"source": file_fingerprint(split.source), "split": cfg.data.train_split, "restval": cfg.data.use_restval,
           "settings": asdict(settings), "code": code_version(), "producer": "retrieve.lsa.raw.v1"}
    return default_cache().get_or_compute("retrieve-lsa", key, lambda: fit_lsa(split.captions, settings))


def write_lsa_file(cfg: Config, out: Path | None = None) -> dict:
    """Compute (or fetch from the cache) the training captions' LSA and write ``train_svd.txt`` (Step 1.5)."""
    from zsk.core.errors import ZskError
    from zsk.core.io import atomic_path

    if out is not None and Path(out).is_dir():
        raise ZskError(f"--out {out} is a folder; give the file to write (e.g. {Path(out) / 'train_svd.txt'})")
    split = load_split(cfg.data, cfg.data.train_split)
    lsa = training_lsa(cfg, split)
    if out is None:
        base = split.folder if isinstance(split, PrecompSplit) else Path(cfg.data.root)
        out = base / f"{cfg.data.train_split}_svd.txt"
    try:
        with atomic_path(out) as tmp:
            write_lsa_matrix(tmp, lsa)
    except OSError as e:
        raise ZskError(f"cannot write the LSA file {out}: {e}") from None
    return {"file": str(out), "rows": int(lsa.shape[0]), "rank": int(lsa.shape[1])}
