"""Tokenizers: pretrained (HF id / local dir), built locally from the training texts, or restored
from a checkpoint. A tokenizer travels inside checkpoints as the text of its saved files, so a
checkpoint alone is enough to predict (no hub access, no run directory)."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable
from pathlib import Path

from zsk.core.errors import ZskError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int, lowercase: bool = True):
    """A BERT-style WordPiece tokenizer whose vocabulary comes from `texts` (offline demos and tests).

    The vocabulary is deterministic (the same texts always give the same ids, on every rank and
    after `--resume`): the special tokens, every character seen (as a word start and as a `##`
    continuation, so no word becomes [UNK]), then the most frequent whole words (ties broken
    alphabetically) up to `vocab_size`. Words outside it are split into characters.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in counts for c in w})
    vocab_list = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
    seen = set(vocab_list)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab_list) >= vocab_size:
            break
        if word not in seen:
            vocab_list.append(word)
            seen.add(word)
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", do_lower_case=lowercase,
    )


def load_tokenizer(source: str, option: str):
    """A pretrained tokenizer from a HF id or local directory (clear exit-2 error when absent)."""
    from zsk.models.hf import load_hf_tokenizer

    tok = load_hf_tokenizer(source, option=option)
    if tok.pad_token is None:
        raise ZskError(f"tokenizer {source!r} has no padding token; pick a tokenizer with one ({option})")
    return tok


def tokenizer_files(tokenizer) -> dict[str, str]:
    """The tokenizer's `save_pretrained` files as {name: text} (checkpoint-safe primitives)."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        out = {}
        for p in sorted(Path(d).rglob("*")):
            if p.is_file():
                try:
                    out[str(p.relative_to(d))] = p.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    raise ZskError(f"tokenizer file {p.name} is binary (sentencepiece model?); "
                                   f"use a tokenizer with a fast tokenizer.json") from None
        return out


def tokenizer_from_files(files: dict[str, str], source: str = "checkpoint"):
    """Rebuild a tokenizer from `tokenizer_files` output."""
    from transformers import AutoTokenizer

    if not files:
        raise ZskError(f"{source} carries no tokenizer files; it was not written by `zsk fakenews train`")
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            path = Path(d) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        try:
            return AutoTokenizer.from_pretrained(d)
        except (OSError, ValueError) as e:
            raise ZskError(f"{source}: cannot rebuild the tokenizer: {str(e).splitlines()[0]}") from None


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of the tokenizer's vocabulary and rules (for cache keys)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    blob += repr(sorted((k, str(v)) for k, v in getattr(tokenizer, "added_tokens_decoder", {}).items()))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
