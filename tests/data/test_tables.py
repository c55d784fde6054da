"""Text tables: CSV / TSV / JSONL reading, column selection, label mapping and exit-2 errors."""

from __future__ import annotations

import pytest

from zsk.core.errors import ZskError
from zsk.data.tables import read_table, read_texts, select_texts, table_format, write_table


def test_csv_with_quoted_multiline_field_keeps_start_lines(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('id,tweet,label\n1,"first, with comma",real\n2,"two\nlines",fake\n\n3,third,Real\n', encoding="utf-8")
    table = read_table(p)
    assert table.columns == ["id", "tweet", "label"]
    assert [r["tweet"] for r in table.rows] == ["first, with comma", "two\nlines", "third"]
    assert table.lines == [2, 3, 6]  # the blank line 5 is skipped; row 3 starts on line 6
    s = select_texts(table, "tweet", "label", "id", classes=["real", "fake"])
    assert s.labels == [0, 1, 0]  # case-insensitive label match
    assert s.ids == ["1", "2", "3"]


def test_tsv_jsonl_and_lines_formats(tmp_path):
    tsv = tmp_path / "a.tsv"
    tsv.write_text("text\ty\nhello\tpos\nbye\tneg\n", encoding="utf-8")
    s = read_texts(tsv, "text", "y")
    assert s.classes == ["neg", "pos"]  # inferred, sorted
    assert s.labels == [1, 0]
    jl = tmp_path / "b.jsonl"
    jl.write_text('{"t": "x", "l": 0}\n\n{"t": "y", "l": 2}\n', encoding="utf-8")
    s = read_texts(jl, "t", "l", label_map={"0": "low", "2": "high"}, classes=["low", "mid", "high"])
    assert s.labels == [0, 2] and s.lines == [1, 3]
    txt = tmp_path / "c.txt"
    txt.write_text("one\n\ntwo\n", encoding="utf-8")
    t = read_table(txt)
    assert [r["text"] for r in t.rows] == ["one", "two"] and t.lines == [1, 3]
    assert table_format("x.ndjson") == "jsonl"


def test_write_table_round_trip(tmp_path):
    rows = [{"id": 1, "tweet": 'say "hi", ok', "label": "real"}, {"id": 2, "tweet": "a\tb", "label": "fake"}]
    for name in ("r.csv", "r.tsv", "r.jsonl"):
        write_table(tmp_path / name, rows, ["id", "tweet", "label"])
        s = read_texts(tmp_path / name, "tweet", "label", "id", classes=["real", "fake"])
        assert s.texts == ['say "hi", ok', "a\tb"] and s.labels == [0, 1] and s.ids == ["1", "2"]


@pytest.mark.parametrize(
    "content, kwargs, expected",
    [
        ("id,text,label\n1,a,real\n", {"text_column": "tweet"}, ["no column 'tweet'", "'text'", "data.text_column"]),
        ("id,tweet,label\n1,a,real\n2,b,satire\n", {}, ["line 3", "unknown label 'satire'", "'real', 'fake'"]),
        ("id,tweet,label\n1,,real\n", {}, ["line 2", "empty 'tweet'"]),
        ("", {}, ["is empty"]),
        ("id,tweet,label\n", {}, ["no data rows"]),
        ("id,tweet,label\n1,a,real,extra\n", {}, ["line 2", "4 fields"]),
    ],
)
def test_bad_tables_name_file_and_line(tmp_path, content, kwargs, expected):
    p = tmp_path / "bad.csv"
    p.write_text(content, encoding="utf-8")
    args = {"text_column": "tweet", "label_column": "label", "classes": ["real", "fake"], **kwargs}
    with pytest.raises(ZskError) as e:
        read_texts(p, **args)
    msg = str(e.value)
    assert str(p) in msg
    for piece in expected:
        assert piece in msg


def test_undecodable_bytes_name_the_line(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes(b"id,tweet,label\n1,fine,real\n2,caf\xe9,fake\n")
    with pytest.raises(ZskError, match=r"latin\.csv, line 3: bytes that are not valid utf-8"):
        read_table(p)
    assert read_table(p, encoding="latin-1").rows[1]["tweet"] == "café"


def test_bad_jsonl_and_missing_file(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"t": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ZskError, match="line 2: expected a JSON object"):
        read_table(p)
    p.write_text('{"t": 1}\n{"t": \n', encoding="utf-8")
    with pytest.raises(ZskError, match="line 2: not valid JSON"):
        read_table(p)
    with pytest.raises(ZskError, match="no such file"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(ZskError, match="cannot tell the table format"):
        read_table(tmp_path / "data.xlsx")


def test_missing_label_column_allowed_for_prediction_inputs(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text("tweet\nhello\n", encoding="utf-8")
    s = read_texts(p, "tweet", "label", "id", require_labels=False)
    assert s.labels is None and s.ids is None and s.texts == ["hello"]
    with pytest.raises(ZskError, match="no column 'label'"):
        read_texts(p, "tweet", "label")
