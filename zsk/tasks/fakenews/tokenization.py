"""Tokenizers: pretrained (HF id / local dir), built locally from the training texts, or restored
from a checkpoint. A tokenizer travels inside checkpoints as the text of its saved files, so a
checkpoint alone is enough to predict (no hub access, no run directory)."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable
from pathlib import Path

from zsk.core.errors import ZskError
from zsk.tasks.fakenews import hf_compat  # noqa: F401  (must run before transformers models load)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int, lowercase: bool = True):
    """A BERT-style WordPiece tokenizer trained on `texts` (offline demos and tests)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), min_frequency=1,
                                       show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
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
