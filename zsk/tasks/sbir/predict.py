"""``zsk sbir predict``: retrieve the nearest gallery photos of query sketches. One JSON row per sketch (the
top-k photos with class names and cosine scores; all rows also in ``OUT/predictions.jsonl``) and a PNG strip:
the sketch, its generated photo G(s), then the matches with their class names, framed green when of the
sketch's class and red otherwise (no frame when the sketch's class is unknown). The gallery is embedded once
per checkpoint and cached."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, atomic_open, atomic_path, output_folder, output_names
from zsk.core.progress import to_json
from zsk.core.task import Loaded
from zsk.metrics.ranking import top_k as nearest
from zsk.tasks.sbir.config import Config
from zsk.tasks.sbir.data import list_images, load_image, load_split, scan_domain
from zsk.tasks.sbir.evaluate import gallery_embeddings

TILE = 128


def read_gallery(folder: Path | None, cfg: Config) -> tuple[list[Path], list[str | None]]:
    """Gallery photos and their classes: ``folder/<class>/*`` (or ``folder/photo/<class>/*``, an ACNet split
    folder), a flat folder of photos (classes unknown), or, without a folder, the photos of the recipe's
    evaluation split."""
    if folder is None:
        split = load_split(cfg.data, cfg.eval.split or "val")
        return [p for p, _ in split.photos], [split.classes[c] for _, c in split.photos]
    folder = Path(folder)
    if not folder.is_dir():
        raise ZskError(f"--gallery {folder} is not a folder; give a folder of photos or of class folders of photos")
    if (folder / "photo").is_dir():
        folder = folder / "photo"
    flat = list_images(folder, cfg.data.suffixes)
    if flat:
        return flat, [None] * len(flat)
    classes = scan_domain(folder, cfg.data.suffixes, "gallery")
    paths = [p for files in classes.values() for p in files]
    return paths, [c for c, files in classes.items() for _ in files]


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def _tile(image: np.ndarray, caption: str, frame: tuple[int, int, int] | None) -> Any:
    from PIL import Image, ImageDraw, ImageFont

    tile = Image.new("RGB", (TILE, TILE + 18), (255, 255, 255))
    tile.paste(Image.fromarray(image).resize((TILE - 8, TILE - 8), Image.BILINEAR), (4, 4))
    draw = ImageDraw.Draw(tile)
    if frame is not None:
        draw.rectangle([0, 0, TILE - 1, TILE - 1], outline=frame, width=4)
    draw.text((4, TILE + 2), caption[:22], fill=(0, 0, 0), font=ImageFont.load_default())
    return tile


def save_strip(path: Path, sketch: np.ndarray, fake: np.ndarray, matches: Sequence[dict[str, Any]],
               images: Sequence[np.ndarray]) -> None:
    """The PNG strip of one query: sketch, G(sketch), then the matches (class and score under each; green
    frame = correct class, red = other class)."""
    from PIL import Image

    tiles = [_tile(sketch, "sketch", None), _tile(fake, "generated G(s)", None)]
    for m, img in zip(matches, images, strict=True):
        frame = None if m["correct"] is None else ((0, 170, 0) if m["correct"] else (220, 0, 0))
        tiles.append(_tile(img, f"{m['rank']}. {m['class'] or '?'} {m['score']:.2f}", frame))
    strip = Image.new("RGB", (TILE * len(tiles), TILE + 18), (255, 255, 255))
    for i, t in enumerate(tiles):
        strip.paste(t, (i * TILE, 0))
    with atomic_path(path) as tmp:
        strip.save(tmp, format="PNG")


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path, *, gallery: Path | None = None,
            top_k: int = 10, strip: bool = True) -> Iterator[dict[str, Any]]:
    """Rank the gallery for each sketch: E(G(s)) against the cached E(p), cosine similarity (a faiss flat
    index from ``eval.faiss_min_gallery`` photos on). The sketch's class is its parent folder's name when the
    gallery has that class. Writes the rows to ``out/predictions.jsonl`` (atomically, once every sketch is
    done) and ``<name>_strip.png`` per sketch under ``out`` (unless ``strip`` is off)."""
    cfg: Config = loaded.cfg
    items = list(inputs)
    if any(isinstance(i, StdinInput) for i in items):
        raise ZskError("sbir predict reads sketch image files; '-' gives their paths on stdin")
    if top_k < 1:
        raise ZskError(f"--top-k must be >= 1, got {top_k}")
    paths = [Path(p) for p in items]  # type: ignore[arg-type]
    photos, classes = read_gallery(gallery, cfg)
    model = loaded.model
    device = loaded.device
    g_emb = gallery_embeddings(model, cfg, photos, device, loaded.checkpoint)
    known = {c for c in classes if c is not None}
    names = output_names(paths)
    out = output_folder(out)
    use_faiss = len(photos) >= cfg.eval.faiss_min_gallery
    rows = []
    for path, name in zip(paths, names, strict=True):
        x = load_image(path, cfg.data.image_size)[None].to(device)
        with torch.no_grad():
            fake = model.generator(x)
            q = model.extractor(fake).float().cpu()
        scores, idx = nearest(q, g_emb, top_k, use_faiss=use_faiss)
        label = path.parent.name if path.parent.name in known else None
        matches = []
        for r, (s, i) in enumerate(zip(scores[0].tolist(), idx[0].tolist(), strict=True), start=1):
            c = classes[i]
            matches.append({"rank": r, "photo": str(photos[i]), "class": c, "score": float(s),
                            "correct": None if label is None or c is None else c == label})
        row: dict[str, Any] = {"input": str(path), "class": label, "matches": matches}
        if label is not None:
            row["precision"] = sum(bool(m["correct"]) for m in matches) / len(matches)
        if strip:
            png = out / f"{name}_strip.png"
            try:
                save_strip(png, _to_uint8(x[0]), _to_uint8(fake[0].float()), matches,
                           [_to_uint8(load_image(Path(m["photo"]), cfg.data.image_size)) for m in matches])
            except OSError as e:
                raise ZskError(f"--out {out}: cannot write {png.name} ({e.strerror or e}); choose a writable --out") from None
            row["strip"] = str(png)
        rows.append(row)
        yield row
    with atomic_open(out / "predictions.jsonl", "w") as f:
        f.write("".join(to_json(r) + "\n" for r in rows))
