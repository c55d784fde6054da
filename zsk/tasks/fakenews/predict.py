"""``zsk fakenews predict``: label texts from CSV/TSV/JSONL/text files or lines on stdin, one result
row per text ({"id"?, "text", "label", "score"}), also written to ``OUT/predictions.jsonl``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from zsk.core.device import autocast, autocast_dtype
from zsk.core.io import StdinInput
from zsk.core.progress import log, to_json
from zsk.core.task import Loaded
from zsk.core.trainer import move_to
from zsk.data.tables import decode_text, read_table, select_texts, table_format
from zsk.tasks.fakenews.config import Config
from zsk.tasks.fakenews.data import TokenizedTexts, encode_texts
from zsk.tasks.fakenews.preprocess import clean_texts

STDIN = "<stdin>"


def read_inputs(item: Path | StdinInput, cfg: Config, fmt: str = "auto") -> Iterator[tuple[str | None, str]]:
    """(id, text) pairs from a CSV/TSV/JSONL/text file (format by suffix unless ``fmt`` names one),
    or from stdin: plain lines with ``fmt`` auto or lines, else a table in that format."""
    if isinstance(item, StdinInput):
        resolved = "lines" if fmt == "auto" else table_format(STDIN, fmt)
        table = read_table(STDIN, resolved, text=decode_text(item.data, STDIN))
    else:
        resolved = table_format(item, fmt)
        table = read_table(item, resolved, cfg.data.encoding)
    if resolved == "lines":
        for row in table.rows:
            yield None, row["text"]
        return
    samples = select_texts(table, cfg.data.text_column, None, cfg.data.id_column, require_labels=False)
    for j, text in enumerate(samples.texts):
        yield (samples.ids[j] if samples.ids is not None else None), text


def predict_texts(loaded: Loaded, chunk: list[tuple[str | None, str]]) -> Iterator[dict[str, Any]]:
    """Labels and scores of one batch of (id, text) pairs: cleaned, tokenised per branch, one forward pass."""
    cfg: Config = loaded.cfg
    classes: list[str] = loaded.parts["classes"]
    branches = loaded.parts["branches"]
    texts = [t for _, t in chunk]
    clean = clean_texts(texts, cfg.data.preprocess)
    encodings = {n: encode_texts(b.tokenizer, clean, cfg.data.max_length) for n, b in branches.items()}
    ds = TokenizedTexts(encodings, None, {n: int(b.tokenizer.pad_token_id or 0) for n, b in branches.items()})
    batch = move_to(ds.collate(list(range(len(ds)))), loaded.device)
    with torch.no_grad(), autocast(loaded.device, autocast_dtype(loaded.device, cfg.runtime.precision)):
        probs = torch.softmax(loaded.model(inputs=batch["inputs"]).float(), dim=-1).cpu()
    score, label = probs.max(-1)
    for (id_, text), s, y in zip(chunk, score.tolist(), label.tolist(), strict=True):
        row: dict[str, Any] = {"id": id_} if id_ is not None else {}
        row.update(text=text, label=classes[y], score=s)
        yield row


def _chunks(pairs: Iterator[tuple[str | None, str]], size: int) -> Iterator[list[tuple[str | None, str]]]:
    chunk: list[tuple[str | None, str]] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path, *, fmt: str = "auto",
            batch_size: int | None = None) -> Iterator[dict[str, Any]]:
    """One result per input text {"id"?, "text", "label", "score"}, computed in batches of
    ``batch_size`` (default: eval.batch_size) and written as lines of ``out/predictions.jsonl``."""
    bs = batch_size or loaded.cfg.eval.batch_size
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as sink:
        for item in inputs:
            for chunk in _chunks(read_inputs(item, loaded.cfg, fmt), bs):
                for row in predict_texts(loaded, chunk):
                    sink.write(to_json(row) + "\n")
                    n += 1
                    yield row
    log(f"predicted {n} texts")
