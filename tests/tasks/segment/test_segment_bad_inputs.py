"""Malformed inputs a new user would try, across every segment verb: each exits 2 with one `error:` line naming the
file or the recipe key (no traceback, no "unexpected ..."). Table-driven (issue 12).

`ROWS` holds argv templates (`{d}`: the folder `write_inputs` fills, `{voc}`: a copy of the sample VOC set with
extra bad items and split lists, `{ckpt}`: a tiny trained best.pt) so the table is written once and read by this
test (in-process, `CliRunner`) and by a standalone counting script.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(path: Path, side: int = 20000) -> None:
    """A valid PNG header claiming side x side RGB pixels (Pillow refuses it as a decompression bomb on open)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def _voc_item(voc: Path, name: str, image: np.ndarray, label: np.ndarray | None) -> None:
    Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
    if label is not None:
        Image.fromarray(label.astype(np.uint8)).save(voc / "SegmentationClass" / f"{name}.png")  # L, or RGB


def _split(voc: Path, split: str, names: list[str]) -> None:
    (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))


def write_inputs(d: Path, sample: Path, ckpt: Path) -> None:
    """Every malformed file of the table in its real format: images, label PNGs, split lists, class-name files,
    class-embedding .npy files, checkpoints, recipes, and a copy of the sample VOC set (``d/voc``) with bad items."""
    import torch

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    jpgs = sorted((sample / "JPEGImages").glob("*.jpg"))
    # images predict is given
    (d / "garbage.jpg").write_bytes(b"\xff\xd8 this is no JPEG" * 20)
    (d / "empty.png").write_bytes(b"")
    shutil.copy(jpgs[0], d / "trunc.jpg")
    _truncate(d / "trunc.jpg", 0.4)
    Image.fromarray(rng.integers(0, 255, (3, 2000, 3), dtype=np.uint8)).save(d / "thin.png")
    Image.fromarray(rng.integers(0, 255, (2000, 3, 3), dtype=np.uint8)).save(d / "tall.png")
    _bomb_png(d / "bomb.png")
    (d / "emptydir").mkdir(exist_ok=True)
    (d / "afile").write_text("an existing file, not a folder\n")
    # class-name files
    (d / "classes_empty.txt").write_text("# only a comment\n\n")
    (d / "classes_bin.txt").write_bytes(bytes(range(128, 256)) * 4)
    (d / "classes300.txt").write_text("".join(f"thing{i}\n" for i in range(300)))
    (d / "cat_dog.txt").write_text("cat\ndog\n")
    # class embeddings (model.text.embeddings_file): the demo's are (20, 64)
    emb = np.load(sample / "class_embeddings_tiny.npy")
    np.save(d / "emb_str.npy", np.full(emb.shape, "x"))
    bad = emb.copy()
    bad[3, 5] = np.nan
    bad[7, 0] = np.inf
    np.save(d / "emb_nan.npy", bad)
    np.save(d / "emb_shape.npy", emb[:, :10])
    np.save(d / "emb_trunc.npy", emb)
    _truncate(d / "emb_trunc.npy")
    np.save(d / "emb_pickle.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)
    # checkpoints: another task's, garbage, truncated
    torch.save({"format_version": 1, "task": "medseg", "recipe": {"task": "medseg"}, "model": {}}, d / "medseg.pt")
    (d / "garbage.pt").write_bytes(b"not a torch file" * 8)
    shutil.copy(ckpt, d / "trunc.pt")
    _truncate(d / "trunc.pt")
    # recipes
    (d / "bad.yaml").write_text("task: segment\ndata: [unclosed\n")
    # a folder dataset without its classes.txt
    for sub in ("images", "masks"):
        (d / "fold" / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "fold" / "images" / "a.jpg")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(d / "fold" / "masks" / "a.png")
    # the sample VOC set with bad items under their own split lists
    voc = d / "voc"
    if voc.exists():
        shutil.rmtree(voc)
    shutil.copytree(sample, voc)
    image = np.asarray(Image.open(jpgs[0]).convert("RGB"))
    h, w = image.shape[:2]
    good = np.zeros((h, w), np.uint8)
    good[h // 4 : h // 2, w // 4 : w // 2] = 8  # cat
    ids = good.copy()
    ids[:4, :4] = 50
    ids[-4:, -4:] = 21  # VOC stores 20 classes as 1..20: 21 and 50 are beyond them, 255 stays allowed
    ids[5, :] = 255
    _voc_item(voc, "bid", image, ids)
    _voc_item(voc, "bsize", image, good[:5, :5])
    _voc_item(voc, "rgbmask", image, np.stack([good] * 3, -1))
    _voc_item(voc, "tmask", image, good)
    _truncate(voc / "SegmentationClass" / "tmask.png")
    thin = rng.integers(0, 255, (4, 600, 3), dtype=np.uint8)
    _voc_item(voc, "thin_0", thin, np.zeros((4, 600), np.uint8))
    _split(voc, "bad_ids", ["bid"])
    _split(voc, "bad_size", ["bsize"])
    _split(voc, "rgb_mask", ["rgbmask"])
    _split(voc, "trunc_mask", ["tmask"])
    _split(voc, "missing_img", ["ghost"])
    _split(voc, "thin", ["thin_0"])
    _split(voc, "empty", [])
    (voc / "ImageSets" / "Segmentation" / "binsplit.txt").write_bytes(bytes(range(128, 256)) * 4)
    train_names = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    _split(voc, "bad_train", [*train_names[:5], "bid"])


PRED = ["predict", "-c", "{ckpt}", "--out", "{d}/pred"]
EVAL = ["eval", "-c", "{ckpt}", "--set", "data.root={voc}"]
TRAIN = ["train", "--recipe", "segment/demo", "--out", "{d}/runs/{id}", "--set", "data.root={voc}", "--set",
         "runtime.workers=0"]
INFO = ["info", "--recipe", "segment/demo"]

# (id, argv, fragments the one-line error must contain)
ROWS: list[tuple[str, list[str], tuple[str, ...]]] = [
    # predict: missing, corrupt and unusable images
    ("predict-missing-image", [*PRED, "{d}/nope.jpg"], ("nope.jpg",)),
    ("predict-garbage-jpeg", [*PRED, "{d}/garbage.jpg"], ("garbage.jpg",)),
    ("predict-zero-byte-png", [*PRED, "{d}/empty.png"], ("empty.png",)),
    ("predict-truncated-jpeg", [*PRED, "{d}/trunc.jpg"], ("trunc.jpg",)),
    ("predict-3x2000-image", [*PRED, "{d}/thin.png"], ("thin.png", "32:1")),
    ("predict-2000x3-image", [*PRED, "{d}/tall.png"], ("tall.png",)),
    ("predict-decompression-bomb", [*PRED, "{d}/bomb.png"], ("bomb.png",)),
    ("predict-empty-folder", [*PRED, "{d}/emptydir"], ("emptydir",)),
    ("predict-no-match-glob", [*PRED, "{d}/*.webp"], ("*.webp",)),
    # predict: class vocabularies
    ("predict-blank-classes", [*PRED, "{d}/trunc.jpg", "--classes", " , "], ("--classes",)),
    ("predict-repeated-classes", [*PRED, "{voc}/JPEGImages/bid.jpg", "--classes", "cat,cat"], ("--classes",)),
    ("predict-classes-and-file", [*PRED, "{voc}/JPEGImages/bid.jpg", "--classes", "cat", "--classes-file",
                                  "{d}/cat_dog.txt"], ("--classes-file",)),
    ("predict-missing-classes-file", [*PRED, "{voc}/JPEGImages/bid.jpg", "--classes-file", "{d}/nofile.txt"],
     ("nofile.txt",)),
    ("predict-empty-classes-file", [*PRED, "{voc}/JPEGImages/bid.jpg", "--classes-file", "{d}/classes_empty.txt"],
     ("classes_empty.txt",)),
    ("predict-binary-classes-file", [*PRED, "{voc}/JPEGImages/bid.jpg", "--classes-file", "{d}/classes_bin.txt"],
     ("classes_bin.txt",)),
    ("predict-300-classes", [*PRED, "{voc}/JPEGImages/bid.jpg", "--classes-file", "{d}/classes300.txt"],
     ("--classes-file", "300")),
    # predict: outputs, checkpoints, --set
    ("predict-out-is-a-file", ["predict", "-c", "{ckpt}", "--out", "{d}/afile", "{voc}/JPEGImages/bid.jpg"],
     ("afile",)),
    ("predict-checkpoint-of-medseg", ["predict", "-c", "{d}/medseg.pt", "{voc}/JPEGImages/bid.jpg"], ("medseg",)),
    ("predict-garbage-checkpoint", ["predict", "-c", "{d}/garbage.pt", "{voc}/JPEGImages/bid.jpg"], ("garbage.pt",)),
    ("predict-truncated-checkpoint", ["predict", "-c", "{d}/trunc.pt", "{voc}/JPEGImages/bid.jpg"], ("trunc.pt",)),
    ("predict-missing-checkpoint", ["predict", "-c", "{d}/missing.pt", "{voc}/JPEGImages/bid.jpg"], ("missing.pt",)),
    ("predict-set-changes-model", [*PRED, "{voc}/JPEGImages/bid.jpg", "--set", "model.num_prompts=5"], ("best.pt",)),
    ("predict-stride-zero", [*PRED, "{voc}/JPEGImages/bid.jpg", "--set", "eval.stride=0"], ("eval.stride",)),
    ("predict-img-scale-zero", [*PRED, "{voc}/JPEGImages/bid.jpg", "--set", "eval.img_scale=[0,0]"],
     ("eval.img_scale",)),
    # eval: masks and split lists that do not fit
    ("eval-label-ids-beyond-classes", [*EVAL, "--split", "bad_ids"], ("bid.png", "[21, 50]")),
    ("eval-label-ids-in-a-worker", [*EVAL, "--split", "bad_ids", "--set", "runtime.workers=2"],
     ("bid.png", "[21, 50]")),
    ("eval-mask-size-mismatch", [*EVAL, "--split", "bad_size"], ("bsize.png",)),
    ("eval-rgb-mask", [*EVAL, "--split", "rgb_mask"], ("rgbmask.png",)),
    ("eval-truncated-mask", [*EVAL, "--split", "trunc_mask"], ("tmask.png",)),
    ("eval-split-names-missing-image", [*EVAL, "--split", "missing_img"], ("ghost.jpg",)),
    ("eval-empty-split", [*EVAL, "--split", "empty"], ("empty",)),
    ("eval-binary-split-file", [*EVAL, "--split", "binsplit"], ("binsplit.txt",)),
    ("eval-unknown-split", [*EVAL, "--split", "nosuch"], ("nosuch",)),
    ("eval-thin-image", [*EVAL, "--split", "thin"], ("thin_0.jpg",)),
    ("eval-missing-root", ["eval", "-c", "{ckpt}", "--set", "data.root={d}/nowhere"], ("nowhere",)),
    ("eval-folder-without-classes", ["eval", "-c", "{ckpt}", "--set", "data.dataset=folder", "--set",
                                     "data.root={d}/fold"], ("classes.txt",)),
    # eval: keys, outputs, checkpoints
    ("eval-max-images-zero", [*EVAL, "--set", "eval.max_images=0"], ("eval.max_images",)),
    ("eval-calibration-nan", [*EVAL, "--set", "eval.seen_calibration=.nan"], ("eval.seen_calibration",)),
    ("eval-unknown-key", [*EVAL, "--set", "eval.nosuch=1"], ("eval.nosuch",)),
    ("eval-out-is-a-file", [*EVAL, "--out", "{d}/afile"], ("afile",)),
    ("eval-set-changes-model", [*EVAL, "--set", "model.decoder_layers=2"], ("best.pt",)),
    ("eval-checkpoint-of-medseg", ["eval", "-c", "{d}/medseg.pt"], ("medseg",)),
    # train: data
    ("train-label-ids-in-a-worker", [*TRAIN, "--set", "data.train_split=bad_train", "--set", "train.batch_size=2",
                                     "--set", "runtime.workers=2"], ("bid.png", "[21, 50]")),
    ("train-empty-split", [*TRAIN, "--set", "data.train_split=empty"], ("empty",)),
    ("train-embeddings-strings", [*TRAIN, "--set", "model.text.embeddings_file={d}/emb_str.npy"], ("emb_str.npy",)),
    ("train-embeddings-nan", [*TRAIN, "--set", "model.text.embeddings_file={d}/emb_nan.npy"], ("emb_nan.npy",)),
    ("train-embeddings-wrong-width", [*TRAIN, "--set", "model.text.embeddings_file={d}/emb_shape.npy"],
     ("emb_shape.npy",)),
    ("train-embeddings-truncated", [*TRAIN, "--set", "model.text.embeddings_file={d}/emb_trunc.npy"],
     ("emb_trunc.npy",)),
    ("train-embeddings-pickled", [*TRAIN, "--set", "model.text.embeddings_file={d}/emb_pickle.npy"],
     ("emb_pickle.npy",)),
    ("train-unknown-unseen-class", [*TRAIN, "--set", "data.unseen_classes=[sheep, unicorn]"], ("unicorn",)),
    ("train-out-is-a-file", ["train", "--recipe", "segment/demo", "--out", "{d}/afile", "--set", "data.root={voc}"],
     ("afile",)),
    # train: task keys out of range or of the wrong type
    ("train-negative-lr-mult", [*TRAIN, "--set", "train.backbone_lr_mult=-1"], ("train.backbone_lr_mult",)),
    ("train-zero-prompts", [*TRAIN, "--set", "model.num_prompts=0"], ("model.num_prompts",)),
    ("train-prompts-not-a-number", [*TRAIN, "--set", "model.num_prompts=ten"], ("model.num_prompts",)),
    ("train-flip-prob-2", [*TRAIN, "--set", "data.flip_prob=2"], ("data.flip_prob",)),
    ("train-ratio-range-reversed", [*TRAIN, "--set", "data.ratio_range=[2.0, 0.5]"], ("data.ratio_range",)),
    ("train-focal-alpha-1.5", [*TRAIN, "--set", "train.loss.focal_alpha=1.5"], ("train.loss.focal_alpha",)),
    ("train-focal-weight-inf", [*TRAIN, "--set", "train.loss.focal_weight=.inf"], ("train.loss.focal_weight",)),
    ("train-heads-not-dividing", [*TRAIN, "--set", "model.decoder_heads=3"], ("model.decoder_heads",)),
    ("train-crop-not-patch-multiple", [*TRAIN, "--set", "data.crop_size=100"], ("data.crop_size",)),
    ("train-effective-batch-zero", [*TRAIN, "--set", "train.effective_batch=0"], ("train.effective_batch",)),
    ("train-templates-without-braces", [*TRAIN, "--set", "model.text.templates=[a photo]"],
     ("model.text.templates",)),
    ("train-unknown-setting", [*TRAIN, "--set", "train.setting=zero"], ("train.setting",)),
    ("train-negative-lr", [*TRAIN, "--set", "train.lr=-1"], ("train.lr",)),
    # info and sample
    ("info-zero-decoder-layers", [*INFO, "--set", "model.decoder_layers=0"], ("model.decoder_layers",)),
    ("info-prompt-dropout-1", [*INFO, "--set", "model.prompt_dropout=1"], ("model.prompt_dropout",)),
    ("info-missing-recipe", ["info", "--recipe", "{d}/nope.yaml"], ("nope.yaml",)),
    ("info-invalid-yaml", ["info", "--recipe", "{d}/bad.yaml"], ("bad.yaml",)),
    ("sample-zero-train", ["sample", "{d}/s", "--train", "0"], ("--train",)),
    ("sample-into-a-file", ["sample", "{d}/afile"], ("afile",)),
]


def argv(row: tuple[str, list[str], tuple[str, ...]], d: Path, voc: Path, ckpt: Path) -> list[str]:
    """The row's argv with its placeholders filled in."""
    rid, args, _ = row
    return [a.format(d=d, voc=voc, ckpt=ckpt, id=rid) for a in args]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny trained checkpoint (2 steps of the demo recipe on a small sample) and the table's files."""
    from typer.testing import CliRunner

    from zsk.tasks.segment.cli import app

    root = tmp_path_factory.mktemp("segment-bad")
    mp = pytest.MonkeyPatch()
    mp.setenv("ZSK_CACHE", str(tmp_path_factory.mktemp("segment-bad-cache")))
    runner = CliRunner()
    sample = root / "sample"
    r = runner.invoke(app, ["sample", str(sample), "--train", "8", "--val", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--recipe", "segment/demo", "--set", f"data.root={sample}", "--set", "train.steps=2",
                            "--set", "runtime.workers=0", "--out", str(root / "run"), "--quiet"])
    assert r.exit_code == 0, r.output
    ckpt = root / "run" / "best.pt"
    write_inputs(root / "in", sample, ckpt)
    yield {"d": root / "in", "voc": root / "in" / "voc", "ckpt": ckpt, "runner": runner, "app": app}
    mp.undo()


def test_table_is_large_and_unique() -> None:
    assert len(ROWS) >= 20 and len({r[0] for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_exits_2_with_one_line_naming_it(table: dict, row: tuple[str, list[str], tuple[str, ...]],
                                                    one_error_line) -> None:  # noqa: ANN001
    one_error_line(table["runner"].invoke(table["app"], argv(row, table["d"], table["voc"], table["ckpt"])), row[2])

