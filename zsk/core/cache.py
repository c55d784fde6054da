"""Content-addressed cache under ``$ZSK_CACHE``: atomic writes, cross-process locks, verified reads.

A key is the SHA-256 of a canonical JSON of everything the value depends on; a value is written to a
temp file and renamed into place, with its own SHA-256 beside it. A damaged entry (truncated,
altered, unreadable) is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock

from zsk import __version__
from zsk.core.errors import ZskFailure
from zsk.core.io import atomic_open

T = TypeVar("T")


def cache_root() -> Path:
    """``$ZSK_CACHE`` or ``~/.cache/zsk``."""
    return Path(os.environ.get("ZSK_CACHE") or Path.home() / ".cache" / "zsk")


def canonical_key(parts: dict) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (sorted keys, no whitespace)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_fingerprint(path: str | Path) -> dict:
    """Identity of a file for a cache key: resolved path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _to_storable(value: Any) -> Any:
    """numpy arrays and scalars become tensors (tagged) so ``weights_only`` loading accepts them."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, (np.number, np.bool_)):  # numpy scalars (e.g. np.mean's result) pickle as objects
        return {"__npscalar__": torch.from_numpy(np.asarray(value))}
    if isinstance(value, dict):
        return {k: _to_storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_storable(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_storable(v) for v in value)
    return value


def _from_storable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        if set(value) == {"__npscalar__"}:
            return value["__npscalar__"].numpy()[()]
        return {k: _from_storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_storable(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_from_storable(v) for v in value)
    return value


class Cache:
    """The zsk cache: one folder per namespace, one ``<key>.pt`` + ``<key>.sha256`` per value."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()

    def path(self, namespace: str, key: str) -> Path:
        return self.root / namespace / f"{key}.pt"

    def _read(self, path: Path) -> Any:
        digest_path = path.with_suffix(".sha256")
        try:
            data = path.read_bytes()
            expected = digest_path.read_text().strip()
        except OSError:
            raise KeyError(path) from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise KeyError(path)
        try:
            return _from_storable(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        except Exception:  # noqa: BLE001 - any unreadable entry is treated as damaged
            raise KeyError(path) from None

    def _write(self, path: Path, value: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(_to_storable(value), buf)
        data = buf.getvalue()
        for target, payload in ((path, data), (path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())):
            with atomic_open(target) as f:
                f.write(payload)

    def get(self, namespace: str, key_parts: dict) -> Any:
        """The cached value, or ``KeyError`` when absent or damaged."""
        return self._read(self.path(namespace, canonical_key(self._full_parts(key_parts))))

    @staticmethod
    def _full_parts(key_parts: dict) -> dict:
        return {"zsk_cache_format": 1, **key_parts}

    def get_or_compute(self, namespace: str, key_parts: dict, compute: Callable[[], T]) -> T:
        """Return the cached value for ``key_parts`` or compute, store and return it.

        Concurrent processes asking for the same key compute it once: the first holds the lock
        while computing, the others wait and then read its result.
        """
        key = canonical_key(self._full_parts(key_parts))
        path = self.path(namespace, key)
        try:
            return self._read(path)
        except KeyError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path.with_suffix(".lock"))):
            try:
                return self._read(path)
            except KeyError:
                value = compute()
                self._write(path, value)
                try:
                    self._read(path)
                except KeyError:
                    raise ZskFailure(f"cache namespace {namespace!r}: the computed value cannot be stored safely "
                                     f"(only tensors, arrays and primitives are allowed)") from None
                return value

    def info(self) -> dict[str, dict[str, int]]:
        """Entries and bytes per namespace."""
        out: dict[str, dict[str, int]] = {}
        if not self.root.is_dir():
            return out
        for ns in sorted(p for p in self.root.iterdir() if p.is_dir()):
            files = [f for f in ns.rglob("*") if f.is_file()]
            out[ns.name] = {"entries": sum(1 for f in files if f.suffix == ".pt"), "bytes": sum(f.stat().st_size for f in files)}
        return out

    def clear(self, namespace: str | None = None) -> int:
        """Delete one namespace (or everything); returns the bytes freed."""
        targets = [self.root / namespace] if namespace else [p for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []
        freed = 0
        for t in targets:
            if t.is_dir():
                freed += sum(f.stat().st_size for f in t.rglob("*") if f.is_file())
                shutil.rmtree(t)
        return freed


def default_cache() -> Cache:
    """The process-wide cache at :func:`cache_root` (re-read each call so tests can set ``ZSK_CACHE``)."""
    return Cache()


def code_version() -> str:
    """Version string to put in keys of values whose producer code may change."""
    return __version__
