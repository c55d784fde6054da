"""Iterative hard-example augmentation (spec: Method, "Iterative hard-example augmentation").

After each evaluation round the misclassified samples of the pool are perturbed (1..max_edits words
deleted or replaced by a synonym) and appended to the training data. The paper's pool is training
AND validation samples, which leaks validation data into training: validation scores (and
checkpoint selection on them) are then optimistic, so keep a clean hold-out such as the test file.
"""

from __future__ import annotations

import random
from pathlib import Path

from zsk.core.errors import ZskError
from zsk.data.tables import decode_text


def load_synonyms(path: str | Path) -> dict[str, list[str]]:
    """Synonym groups, one group per line (words separated by spaces or commas; `#` comments).

    Every word of a group maps to the other words of that group (lower-cased).
    """
    p = Path(path)
    if not p.is_file():
        raise ZskError(f"{p}: synonym file not found (train.hard_examples.synonyms); give a text file with "
                       f"one group of synonyms per line, or null for deletion only")
    table: dict[str, list[str]] = {}
    for i, line in enumerate(decode_text(p.read_bytes(), str(p)).splitlines(), start=1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        group = list(dict.fromkeys(w.lower() for w in line.split()))
        if len(group) < 2:
            raise ZskError(f"{p}, line {i}: a synonym group needs at least two words, got {line!r}")
        for w in group:
            table.setdefault(w, [])
            table[w].extend(x for x in group if x != w and x not in table[w])
    if not table:
        raise ZskError(f"{p}: no synonym groups found")
    return table


def perturb(text: str, rng: random.Random, synonyms: dict[str, list[str]] | None = None, max_edits: int = 2) -> str:
    """Delete or synonym-replace 1..max_edits words of `text`; never deletes its last word.

    A word with synonyms is replaced (one chosen at random) with probability 1/2, otherwise deleted;
    without a synonym table every edit is a deletion.
    """
    words = text.split()
    if not words:
        return text
    edits = rng.randint(1, max(1, max_edits))
    for _ in range(edits):
        j = rng.randrange(len(words))
        options = (synonyms or {}).get(words[j].lower())
        if options and rng.random() < 0.5:
            words[j] = rng.choice(options)
        elif len(words) > 1:
            del words[j]
        elif options:
            words[j] = rng.choice(options)
    return " ".join(words)


def hard_examples(texts: list[str], labels: list[int], predictions: list[int], rng: random.Random,
                  synonyms: dict[str, list[str]] | None, max_edits: int) -> tuple[list[str], list[int]]:
    """Perturbed copies of the misclassified samples, with their true labels."""
    out_texts, out_labels = [], []
    for t, y, p in zip(texts, labels, predictions, strict=True):
        if y != p:
            out_texts.append(perturb(t, rng, synonyms, max_edits))
            out_labels.append(y)
    return out_texts, out_labels
