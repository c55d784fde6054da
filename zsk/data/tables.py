"""Text tables: CSV, TSV and JSON-lines files of labelled (or unlabelled) texts.

One reader serves every text task: `read_table` opens a file, checks its encoding and structure,
and keeps the 1-based line number of every row so that later checks (a missing value, an unknown
label) can name the exact place to fix. `select_texts` picks the text / label / id columns and
maps label strings to class indices. Every problem is a `ZskError` (exit 2) naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zsk.core.errors import ZskError

TableFormat = Literal["auto", "csv", "tsv", "jsonl", "lines"]

_SUFFIX_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".txt": "lines",
}

# File suffixes whose table format `table_format` tells (what a folder of prediction inputs holds).
TABLE_SUFFIXES: tuple[str, ...] = tuple(_SUFFIX_FORMATS)


@dataclass
class Table:
    """Rows of a text table, as strings, with the line each row starts on."""

    path: str
    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class TextSamples:
    """Selected columns of a table: texts, optional class indices and optional ids."""

    path: str
    texts: list[str]
    labels: list[int] | None = None
    ids: list[str] | None = None
    lines: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def format_hint(fmt: str) -> str:
    """How to name a table format on the command line (predict's option, or the recipe key)."""
    return f"--format {fmt} (predict) or --set data.format={fmt} (train, eval)"


def table_format(path: str | Path, fmt: str = "auto") -> str:
    """Resolve `auto` to csv / tsv / jsonl / lines from the file suffix (`.gz` is not supported)."""
    if fmt != "auto":
        if fmt not in ("csv", "tsv", "jsonl", "lines"):
            raise ZskError(f"unknown table format {fmt!r}; choose one of auto, csv, tsv, jsonl, lines")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise ZskError(
            f"{path}: cannot tell the table format from the suffix {suffix!r}; use one of "
            f"{', '.join(sorted(_SUFFIX_FORMATS))} or pass the format explicitly: {format_hint('csv')}"
        )
    return _SUFFIX_FORMATS[suffix]


def decode_text(data: bytes, path: str, encoding: str = "utf-8") -> str:
    """Decode file bytes, naming the line of the first undecodable byte on failure."""
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8") and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ZskError(
            f"{path}, line {line}: bytes that are not valid {encoding} ({e.reason} at byte {e.start}); "
            f"re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    except LookupError:
        raise ZskError(f"unknown text encoding {encoding!r} for {path}") from None


def read_table(
    path: str | Path,
    fmt: str = "auto",
    encoding: str = "utf-8",
    text: str | None = None,
) -> Table:
    """Read a CSV / TSV / JSONL / plain-lines table into string rows with line numbers.

    `text` may hold the content already (e.g. stdin); otherwise the file is read. Plain-lines
    tables have the single column `text`. An empty table (no data rows) is an error.
    """
    path = str(path)
    fmt = table_format(path, fmt)
    if text is None:
        p = Path(path)
        if not p.is_file():
            raise ZskError(f"{path}: no such file; check data.root and the file name")
        text = decode_text(p.read_bytes(), path, encoding)
    if fmt == "lines":
        table = _read_lines(path, text)
    elif fmt == "jsonl":
        table = _read_jsonl(path, text)
    else:
        table = _read_delimited(path, text, "," if fmt == "csv" else "\t")
    if not table.rows:
        raise ZskError(f"{path}: the file holds no data rows; check that it is the right file")
    return table


def _read_lines(path: str, text: str) -> Table:
    rows, lines = [], []
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append({"text": line})
            lines.append(i)
    return Table(path, ["text"], rows, lines)


def _read_jsonl(path: str, text: str) -> Table:
    rows: list[dict[str, str]] = []
    lines: list[int] = []
    columns: dict[str, None] = {}
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = "each line must be one JSON object"
            if not rows and not line.lstrip().startswith(("{", "[")):
                other = "tsv" if "\t" in line else "csv" if "," in line else None
                if other:
                    hint = f"it looks like a {other.upper()} file, not JSON lines: {format_hint(other)}"
            raise ZskError(f"{path}, line {i}: not valid JSON ({e.msg}); {hint}") from None
        if not isinstance(obj, dict):
            raise ZskError(f"{path}, line {i}: expected a JSON object, got {type(obj).__name__}")
        row = {}
        for k, v in obj.items():
            columns.setdefault(str(k), None)
            row[str(k)] = "" if v is None else (v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v))
        rows.append(row)
        lines.append(i)
    return Table(path, list(columns), rows, lines)


