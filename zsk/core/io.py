"""Small file helpers shared by the runtime and the readers: atomic writes and checked JSON reads."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from zsk.core.errors import ZskError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename, on any
    error it is removed, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a file for writing that appears at ``path`` only once complete (flushed and fsynced)."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; missing, unreadable or invalid files are a ``ZskError`` naming ``what``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZskError(f"{what} not found: {path} (set data.root or the data.* key naming it)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ZskError(f"cannot read {what} {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ZskError(f"{what} {path} is not valid JSON: {e}") from None
