"""Token vocabulary expansion (spec: Token vocabulary expansion, CT-BERT branch).

Whole-word domain tokens are added to the tokenizer so that e.g. `covid-19` is one token rather
than `co ##vid - 19`; the encoder's embedding matrix grows by one row per added token. A new row
starts as the mean of the embeddings of the sub-words the original tokenizer split the word into
([reconstruction], default) or as a random normal row (option `random`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from zsk.tasks.fakenews.preprocess import words


def split_pieces(tokenizer, word: str) -> list[int]:
    """Ids of the sub-word pieces `tokenizer` splits `word` into (no special tokens)."""
    return list(tokenizer(word, add_special_tokens=False)["input_ids"])


def _normal_form(tokenizer, word: str) -> str:
    lower = bool(getattr(tokenizer, "do_lower_case", False)) or _lowercases(tokenizer)
    return word.lower() if lower else word


def _lowercases(tokenizer) -> bool:
    """Whether the tokenizer's normaliser lower-cases (BERT-uncased style)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    if normalizer is None:
        return False
    probe = "AbC"
    try:
        return normalizer.normalize_str(probe) == probe.lower()
    except Exception:  # noqa: BLE001 - exotic normalisers: assume cased
        return False


def frequent_multipiece_terms(
    tokenizer, texts: Iterable[str], n: int, min_count: int = 2, exclude: Sequence[str] = ()
) -> list[str]:
    """The `n` most frequent corpus words that `tokenizer` splits into two or more pieces (or maps
    to its unknown token: such words have no representation of their own either).

    Words are the whitespace words of the cleaned texts, put in the tokenizer's normal form
    (lower-cased for uncased tokenizers); ties are broken alphabetically so the choice is stable.
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_normal_form(tokenizer, w) for w in words(text))
    skip = set(exclude)
    chosen: list[str] = []
    for word, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if count < min_count or len(chosen) >= n:
            break
        if word in skip or not any(ch.isalnum() for ch in word):
            continue
        pieces = split_pieces(tokenizer, word)
        if len(pieces) >= 2 or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in pieces):
            chosen.append(word)
    return chosen


def expand_vocabulary(
    tokenizer, encoder: nn.Module, tokens: Sequence[str], init: str = "mean", std: float = 0.02
) -> list[str]:
    """Add `tokens` to `tokenizer` (those not already present), grow the encoder's input embeddings,
    and initialise the new rows; returns the tokens actually added (each added once).
    """
    vocab = tokenizer.get_vocab()
    todo: list[str] = []
    for t in tokens:
        t = _normal_form(tokenizer, t)
        if t and t not in vocab and t not in todo:
            todo.append(t)
    if not todo:
        return []
    pieces = {t: split_pieces(tokenizer, t) for t in todo}  # with the original vocabulary
    added = tokenizer.add_tokens(todo)
    if added != len(todo):
        raise RuntimeError(f"tokenizer added {added} of {len(todo)} new tokens")
    old_rows = encoder.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_rows:  # some checkpoints carry spare rows; never shrink
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = encoder.get_input_embeddings().weight
    with torch.no_grad():
        for t in todo:
            row = tokenizer.convert_tokens_to_ids(t)
            ids = [i for i in pieces[t] if i < old_rows and i != row]
            if init == "mean" and ids:
                weight[row] = weight[ids].mean(0)
            else:
                weight[row].normal_(0.0, std)
    return todo
