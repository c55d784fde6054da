"""16-bit multi-channel PNG reading and writing with NumPy and zlib only.

Pillow opens 16-bit RGB(A) PNGs as 8-bit images (it keeps the high byte), which loses SYNTHIA's label ids
(``GT/LABELS/*.png``: 16-bit, class id in the first channel). :func:`read_png16` decodes any
non-interlaced PNG of bit depth 16 (grey, grey+alpha, RGB, RGBA) exactly (PNG spec, ISO/IEC 15948
section 9: filter types 0-4); :func:`write_png16` writes one, with a chosen filter type (for tests).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zsk.core.errors import ZskError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def _chunks(data: bytes, path: Path):
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise ZskError(f"{path}: truncated PNG chunk {kind!r}; the file is damaged, replace it")
        yield kind, body
        pos += 12 + length


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(raw: np.ndarray, height: int, stride: int, bpp: int, path: Path) -> np.ndarray:
    """Undo the per-row filters. Rows of types 0-2 only: row by row, vectorised. With Average or Paeth
    rows (every row depends on its decoded left and upper neighbours): one anti-diagonal wavefront of pixels
    at a time, all five predictors computed and chosen by each pixel's row filter (H + W NumPy steps
    instead of H x W Python steps)."""
    rows = raw.reshape(height, stride + 1)
    ftypes = rows[:, 0].astype(np.int64)
    if (ftypes > 4).any():
        y = int(np.flatnonzero(ftypes > 4)[0])
        raise ZskError(f"{path}: PNG row {y} has unknown filter type {int(ftypes[y])}; the file is damaged")
    data = rows[:, 1:].astype(np.int64)
    if not (ftypes >= 3).any():
        out = np.zeros((height, stride), dtype=np.int64)
        prev = np.zeros(stride, dtype=np.int64)
        for y in range(height):
            row, f = data[y], ftypes[y]
            if f == 1:
                row = np.cumsum(row.reshape(-1, bpp), axis=0).reshape(-1) % 256
            elif f == 2:
                row = (row + prev) % 256
            out[y] = row
            prev = row
        return out
    width = stride // bpp
    px = data.reshape(height, width, bpp)
    out = np.zeros((height + 1, width + 1, bpp), dtype=np.int64)  # row 0 and column 0: the zero border
    for d in range(height + width - 1):
        ys = np.arange(max(0, d - width + 1), min(height, d + 1))
        xs = d - ys
        left, up, upleft = out[ys + 1, xs], out[ys, xs + 1], out[ys, xs]
        f = ftypes[ys][:, None]
        pred = np.where(f == 1, left, np.where(f == 2, up, np.where(f == 3, (left + up) // 2, np.where(
            f == 4, _paeth(left, up, upleft), 0))))
        out[ys + 1, xs + 1] = (px[ys, xs] + pred) % 256
    return out[1:, 1:].reshape(height, stride)


def read_png16(path: str | Path) -> np.ndarray:
    """A 16-bit PNG as (H, W) or (H, W, C) uint16; 8-bit or interlaced files are a ZskError (read those
    with Pillow)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ZskError(f"label {p} does not exist") from None
    except OSError as e:
        raise ZskError(f"label {p} cannot be read ({e.strerror or e})") from None
    if not data.startswith(SIGNATURE):
        raise ZskError(f"label {p} is not a PNG file; SYNTHIA labels are 16-bit PNGs")
    header, idat = None, []
    for kind, body in _chunks(data, p):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ZskError(f"label {p}: PNG without an IHDR chunk; the file is damaged")
    width, height, depth, ctype, _, _, interlace = header
    if depth != 16 or ctype not in CHANNELS or interlace:
        raise ZskError(f"label {p}: not a non-interlaced 16-bit PNG (bit depth {depth}, colour type {ctype})")
    channels = CHANNELS[ctype]
    bpp, stride = 2 * channels, 2 * channels * width
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    except zlib.error as e:
        raise ZskError(f"label {p}: corrupt PNG data ({e}); replace the file") from None
    if raw.size != height * (stride + 1):
        raise ZskError(f"label {p}: PNG data holds {raw.size} bytes, expected {height * (stride + 1)}; damaged file")
    rows = _unfilter(raw, height, stride, bpp, p).astype(np.uint8)
    arr = rows.reshape(height, width * channels, 2)
    values = (arr[..., 0].astype(np.uint16) << 8) | arr[..., 1].astype(np.uint16)
    values = values.reshape(height, width, channels)
    return values[..., 0] if channels == 1 else values


def _filter_rows(rows: np.ndarray, bpp: int, ftypes: np.ndarray) -> np.ndarray:
    """Apply PNG filter ``ftypes[y]`` to row y (encoding works on the original bytes, so it vectorises)."""
    x = rows.astype(np.int64)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    upleft = np.zeros_like(x)
    upleft[1:, bpp:] = x[:-1, :-bpp]
    f = ftypes[:, None]
    pred = np.where(f == 1, left, np.where(f == 2, up, np.where(f == 3, (left + up) // 2, np.where(
        f == 4, _paeth(left, up, upleft), 0))))
    return ((x - pred) % 256).astype(np.uint8)


def write_png16(path: str | Path, values: np.ndarray, filter_type: int | Sequence[int] = 0) -> None:
    """Write (H, W) or (H, W, C in 1..4) integer values as a 16-bit PNG; ``filter_type``: one PNG filter
    (0-4) for every row, or one per row (cycled)."""
    v = np.asarray(values)
    if v.ndim == 2:
        v = v[..., None]
    h, w, c = v.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    cycle = [filter_type] if isinstance(filter_type, int) else list(filter_type)
    ftypes = np.array([cycle[y % len(cycle)] for y in range(h)], dtype=np.int64)
    be = v.astype(">u2").view(np.uint8).reshape(h, w * c * 2)
    filtered = _filter_rows(be, 2 * c, ftypes)
    raw = np.concatenate([ftypes.astype(np.uint8)[:, None], filtered], 1).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    Path(path).write_bytes(SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
