"""The content-addressed cache: one computation across processes, damaged entries recomputed,
numpy round-trips, and ``zsk cache info`` / ``zsk cache clear``."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zsk.core.cache import Cache, canonical_key, default_cache, file_fingerprint


class Counter:
    """A compute function that appends a line to a file each time it runs (shared across processes)."""

    def __init__(self, log: Path, value: Any = None, sleep: float = 0.0) -> None:
        self.log, self.value, self.sleep = log, value, sleep

    def __call__(self) -> Any:
        with open(self.log, "a") as f:
            f.write("computed\n")
        time.sleep(self.sleep)
        return self.value if self.value is not None else {"emb": torch.arange(6.0).reshape(2, 3)}

    @property
    def count(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0


def _worker(root: str, log: str, out: str, barrier: Any) -> None:
    """Run in a spawned process: wait for the other one, then ask for the same key at the same time."""
    barrier.wait(timeout=60)
    value = Cache(root).get_or_compute("emb", {"model": "ViT-B-16", "classes": ["cat", "dog"]},
                                       Counter(Path(log), value={"emb": np.full((3, 4), 7.0, dtype=np.float32)},
                                               sleep=1.0))
    Path(out).write_text(json.dumps(value["emb"].tolist()))


def test_two_processes_compute_a_key_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    log = tmp_path / "computations.log"
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), str(log), str(tmp_path / f"out{i}.json"),
                                               barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert log.read_text().splitlines() == ["computed"]  # one computation for two concurrent requests
    for i in range(2):
        assert json.loads((tmp_path / f"out{i}.json").read_text()) == [[7.0] * 4] * 3


def _entry(cache: Cache, namespace: str) -> Path:
    (entry,) = (cache.root / namespace).glob("*.pt")
    return entry


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage_with_matching_digest", "delete_digest",
                                    "empty"])
def test_damaged_entry_is_detected_and_recomputed(tmp_path: Path, damage: str) -> None:
    import hashlib

    cache = Cache(tmp_path / "cache")
    counter = Counter(tmp_path / "n.log")
    key = {"what": "features", "file": "a.h5"}
    first = cache.get_or_compute("feat", key, counter)
    assert counter.count == 1
    assert torch.equal(cache.get_or_compute("feat", key, counter)["emb"], first["emb"])
    assert counter.count == 1  # read back, not recomputed
    entry = _entry(cache, "feat")
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        i = len(data) // 2
        entry.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif damage == "garbage_with_matching_digest":
        garbage = b"not a torch file" * 10
        entry.write_bytes(garbage)
        entry.with_suffix(".sha256").write_text(hashlib.sha256(garbage).hexdigest())
    elif damage == "delete_digest":
        entry.with_suffix(".sha256").unlink()
    elif damage == "empty":
        entry.write_bytes(b"")
    with pytest.raises(KeyError):
        cache.get("feat", key)
    again = cache.get_or_compute("feat", key, counter)
    assert counter.count == 2
    assert torch.equal(again["emb"], first["emb"])
    # the repaired entry is trusted again
    assert torch.equal(cache.get("feat", key)["emb"], first["emb"])
    assert counter.count == 2


def test_numpy_values_round_trip(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    value = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "i64": np.array([[1, -2], [3, 4]], dtype=np.int64),
        "u8": np.array([0, 255], dtype=np.uint8),
        "bool": np.array([True, False]),
        "f64_t": np.arange(6, dtype=np.float64).reshape(2, 3).T,  # non-contiguous
        "scalar": np.float32(0.25),
        "count": np.int64(3),
        "nested": [np.ones(2, dtype=np.float16), ("tag", 3, 2.5, None)],
        "tensor": torch.tensor([1.5, 2.5]),
        "names": ["cat", "dog"],
    }
    counter = Counter(tmp_path / "n.log", value=value)
    cache.get_or_compute("np", {"k": 1}, counter)
    got = cache.get_or_compute("np", {"k": 1}, counter)
    assert counter.count == 1  # the second call read the stored entry
    for k in ("f32", "i64", "u8", "bool", "f64_t"):
        assert isinstance(got[k], np.ndarray), k
        assert got[k].dtype == value[k].dtype, k
        np.testing.assert_array_equal(got[k], value[k])
    assert isinstance(got["scalar"], np.floating) and got["scalar"].dtype == np.float32 and got["scalar"] == 0.25
    assert isinstance(got["count"], np.integer) and got["count"] == 3
    assert got["nested"][0].dtype == np.float16 and got["nested"][1] == ("tag", 3, 2.5, None)
    assert torch.equal(got["tensor"], value["tensor"])
    assert got["names"] == ["cat", "dog"]


def test_keys_depend_on_content_not_order(tmp_path: Path) -> None:
    assert canonical_key({"a": 1, "b": [1, 2]}) == canonical_key({"b": [1, 2], "a": 1})
    assert canonical_key({"a": 1}) != canonical_key({"a": 2})
    f = tmp_path / "data.bin"
    f.write_bytes(b"12345")
    fp = file_fingerprint(f)
    assert fp["size"] == 5 and fp["path"] == str(f.resolve())
    f.write_bytes(b"123456")
    assert canonical_key(file_fingerprint(f)) != canonical_key(fp)


def test_default_cache_follows_zsk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSK_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache().root == tmp_path / "elsewhere"


def test_cli_cache_info_and_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zsk.cli import app

    root = tmp_path / "cache"
    monkeypatch.setenv("ZSK_CACHE", str(root))
    cache = Cache()
    cache.get_or_compute("clip_text", {"k": 1}, lambda: torch.zeros(100))
    cache.get_or_compute("clip_text", {"k": 2}, lambda: torch.zeros(10))
    cache.get_or_compute("index", {"k": 1}, lambda: [1, 2, 3])
    runner = CliRunner()

    res = runner.invoke(app, ["cache", "info", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["root"] == str(root)
    assert info["namespaces"]["clip_text"]["entries"] == 2
    assert info["namespaces"]["index"]["entries"] == 1
    assert info["namespaces"]["clip_text"]["bytes"] > 400  # 100 float32 values at least

    res = runner.invoke(app, ["cache", "info"])  # the table form
    assert res.exit_code == 0 and "clip_text" in res.stdout and "index" in res.stdout

    res = runner.invoke(app, ["cache", "clear", "clip_text"])
    assert res.exit_code == 0, res.output
    assert "freed" in res.stderr and res.stdout == ""  # a log line, not a result
    assert not (root / "clip_text").exists() and (root / "index").is_dir()
    assert cache.get("index", {"k": 1}) == [1, 2, 3]

    res = runner.invoke(app, ["cache", "clear"])
    assert res.exit_code == 0
    assert json.loads(runner.invoke(app, ["cache", "info", "--json"]).stdout)["namespaces"] == {}
    with pytest.raises(KeyError):
        cache.get("index", {"k": 1})
