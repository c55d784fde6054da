"""``zsk fakenews predict``: label texts from CSV/TSV/JSONL/text files or lines on stdin, one result
row per text ({"input", "line", "id"?, "text", "label", "score", "probabilities"}), also written to
``OUT/<name>_predictions.jsonl`` for each input, ``<name>`` from :func:`zsk.core.io.output_names`
(unique per input and stable: ``a/test.csv`` and ``b/test.csv`` never overwrite each other)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from zsk.core.device import autocast, autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, atomic_open, output_folder, output_names
from zsk.core.progress import log, to_json
from zsk.core.task import Loaded
from zsk.core.trainer import move_to
from zsk.data.tables import decode_text, read_table, select_texts, table_format
from zsk.tasks.fakenews.config import Config
from zsk.tasks.fakenews.data import TokenizedTexts, encode_texts
from zsk.tasks.fakenews.preprocess import clean_texts

STDIN = "<stdin>"
FORMATS = ("auto", "csv", "tsv", "jsonl", "lines")
Text = tuple[int, str | None, str]  # (line in the file, id or None, text)


def read_inputs(item: Path | StdinInput, cfg: Config, fmt: str = "auto") -> Iterator[Text]:
    """(line, id, text) triples from a CSV/TSV/JSONL/text file (format by suffix unless ``fmt`` names
    one), or from stdin: plain lines with ``fmt`` auto or lines, else a table in that format."""
    if fmt not in FORMATS:
        raise ZskError(f"--format {fmt!r} is not a table format; choose one of {', '.join(FORMATS)}")
    if isinstance(item, StdinInput):
        resolved = "lines" if fmt == "auto" else table_format(STDIN, fmt)
        table = read_table(STDIN, resolved, text=decode_text(item.data, STDIN, cfg.data.encoding))
    else:
        resolved = table_format(item, fmt)
        table = read_table(item, resolved, cfg.data.encoding)
    if resolved == "lines":
        for row, line in zip(table.rows, table.lines, strict=True):
            yield line, None, row["text"]
        return
    samples = select_texts(table, cfg.data.text_column, None, cfg.data.id_column, require_labels=False)
    for j, text in enumerate(samples.texts):
        yield samples.lines[j], (samples.ids[j] if samples.ids is not None else None), text


def predict_texts(loaded: Loaded, chunk: list[Text], source: str = "") -> Iterator[dict[str, Any]]:
    """Labels and class probabilities of one batch of (line, id, text) triples of the input ``source``:
    cleaned, tokenised per branch, one forward pass."""
    cfg: Config = loaded.cfg
    classes: list[str] = loaded.parts["classes"]
    branches = loaded.parts["branches"]
    texts = [t for _, _, t in chunk]
    clean = clean_texts(texts, cfg.data.preprocess)
    encodings = {n: encode_texts(b.tokenizer, clean, cfg.data.max_length) for n, b in branches.items()}
    ds = TokenizedTexts(encodings, None, {n: int(b.tokenizer.pad_token_id or 0) for n, b in branches.items()})
    batch = move_to(ds.collate(list(range(len(ds)))), loaded.device)
    with torch.no_grad(), autocast(loaded.device, autocast_dtype(loaded.device, cfg.runtime.precision)):
        probs = torch.softmax(loaded.model(inputs=batch["inputs"]).float(), dim=-1).cpu()
    score, label = probs.max(-1)
    for (line, id_, text), p, s, y in zip(chunk, probs.tolist(), score.tolist(), label.tolist(), strict=True):
        row: dict[str, Any] = {"input": source, "line": line}
        if id_ is not None:
            row["id"] = id_
        row.update(text=text, label=classes[y], score=s, probabilities=dict(zip(classes, p, strict=True)))
        yield row


def _chunks(items: Iterable[Text], size: int) -> Iterator[list[Text]]:
    chunk: list[Text] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path, *, fmt: str = "auto",
            batch_size: int | None = None) -> Iterator[dict[str, Any]]:
    """One result per input text {"input", "line", "id"?, "text", "label", "score", "probabilities"},
    computed in batches of ``batch_size`` (default: eval.batch_size); each input's rows are also
    written to ``out/<name>_predictions.jsonl`` (``<name>`` from ``output_names``). Every input is
    read and checked before anything is predicted or written."""
    bs = batch_size or loaded.cfg.eval.batch_size
    if bs < 1:
        raise ZskError(f"--batch-size must be >= 1, got {bs}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ZskError(f"--out {out} is a file; give a folder for the predictions")
    texts = [list(read_inputs(item, loaded.cfg, fmt)) for item in inputs]
    out = output_folder(out)
    n = 0
    for item, name, rows in zip(inputs, output_names(inputs), texts, strict=True):
        source = STDIN if isinstance(item, StdinInput) else str(item)
        with atomic_open(out / f"{name}_predictions.jsonl", "wb") as sink:
            for chunk in _chunks(rows, bs):
                for row in predict_texts(loaded, chunk, source):
                    sink.write((to_json(row) + "\n").encode("utf-8"))
                    n += 1
                    yield row
    log(f"predicted {n} texts from {len(inputs)} input(s)")
