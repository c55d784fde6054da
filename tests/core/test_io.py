"""Atomic writes and checked JSON reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from zsk.core.errors import ZskError
from zsk.core.io import atomic_open, atomic_path, read_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    with atomic_open(target) as f:
        f.write(b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half")
        raise RuntimeError("killed half-way")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_atomic_path_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"


def test_read_json_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json", "split file") == {"a": [1, 2]}
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ZskError, match=r"split file .*bad\.json is not valid JSON"):
        read_json(tmp_path / "bad.json", "split file")
    with pytest.raises(ZskError, match=r"split file not found: .*missing\.json"):
        read_json(tmp_path / "missing.json", "split file")
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ZskError, match=r"cannot read split file .*latin\.json"):
        read_json(tmp_path / "latin.json", "split file")
