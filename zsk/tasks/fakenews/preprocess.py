"""Text preprocessing of the paper: strip URLs, symbols / emoji and English stop-words (spec: Preprocessing)."""

from __future__ import annotations

import re

from zsk.tasks.fakenews.config import PreprocessConfig
from zsk.tasks.fakenews.stopwords import ENGLISH_STOP_WORDS

URL_RE = re.compile(r"(?:https?://|ftp://|www\.)\S+", re.IGNORECASE)
# Anything that is not a unicode letter/digit or whitespace (underscore counts as a symbol here);
# emoji and other unicode symbols fall in this class.
SYMBOL_RE = re.compile(r"[^\w\s-]|_")
SYMBOL_WITH_HYPHEN_RE = re.compile(r"[^\w\s]|_")
# A hyphen that does not join two alphanumeric characters ("covid-19" keeps it, " - " does not).
LOOSE_HYPHEN_RE = re.compile(r"(?<![^\W_])-|-(?![^\W_])")
SPACES_RE = re.compile(r"\s+")


def english_stopwords() -> frozenset[str]:
    """English stop-words (the Glasgow IR list that scikit-learn ships)."""
    return ENGLISH_STOP_WORDS


def clean_text(text: str, cfg: PreprocessConfig) -> str:
    """Apply the paper's cleaning steps in order: URLs, symbols/emoji, stop-words, whitespace."""
    if cfg.strip_urls:
        text = URL_RE.sub(" ", text)
    if cfg.strip_symbols:
        if cfg.keep_hyphens:
            text = SYMBOL_RE.sub(" ", text)
            text = LOOSE_HYPHEN_RE.sub(" ", text)
        else:
            text = SYMBOL_WITH_HYPHEN_RE.sub(" ", text)
    if cfg.lowercase:
        text = text.lower()
    words = text.split()
    if cfg.strip_stopwords:
        stop = english_stopwords()
        kept = [w for w in words if w.lower() not in stop]
        words = kept if kept else words  # never empty a text that only has stop-words
    return " ".join(words)


def clean_texts(texts: list[str], cfg: PreprocessConfig) -> list[str]:
    """`clean_text` over a list."""
    return [clean_text(t, cfg) for t in texts]


def words(text: str) -> list[str]:
    """Whitespace words of a cleaned text (used for vocabulary counts and augmentation)."""
    return SPACES_RE.split(text.strip()) if text.strip() else []
