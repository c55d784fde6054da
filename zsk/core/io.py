"""Small file helpers shared by the runtime and the readers: atomic writes and checked JSON reads."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from zsk.core.errors import ZskError


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        # mkstemp creates 0600; the finished file gets the mode any new file gets (0666 less the umask)
        os.chmod(tmp, 0o666 & ~_umask())
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


@dataclass(frozen=True)
class StdinInput:
    """What ``-`` read from standard input when it carries data rather than paths: lines of text
    (``stdin="texts"``) or raw bytes such as a ``.npy`` stream (``stdin="bytes"``)."""

    data: bytes
    name: str = "stdin"

    @property
    def lines(self) -> list[str]:
        """Non-empty lines of the input decoded as UTF-8."""
        return [ln for ln in self.data.decode("utf-8").splitlines() if ln.strip()]


def expand_inputs(items: Sequence[str | Path], *, suffixes: Sequence[str] = (),
                  stdin: Literal["paths", "texts", "bytes"] = "paths", what: str = "input",
                  text_args: bool = False) -> list[Path | StdinInput | str]:
    """Expand ``predict`` arguments into a list of inputs, in the order given: files as they are,
    folders to their files with one of ``suffixes`` (sorted, recursively), glob patterns to their
    matches, and ``-`` to paths read one per line from stdin (``stdin="paths"``) or to one
    :class:`StdinInput` holding stdin's data (``"texts"``, ``"bytes"``). A name that matches nothing
    is a ``ZskError`` naming it (with ``text_args``, for tasks whose inputs are free texts such as
    caption queries, it is passed on as that ``str``); so is an empty result."""
    import glob
    import sys

    wanted = tuple(s.lower() for s in suffixes)

    def matches(p: Path) -> bool:
        return not wanted or p.name.lower().endswith(wanted)

    out: list[Path | StdinInput | str] = []
    seen_stdin = False

    def add(item: str | Path) -> None:
        if not str(item).strip():
            raise ZskError(f"an empty {what} argument was given (quote a file name, a folder or a text)")
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".") and matches(f))
            if not files:
                kinds = f" ({', '.join(suffixes)})" if suffixes else ""
                raise ZskError(f"{what} folder {p} holds no files{kinds}")
            out.extend(files)
        elif p.is_file():
            out.append(p)
        elif glob.has_magic(str(item)):
            found = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            found = [f for f in found if f.is_file() and matches(f)]
            if not found:
                raise ZskError(f"{what} pattern {item!r} matches no file")
            out.extend(found)
        elif text_args:
            out.append(str(item))
        else:
            raise ZskError(f"{what} not found: {p} (give files, folders, glob patterns or '-' for stdin)")

    for item in items:
        if str(item) != "-":
            add(item)
            continue
        if seen_stdin:
            raise ZskError(f"'-' (stdin) can be given only once among the {what}s")
        seen_stdin = True
        if stdin == "paths":
            for line in sys.stdin.read().splitlines():
                if line.strip():
                    add(line.strip())
        else:
            data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
            out.append(StdinInput(data))
    if not out:
        raise ZskError(f"no {what}s given (pass files, folders, globs, or '-' to read stdin)")
    return out


def output_folder(out: str | Path, what: str = "--out") -> Path:
    """``out`` as a folder that exists (created if needed), or a ``ZskError`` naming it (as ``what``) when
    it is a file or cannot be created: predict, eval and sample write only there."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ZskError(f"{what} {out} is a file; give a folder for the outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZskError(f"{what} {out}: cannot create the folder ({e.strerror or e}); choose another folder") from None
    return out


def output_names(inputs: Sequence[Path | StdinInput | str]) -> list[str]:
    """A unique, stable output name per ``predict`` input, to prefix its result files.

    The name is the file name without its suffixes (``case.nii.gz`` -> ``case``); inputs that would
    share one get their suffixes kept (``case_nii_gz``, ``case_h5``), then, if still equal (same file
    name in other folders), their parent folders (``a_case_h5``, ``b_case_h5``); stdin is ``stdin``.
    Names depend only on the inputs, so the same command names its outputs the same way every time.
    """

    def parts(item: Path | StdinInput | str) -> list[str]:
        if isinstance(item, StdinInput):
            return [item.name]
        p = Path(str(item))
        return [*[q for q in p.parent.parts if q not in ("/", ".", "..")], p.name]

    def base(item: Path | StdinInput | str) -> str:
        if isinstance(item, StdinInput):
            return item.name
        name = Path(str(item)).name
        return name.split(".")[0] if not name.startswith(".") else name

    def clean(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "input"

    names = [clean(base(i)) for i in inputs]
    full = [clean(parts(i)[-1].replace(".", "_")) for i in inputs]
    for _ in range(64):
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        clashes = [k for k, n in enumerate(names) if counts[names[k]] > 1]
        if not clashes:
            return names
        for k in clashes:
            if names[k] != full[k] and not names[k].endswith(full[k]):
                names[k] = full[k]  # first the suffixes
            else:  # then one more parent folder
                depth = names[k].count("__") + 1
                folders = parts(inputs[k])[:-1]
                prefix = "_".join(clean(f) for f in folders[-depth:]) if depth <= len(folders) else f"{k}"
                names[k] = f"{prefix}__{full[k]}"
    return [f"{n}_{k}" for k, n in enumerate(names)]  # pathological inputs: the position makes them unique