def _read_delimited(path: str, text: str, delimiter: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise ZskError(f"{path}, line 1: malformed header ({e})") from None
    if header is None or not any(h.strip() for h in header):
        raise ZskError(f"{path}: the file is empty; expected a header line with column names")
    columns = [h.strip() for h in header]
    kind = "CSV" if delimiter == "," else "TSV"
    first = delimiter.join(header)
    other = "jsonl" if first.lstrip().startswith(("{", "[")) else None
    if other is None and len(columns) == 1:  # one column: a file of the other delimiter?
        other = "tsv" if "\t" in first and delimiter != "\t" else "csv" if "," in first and delimiter != "," else None
    if other:
        raise ZskError(f"{path}: read as {kind} but its first line {first[:60]!r} looks like "
                       f"{'JSON lines' if other == 'jsonl' else other.upper()}: {format_hint(other)}")
    rows: list[dict[str, str]] = []
    lines: list[int] = []
    start = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise ZskError(f"{path}, line {start}: malformed {'CSV' if delimiter == ',' else 'TSV'} record ({e})") from None
        if not record or (len(record) == 1 and not record[0].strip()):
            start = reader.line_num + 1
            continue
        if len(record) > len(columns):
            raise ZskError(
                f"{path}, line {start}: {len(record)} fields but the header names {len(columns)} "
                f"({', '.join(columns)}); quote fields that contain the delimiter"
            )
        rows.append({c: (record[j] if j < len(record) else "") for j, c in enumerate(columns)})
        lines.append(start)
        start = reader.line_num + 1
    return Table(path, columns, rows, lines)


def _require_column(table: Table, column: str, key: str) -> None:
    if column not in table.columns:
        raise ZskError(
            f"{table.path}: no column {column!r}; the file has {', '.join(repr(c) for c in table.columns)}. "
            f"Pick one with --set {key}=NAME"
        )


def select_texts(
    table: Table,
    text_column: str,
    label_column: str | None = None,
    id_column: str | None = None,
    classes: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    require_labels: bool = True,
    column_keys: tuple[str, str, str] = ("data.text_column", "data.label_column", "data.id_column"),
) -> TextSamples:
    """Pick text / label / id columns and map labels to class indices.

    Labels are compared after stripping whitespace, case-insensitively, after applying `label_map`
    (raw value -> class name). With `classes` None the classes are the sorted distinct labels.
    `require_labels=False` tolerates a missing label column (prediction inputs). An id column that
    is absent is simply not reported.
    """
    _require_column(table, text_column, column_keys[0])
    has_labels = label_column is not None and label_column in table.columns
    if label_column is not None and not has_labels and require_labels:
        _require_column(table, label_column, column_keys[1])
    has_ids = id_column is not None and id_column in table.columns

    texts: list[str] = []
    for row, line in zip(table.rows, table.lines, strict=True):
        value = row.get(text_column, "")
        if not value.strip():
            raise ZskError(f"{table.path}, line {line}: empty {text_column!r} value; remove the row or fill it in")
        texts.append(value)
    ids = [row.get(id_column, "") for row in table.rows] if has_ids else None

    labels: list[int] | None = None
    out_classes = list(classes) if classes else []
    if has_labels:
        mapping = {k.strip().lower(): v for k, v in (label_map or {}).items()}
        raw = []
        for row in table.rows:
            v = row.get(label_column, "").strip()
            raw.append(mapping.get(v.lower(), v))
        if not out_classes:
            out_classes = sorted({r for r in raw if r})
        index = {c.strip().lower(): i for i, c in enumerate(out_classes)}
        labels = []
        for value, line in zip(raw, table.lines, strict=True):
            j = index.get(value.strip().lower())
            if j is None:
                shown = ", ".join(repr(c) for c in out_classes)
                raise ZskError(
                    f"{table.path}, line {line}: unknown label {value!r} in column {label_column!r}; "
                    f"expected one of {shown} (set data.classes, or map it with data.label_map)"
                )
            labels.append(j)
    return TextSamples(table.path, texts, labels, ids, list(table.lines), out_classes)


def read_texts(
    path: str | Path,
    text_column: str,
    label_column: str | None = None,
    id_column: str | None = None,
    classes: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    fmt: str = "auto",
    encoding: str = "utf-8",
    require_labels: bool = True,
) -> TextSamples:
    """`read_table` followed by `select_texts`: the one call most tasks need."""
    table = read_table(path, fmt, encoding)
    return select_texts(table, text_column, label_column, id_column, classes, label_map, require_labels)


def write_table(path: str | Path, rows: Iterable[Mapping[str, object]], columns: Sequence[str], fmt: str = "auto") -> None:
    """Write rows to CSV / TSV / JSONL (used for sample data and exported predictions)."""
    fmt = table_format(path, fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for row in rows:
                f.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n")
        elif fmt == "lines":
            for row in rows:
                f.write(str(row.get(columns[0], "")).replace("\n", " ") + "\n")
        else:
            writer = csv.writer(f, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
