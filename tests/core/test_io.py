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


def test_output_names_are_unique_and_stable() -> None:
    from zsk.core.io import StdinInput, output_names

    assert output_names([Path("case.nii.gz"), Path("case.h5"), Path("x/other.png")]) == ["case_nii_gz", "case_h5", "other"]
    assert output_names([Path("a/img.png"), Path("b/img.png"), Path("c.png")]) == ["a__img_png", "b__img_png", "c"]
    assert output_names([Path("a/x/img.png"), Path("b/x/img.png")]) == ["a_x__img_png", "b_x__img_png"]
    assert output_names([StdinInput(b""), Path("y.txt")]) == ["stdin", "y"]
    names = output_names([Path("same.png"), Path("same.png"), Path("we ird!.png")])
    assert len(set(names)) == 3 and names[2] == "we_ird_"
    # the same inputs give the same names every time
    assert output_names([Path("a/img.png"), Path("b/img.png")]) == output_names([Path("a/img.png"), Path("b/img.png")])


def test_atomic_files_get_the_mode_of_any_new_file(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; outputs (checkpoints, eval.json, masks) must be readable as the umask allows."""
    import os
    import stat

    from zsk.core.io import atomic_open

    old = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "a.json", "w") as f:
            f.write("{}")
        os.umask(0o027)
        with atomic_open(tmp_path / "b.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640
