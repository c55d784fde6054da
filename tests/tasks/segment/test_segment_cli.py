"""End to end through the command line: sample -> train -> eval --json -> predict, plus learning and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from zsk.core.errors import ZskError
from zsk.tasks.segment.cli import app

runner = CliRunner()
# a short version of recipes/segment/demo.yaml (same model and data; fewer steps, smaller sample)
FAST = ["--set", "train.steps=100", "--set", "train.log_every=50", "--set", "runtime.workers=0"]


def _run(args: list[str], input: str | None = None):
    result = runner.invoke(app, args, input=input)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("segment")
    cache = tmp_path_factory.mktemp("segment-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("ZSK_CACHE", str(cache))
    data = root / "data"
    r = _run(["sample", str(data), "--train", "24", "--val", "6", "--json"])
    assert r.exit_code == 0, r.output
    out = root / "run"
    r = _run(["train", "--recipe", "segment/demo", "--set", f"data.root={data}", *FAST, "--out", str(out), "--json",
              "--quiet"])
    assert r.exit_code == 0, r.output
    mp.undo()
    return {"root": root, "data": data, "run": out, "train_out": r.stdout}


def test_sample_is_in_the_voc_layout(trained: dict) -> None:
    data = trained["data"]
    assert (data / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == [f"2026_train_{i:04d}" for i in range(24)]
    lab = Image.open(data / "SegmentationClass" / "2026_val_0000.png")
    img = Image.open(data / "JPEGImages" / "2026_val_0000.jpg")
    assert lab.mode == "P" and lab.size == img.size
    values = set(np.unique(np.array(lab)).tolist())
    assert values <= {0, 255} | {c + 1 for c in range(20)} and len(values) >= 3


def test_train_writes_the_run_directory(trained: dict) -> None:
    run = trained["run"]
    for name in ("recipe.yaml", "metrics.jsonl", "last.pt", "best.pt", "eval.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [ln["loss"] for ln in lines if ln["kind"] == "train"]
    assert losses[-1] < losses[0]


def test_eval_json_and_learning(trained: dict) -> None:
    r = _run(["eval", "--checkpoint", str(trained["run"] / "best.pt"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(res) >= {"mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "per_class"}
    assert set(res["per_class"]) == set(json.loads((trained["run"] / "eval.json").read_text())["per_class"])
    s, u = res["mIoU_seen"], res["mIoU_unseen"]
    assert res["hIoU"] == pytest.approx(2 * s * u / (s + u) if s + u else 0.0)
    # learning: the trained model segments the seen classes far above an untrained one of the same recipe
    from zsk.core.run import load_config
    from zsk.tasks.segment.config import Config
    from zsk.tasks.segment.data import SegEvalDataset, load_benchmark
    from zsk.tasks.segment.evaluate import evaluate_model
    from zsk.tasks.segment.train import build_model, text_embeddings_for

    cfg, _ = load_config("segment", Config, "segment/demo", [f"data.root={trained['data']}", *FAST[1::2]])
    torch.manual_seed(0)
    model, loaded = build_model(cfg)
    bench = load_benchmark(cfg.data)
    text = text_embeddings_for(model, loaded, cfg, bench.class_names, cfg.model.text.embeddings_file)
    before = evaluate_model(model, SegEvalDataset(bench, "val"), text, bench, cfg, 0.1, torch.device("cpu"))
    assert res["mIoU_seen"] > 0.35, res
    assert res["mIoU_seen"] > before["mIoU_seen"] + 0.25
    assert res["pAcc"] > 0.5


def test_predict_open_vocabulary_and_stdin(trained: dict, tmp_path: Path) -> None:
    images = sorted((trained["data"] / "JPEGImages").glob("2026_val_*.jpg"))[:2]
    out = tmp_path / "pred"
    r = _run(["predict", str(images[0]), "--checkpoint", str(trained["run"] / "best.pt"), "--out", str(out),
              "--classes", "cat, dog,grass", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    legend = json.loads(Path(rec["legend"]).read_text())
    assert [c["name"] for c in legend["classes"]] == ["cat", "dog", "grass"]
    assert sum(c["pixels"] for c in legend["classes"]) == Image.open(images[0]).size[0] * Image.open(images[0]).size[1]
    mask = Image.open(rec["mask"])
    assert mask.mode == "P" and mask.size == Image.open(images[0]).size
    assert np.array(mask).max() <= 2
    # the overlay is the image's size plus a legend panel on its right (issue 12)
    ov = Image.open(rec["overlay"])
    assert ov.width > mask.width and ov.height >= mask.height
    # paths from stdin, checkpoint's own classes
    r = _run(["predict", "-", "--checkpoint", str(trained["run"] / "best.pt"), "--out", str(out), "--json"],
             input="\n".join(str(p) for p in images) + "\n")
    assert r.exit_code == 0, r.output
    assert len(r.stdout.strip().splitlines()) == 2
    legend = json.loads((out / f"{images[1].stem}.json").read_text())
    assert len(legend["classes"]) == 20


def test_predict_a_folder_with_a_classes_file(trained: dict, tmp_path: Path) -> None:
    """A folder expands to its images (other files skipped); --classes-file gives the vocabulary."""
    folder = tmp_path / "in"
    folder.mkdir()
    for img in sorted((trained["data"] / "JPEGImages").glob("2026_val_*.jpg"))[:2]:
        shutil.copy(img, folder / img.name)
    (folder / "notes.txt").write_text("not an image\n")
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    out = tmp_path / "pred"
    r = _run(["predict", str(folder), "--checkpoint", str(trained["run"] / "best.pt"), "--out", str(out),
              "--classes-file", str(names), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(ln) for ln in r.stdout.strip().splitlines()]
    assert [Path(row["input"]).name for row in rows] == sorted(p.name for p in folder.glob("*.jpg"))
    for row in rows:
        assert [c["name"] for c in json.loads(Path(row["legend"]).read_text())["classes"]] == ["cat", "dog"]
    r = _run(["predict", str(folder), "--checkpoint", str(trained["run"] / "best.pt"), "--out", str(out),
              "--classes", "cat", "--classes-file", str(names)])
    assert r.exit_code == 2 and "--classes-file" in r.output


def test_checkpoint_predicts_the_same_after_reloading(trained: dict, tmp_path: Path) -> None:
    img = sorted((trained["data"] / "JPEGImages").glob("*.jpg"))[0]
    a, b = tmp_path / "a", tmp_path / "b"
    for o in (a, b):
        assert _run(["predict", str(img), "--checkpoint", str(trained["run"] / "best.pt"), "--out", str(o)]).exit_code == 0
    assert np.array_equal(np.array(Image.open(a / f"{img.stem}.png")), np.array(Image.open(b / f"{img.stem}.png")))


def _scores_argmax(checkpoint: Path, image_path: Path, names: list[str] | None = None) -> np.ndarray:
    """The class index per pixel, computed here from the model (not from predict's files)."""
    from zsk.tasks.segment.evaluate import calibration_for, load, segment_scores
    from zsk.tasks.segment.train import text_embeddings_for

    loaded = load(checkpoint)
    trained = list(loaded.extra["class_names"])
    if names is None:
        names, text = trained, loaded.extra["text_embeddings"].float()
    else:
        text = text_embeddings_for(loaded.model, loaded.parts["clip"], loaded.cfg, names)
    seen = [i for i, n in enumerate(names) if n in {trained[j] for j in loaded.extra["seen"]}]
    image = np.array(Image.open(image_path).convert("RGB"))
    scores = segment_scores(loaded.model, torch.from_numpy(image), text, loaded.cfg.eval, loaded.cfg.data.normalize,
                            seen, calibration_for(loaded.extra["setting"], loaded.cfg.eval), loaded.device)
    return scores.argmax(0).numpy()


def test_predict_masks_keep_the_dataset_ids_and_the_overlay_has_a_legend(trained: dict, tmp_path: Path) -> None:
    """VOC stores class k as k + 1 (0 = background): predicted masks do too, with VOC's palette, so they read
    like the dataset's own label PNGs; the overlay carries a legend panel of the classes present, in their
    colours; the JSON legend gives each class's mask id. Open-vocabulary classes keep their list positions
    and class 0 is not drawn black (black is VOC's background)."""
    from zsk.data.images import VOC_CLASSES, voc_palette

    ckpt = trained["run"] / "best.pt"
    img_path = sorted((trained["data"] / "JPEGImages").glob("2026_val_*.jpg"))[0]
    out = tmp_path / "pred"
    r = _run(["predict", str(img_path), "--checkpoint", str(ckpt), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    pred = _scores_argmax(ckpt, img_path)
    mask_im = Image.open(rec["mask"])
    mask = np.array(mask_im)
    assert np.array_equal(mask, pred + 1)  # the dataset's ids, not the class index
    pal = np.array(mask_im.getpalette()[: 21 * 3]).reshape(21, 3)
    assert np.array_equal(pal, voc_palette()[:21])
    legend = json.loads(Path(rec["legend"]).read_text())
    assert [c["id"] for c in legend["classes"]] == list(range(1, 21))
    assert [c["name"] for c in legend["classes"]] == list(VOC_CLASSES)
    counts = np.bincount(mask.reshape(-1), minlength=21)
    assert all(c["pixels"] == counts[c["id"]] for c in legend["classes"])
    assert all(c["color"] == voc_palette()[c["id"]].tolist() for c in legend["classes"])
    # the overlay: the blended image on the left, a legend panel on the right with a swatch per class present
    image = np.array(Image.open(img_path).convert("RGB")).astype(np.float32)
    ov = np.array(Image.open(rec["overlay"]).convert("RGB"))
    h, w = mask.shape
    blend = (image * 0.5 + voc_palette()[mask].astype(np.float32) * 0.5).clip(0, 255).astype(np.uint8)
    assert np.array_equal(ov[:h, :w], blend)
    panel = ov[:, w:].reshape(-1, 3)
    colours_in_panel = {tuple(c) for c in np.unique(panel, axis=0).tolist()}
    present = {i for i in range(1, 21) if counts[i]}
    assert present and all(tuple(voc_palette()[i].tolist()) in colours_in_panel for i in present)
    assert (panel.sum(1) < 100).sum() > 20  # text drawn in black

    # open vocabulary: ids are positions in --classes; class 0 gets a colour, not VOC's black background
    r = _run(["predict", str(img_path), "--checkpoint", str(ckpt), "--out", str(tmp_path / "ov"), "--classes",
              "cat,dog,grass", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    mask = np.array(Image.open(rec["mask"]))
    assert np.array_equal(mask, _scores_argmax(ckpt, img_path, ["cat", "dog", "grass"]))
    legend = json.loads(Path(rec["legend"]).read_text())
    assert [c["id"] for c in legend["classes"]] == [0, 1, 2]
    assert legend["classes"][0]["color"] != [0, 0, 0]
    assert len({tuple(c["color"]) for c in legend["classes"]}) == 3


def test_predict_inputs_sharing_a_stem_keep_both_outputs_with_stable_names(trained: dict, tmp_path: Path) -> None:
    """x.jpg and x.png in one folder and x.jpg in another: three inputs, three sets of files, each from its own
    image, and the same names when the command runs again."""
    vals = sorted((trained["data"] / "JPEGImages").glob("2026_val_*.jpg"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(vals[0], tmp_path / "a" / "x.jpg")
    Image.open(vals[1]).save(tmp_path / "a" / "x.png")
    shutil.copy(vals[2], tmp_path / "b" / "x.jpg")
    inputs = [tmp_path / "a" / "x.jpg", tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg"]
    ckpt = str(trained["run"] / "best.pt")
    runs = []
    for _ in range(2):
        r = _run(["predict", *map(str, inputs), "--checkpoint", ckpt, "--out", str(tmp_path / "pred"), "--json"])
        assert r.exit_code == 0, r.output
        runs.append([json.loads(ln) for ln in r.stdout.strip().splitlines()])
    rows = runs[0]
    assert [row["input"] for row in rows] == [str(p) for p in inputs]
    assert [row["mask"] for row in runs[1]] == [row["mask"] for row in rows]  # stable names
    for key in ("mask", "overlay", "legend"):
        assert len({row[key] for row in rows}) == 3 and all(Path(row[key]).is_file() for row in rows)
    assert len(list((tmp_path / "pred").iterdir())) == 9
    for row, src in zip(rows, inputs, strict=True):
        mask = np.array(Image.open(row["mask"]))
        assert mask.shape == np.array(Image.open(src)).shape[:2]
        assert json.loads(Path(row["legend"]).read_text())["image"] == str(src)
        assert np.array_equal(mask, _scores_argmax(trained["run"] / "best.pt", src) + 1)
    masks = [np.array(Image.open(row["mask"])) for row in rows]
    assert masks[0].shape != masks[2].shape or not np.array_equal(masks[0], masks[2])


def test_predict_takes_images_up_to_the_documented_aspect_ratio(trained: dict, tmp_path: Path) -> None:
    """The demo resizes into (256, 96) with 8-px patches: 256x8 (32:1) is segmented, 256x7 is refused naming
    the file (the keep-ratio resize would leave less than one patch row)."""
    from zsk.tasks.segment.evaluate import check_image_size

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8, 256, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(rng.integers(0, 255, (7, 256, 3), dtype=np.uint8)).save(tmp_path / "thin.png")
    ckpt = str(trained["run"] / "best.pt")
    r = _run(["predict", str(tmp_path / "ok.png"), "--checkpoint", ckpt, "--out", str(tmp_path / "p"), "--json"])
    assert r.exit_code == 0, r.output
    assert np.array(Image.open(tmp_path / "p" / "ok.png")).shape == (8, 256)
    r = _run(["predict", str(tmp_path / "thin.png"), "--checkpoint", ckpt, "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "thin.png" in r.output and "32:1" in r.output
    check_image_size(3, 384, (2048, 512), 16)  # the paper's scale takes 128:1
    with pytest.raises(ZskError, match="x.png"):
        check_image_size(3, 2000, (2048, 512), 16, "image x.png")


def test_info_demo_recipe() -> None:
    r = _run(["info", "--recipe", "segment/demo", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["classes"] == 20 and res["unseen"] == 5 and res["gflops"] > 0
    assert res["params_trainable"] < res["params_image_model"] < res["params_total"]


def test_paper_parameter_counts_within_five_percent() -> None:
    from zsk.core.bench import count_params
    from zsk.core.run import load_config
    from zsk.tasks.segment.config import Config
    from zsk.tasks.segment.model import PromptedVisionTransformer, unused_self_attention_params
    from zsk.tasks.segment.train import build_model

    cfg, _ = load_config("segment", Config, "segment/voc", None)
    model, loaded = build_model(cfg, pretrained=False)
    own = count_params(model)[1]
    unused = unused_self_attention_params(512, 3)
    assert abs(own + unused - 13.8e6) / 13.8e6 < 0.05
    assert abs(own - (13.8e6 - 3.15e6)) / (13.8e6 - 3.15e6) < 0.05
    # COCO-Stuff: 100 prompts instead of 10 on the same encoder
    model.image_encoder = PromptedVisionTransformer(model.image_encoder.visual, 100, (32, 32))
    own_coco = count_params(model)[1]
    assert abs(own_coco + unused - 14.6e6) / 14.6e6 < 0.05
    assert abs(own_coco - (14.6e6 - 3.15e6)) / (14.6e6 - 3.15e6) < 0.05


def test_bad_inputs_exit_2_naming_the_problem(trained: dict, tmp_path: Path) -> None:
    ckpt = str(trained["run"] / "best.pt")
    r = _run(["eval", "--checkpoint", str(tmp_path / "missing.pt")])
    assert r.exit_code == 2 and "missing.pt" in r.output
    img = sorted((trained["data"] / "JPEGImages").glob("*.jpg"))[0]
    r = _run(["predict", str(img), "--checkpoint", ckpt, "--out", str(tmp_path / "p"), "--classes", " , "])
    assert r.exit_code == 2 and "--classes" in r.output
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\x00garbage")
    r = _run(["predict", str(bad), "--checkpoint", ckpt, "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "broken.jpg" in r.output
    r = _run(["train", "--recipe", "segment/demo", "--set", f"data.root={trained['data']}",
              "--set", "data.unseen_classes=[sheep, unicorn]", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "unicorn" in r.output
    # a mask whose size does not match its image
    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    name = (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(data / "SegmentationClass" / f"{name}.png")
    r = _run(["eval", "--checkpoint", ckpt, "--set", f"data.root={data}"])
    assert r.exit_code == 2 and f"{name}.png" in r.output
    r = _run(["train", "--recipe", "segment/demo", "--set", "train.nosuchkey=1", "--out", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "nosuchkey" in r.output


def test_transductive_two_stages_and_fully_supervised(trained: dict, tmp_path: Path) -> None:
    common = ["--set", f"data.root={trained['data']}", "--set", "train.log_every=2", "--set", "eval.max_images=2",
              "--quiet", "--json"]
    out = tmp_path / "st"
    r = _run(["train", "--recipe", "segment/demo", "--set", "train.setting=transductive",
              "--set", "train.stages.inductive.steps=2", "--set", "train.stages.self_training.steps=2",
              "--set", "runtime.loggers=[tensorboard]", "--set", "runtime.preview_images=2",
              *common, "--out", str(out)])
    assert r.exit_code == 0, r.output
    # each evaluation sends image | ground truth | prediction panels of two images to TensorBoard
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(out / "tensorboard" / "self_training"), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    tags = acc.Tags()["images"]
    assert len(tags) == 2 and all(t.startswith("self_training/preview/") for t in tags), tags
    tag = tags[0]
    w, h = Image.open(Path(trained["data"]) / "JPEGImages" / f"{tag.split('/preview/')[1].split('_', 1)[1]}.jpg").size
    shot = acc.Images(tag)[-1]
    assert (shot.height, shot.width, shot.step) == (h, 3 * w + 8, 2)
    for name in ("last-inductive.pt", "last-self_training.pt", "best.pt", "eval.json"):
        assert (out / name).is_file(), name
    from zsk.core.checkpoint import load_checkpoint

    ck = load_checkpoint(out / "best.pt")
    # best.pt holds the self-training stage's selected (best) weights, exported after the last stage
    st = load_checkpoint(out / "best-self_training.pt")
    assert ck["extra"]["setting"] == "transductive" and st["stage"] == "self_training"
    assert ck["model"].keys() == st["model"].keys() and all(torch.equal(ck["model"][k], st["model"][k]) for k in st["model"])
    assert load_checkpoint(out / "last-inductive.pt")["step"] == 2 and st["total_steps"] == 2
    stages = [json.loads(ln).get("stage") for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages.index("inductive") < stages.index("self_training")
    out = tmp_path / "fully"
    r = _run(["train", "--recipe", "segment/demo", "--set", "train.setting=fully", "--set", "train.steps=2",
              *common, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out / "best.pt")["extra"]["setting"] == "fully"


def test_bench_spec_runs_train_and_inference_steps(trained: dict) -> None:
    from zsk.core.bench import run_bench
    from zsk.core.run import load_config
    from zsk.tasks.segment.config import Config
    from zsk.tasks.segment.hooks import bench_spec

    cfg, _ = load_config("segment", Config, "segment/demo", [f"data.root={trained['data']}"])
    spec = bench_spec(cfg, torch.device("cpu"), 2)
    res = run_bench(spec, 1, torch.device("cpu"), None, cfg)
    assert spec.unit == "images" and res["train_images_per_s"] > 0 and res["infer_gflops_per_call"] > 0


@pytest.mark.parametrize("name", ["voc", "voc_transductive", "voc_fully", "coco_stuff", "coco_stuff_transductive",
                                  "coco_stuff_fully", "context", "demo"])
def test_shipped_recipes_parse_with_paper_values(name: str) -> None:
    from zsk.core.recipe import load_recipe
    from zsk.core.run import load_config
    from zsk.tasks.segment.config import Config

    cfg, _ = load_config("segment", Config, f"segment/{name}", None)
    raw = load_recipe(f"segment/{name}")
    assert raw["task"] == "segment" and raw["description"]
    if name != "demo":
        assert cfg.train.lr == 2e-5 and cfg.train.weight_decay == 0.01 and cfg.train.warmup_steps == 1500
        assert cfg.train.loss.focal_weight == 100.0 and cfg.train.effective_batch == 16
        assert cfg.model.num_prompts == (100 if name.startswith("coco") else 10)
        assert cfg.train.steps == {"voc": 20000, "coco": 80000, "context": 40000}[name.split("_")[0]]
        assert cfg.model.text.templates == ("single" if name.startswith("voc") else "multi")


def test_sigterm_in_self_training_stage_then_resume_equals_an_uninterrupted_run(
        trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Transductive training (inductive stage, then self-training) stopped by SIGTERM inside the second
    stage and continued with --resume ends with bitwise the same weights as a run that was never stopped."""
    import os
    import signal

    from zsk.core.checkpoint import load_checkpoint
    from zsk.tasks.segment import train as segment_train
    from zsk.tasks.segment.evaluate import load

    # 24 samples / batch 8 = 3 batches per epoch: stage 1 takes steps 0-2 (crossing into epoch 1), stage 2 steps 0-2
    common = ["--recipe", "segment/demo", "--set", f"data.root={trained['data']}", "--set", "train.setting=transductive",
              "--set", "train.stages.inductive.steps=3", "--set", "train.stages.self_training.steps=3",
              "--set", "train.log_every=1", "--set", "eval.max_images=1",
              "--set", "runtime.seed=3", "--quiet"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    r = _run(["train", *common, "--out", str(ref)])
    assert r.exit_code == 0, r.output

    # the step hook: pseudo-labels are made only in the self-training stage, once per step (grad_accum 1);
    # at its second step this process sends itself SIGTERM, which the trainer handles after that step
    real, calls = segment_train.transductive_pseudo_labels, []

    def pseudo_labels_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(segment_train, "transductive_pseudo_labels", pseudo_labels_then_sigterm)
    r = _run(["train", *common, "--out", str(run)])
    assert r.exit_code == 143, r.output
    assert "--resume" in r.output
    monkeypatch.setattr(segment_train, "transductive_pseudo_labels", real)
    assert len(calls) == 2
    stopped = load_checkpoint(run / "last-self_training.pt")
    assert stopped["stage"] == "self_training" and stopped["step"] == 2 and stopped["total_steps"] == 3
    assert load_checkpoint(run / "last-inductive.pt")["step"] == 3
    assert not (run / "last.pt").exists() and not (run / "eval-self_training.json").exists()

    r = _run(["train", *common, "--out", str(run), "--resume"])
    assert r.exit_code == 0, r.output
    # last.pt is the final model exported after the last stage: the self-training stage's last weights
    a, b = load_checkpoint(ref / "last-self_training.pt"), load_checkpoint(run / "last-self_training.pt")
    assert a["stage"] == b["stage"] == "self_training" and a["step"] == b["step"] == 3
    for final, stage_last in ((load_checkpoint(ref / "last.pt"), a), (load_checkpoint(run / "last.pt"), b)):
        assert final["model"].keys() == stage_last["model"].keys()
        assert all(torch.equal(final["model"][k], stage_last["model"][k]) for k in final["model"])
    # the demo CLIP has random weights, so the checkpoint holds the frozen tower as well as the trainable part
    trainable = {n for n, p in segment_train.build_model(load(ref / "last.pt").cfg, pretrained=False)[0]
                 .named_parameters() if p.requires_grad}
    assert trainable and trainable <= set(a["model"])
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # training really went on after the interruption
    assert any(not torch.equal(stopped["model"][k], b["model"][k]) for k in trainable)
    assert json.loads((ref / "eval.json").read_text())["mIoU"] == json.loads((run / "eval.json").read_text())["mIoU"]
