"""ZegCLIP train / evaluate / predict / info, and the ``zsk demo`` / ``zsk bench`` hooks."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from zsk.core import dist
from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.checkpoint import load_checkpoint, load_model_state
from zsk.core.device import autocast, autocast_dtype, resolve_device
from zsk.core.errors import ZskError
from zsk.core.progress import log, progress
from zsk.core.run import RunContext, config_from_checkpoint, load_config, start_run
from zsk.core.trainer import Trainer, batches_per_epoch, make_eval_loader, make_loader
from zsk.data import images as img_io
from zsk.data.seg_transforms import SegTestTransform, SegTrainTransform, sliding_windows
from zsk.metrics.confusion import ConfusionMatrix
from zsk.metrics.segmentation import harmonic_mean, iou_per_class, mean_iou, pixel_accuracy
from zsk.models.clip import (
    CLIPTextEncoder,
    LoadedCLIP,
    cached_class_embeddings,
    load_clip,
    load_npy_embeddings,
    weights_identity,
)
from zsk.tasks.segment import splits
from zsk.tasks.segment.config import Config, EvalConfig
from zsk.tasks.segment.data import (
    Benchmark,
    SegEvalDataset,
    SegTrainDataset,
    first_item,
    load_benchmark,
    write_sample,
)
from zsk.tasks.segment.losses import NonMutuallyExclusiveLoss, transductive_pseudo_labels
from zsk.tasks.segment.model import PromptedVisionTransformer, ZegCLIP, unused_self_attention_params

TASK = "segment"
# Frozen pretrained parts: not copied into checkpoints when they come from pretrained weights.
PRETRAINED_PREFIXES = ("image_encoder.visual.", "text_encoder.")
INDUCTIVE_CALIBRATION = 0.1  # subtracted from seen-class scores of inductive models at test time


# ----------------------------------------------------------------------------- model building
def build_model(cfg: Config, pretrained: bool = True) -> tuple[ZegCLIP, LoadedCLIP]:
    """ZegCLIP around the recipe's CLIP (``pretrained=False`` builds random weights, for info/bench)."""
    mc = cfg.model
    loaded = load_clip(mc.clip.name, mc.clip.pretrained if pretrained else None, mc.clip.quick_gelu)
    visual = loaded.model.visual
    patch = visual.conv1.kernel_size[0]
    if cfg.data.crop_size % patch:
        raise ZskError(f"data.crop_size={cfg.data.crop_size} must be a multiple of the CLIP patch size {patch}")
    grid = (cfg.data.crop_size // patch, cfg.data.crop_size // patch)
    encoder = PromptedVisionTransformer(visual, mc.num_prompts, grid, mc.drop_path_rate, mc.prompt_dropout,
                                        mc.cls_embedding_twice)
    embed_dim = int(visual.proj.shape[1])
    text = CLIPTextEncoder(loaded.model, loaded.tokenizer)
    model = ZegCLIP(encoder, text, embed_dim, mc.decoder_layers, mc.decoder_heads, mc.decoder_ffn_ratio,
                    mc.decoder_dropout, mc.head_init_std)
    return model, loaded


def excluded_prefixes(loaded: LoadedCLIP) -> tuple[str, ...]:
    """Prefixes left out of checkpoints: the frozen CLIP when it comes from pretrained weights."""
    return () if loaded.random_init else PRETRAINED_PREFIXES


def text_embeddings_for(model: ZegCLIP, loaded: LoadedCLIP, cfg: Config, class_names: Sequence[str],
                        embeddings_file: str | None = None) -> Tensor:
    """Class embeddings (C, D) on CPU: from ``model.text.embeddings_file`` or the frozen text encoder (cached)."""
    if not class_names:
        raise ZskError("the class name list is empty; give at least one class name")
    if embeddings_file:
        path = Path(embeddings_file).expanduser()
        if not path.is_absolute() and (Path(cfg.data.root).expanduser() / path).is_file():
            path = Path(cfg.data.root).expanduser() / path
        return load_npy_embeddings(path, len(class_names), model.embed_dim)
    assert model.text_encoder is not None
    key = weights_identity(model.text_encoder, loaded.source, loaded.random_init)
    return cached_class_embeddings(model.text_encoder, list(class_names), cfg.model.text.templates, key)


def calibration_for(setting: str, ecfg: EvalConfig) -> float:
    """Seen-score calibration: the recipe's value, else 0.1 for inductive models and 0 otherwise."""
    if ecfg.seen_calibration is not None:
        return ecfg.seen_calibration
    return INDUCTIVE_CALIBRATION if setting == "inductive" else 0.0


# ----------------------------------------------------------------------------- inference
@torch.no_grad()
def segment_scores(model: ZegCLIP, image: Tensor, text: Tensor, ecfg: EvalConfig, normalization: str,
                   seen: Sequence[int], calibration: float, device: torch.device,
                   amp: torch.dtype | None = None, window_batch: int = 8) -> Tensor:
    """Calibrated sigmoid scores (C, H, W) at the image's original size.

    The image (H, W, 3 uint8) is resized into ``img_scale`` (short side 512), scored by sliding
    windows (crop, stride) whose scores are averaged, or whole; seen classes get ``-calibration``;
    the averaged map is resized back to (H, W).
    """
    h0, w0 = image.shape[:2]
    x = SegTestTransform(tuple(ecfg.img_scale), normalization)(image.cpu().numpy()).to(device)
    h, w = x.shape[-2:]
    c = text.shape[0]
    offset = torch.zeros(c, 1, 1, device=device)
    if seen and calibration:
        offset[torch.as_tensor(list(seen), device=device)] = calibration

    def run(batch: Tensor) -> Tensor:
        with autocast(device, amp):
            logits = model(batch, text)
        return logits.float().sigmoid() - offset

    if ecfg.mode == "whole":
        scores = run(x[None])[0]
    else:
        crop = (ecfg.crop_size, ecfg.crop_size)
        boxes = sliding_windows(h, w, crop, (ecfg.stride, ecfg.stride))
        total = torch.zeros(c, h, w, device=device)
        count = torch.zeros(1, h, w, device=device)
        for i in range(0, len(boxes), window_batch):
            chunk = boxes[i : i + window_batch]
            crops = torch.stack([x[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
            out = run(crops)
            for (y1, y2, x1, x2), s in zip(chunk, out, strict=True):
                total[:, y1:y2, x1:x2] += s
                count[:, y1:y2, x1:x2] += 1
        scores = total / count
    if (h, w) != (h0, w0):
        scores = F.interpolate(scores[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
    return scores


def segmentation_metrics(cm: Tensor, class_names: Sequence[str], seen: Sequence[int], unseen: Sequence[int]) -> dict:
    """mIoU, mIoU over seen / unseen classes, hIoU = 2SU/(S+U), pixel accuracy and per-class IoU."""
    ious = iou_per_class(cm)
    s = mean_iou(cm, list(seen))
    out: dict = {"mIoU": mean_iou(cm), "mIoU_seen": s}
    if unseen:
        u = mean_iou(cm, list(unseen))
        out.update({"mIoU_unseen": u, "hIoU": harmonic_mean(s, u)})
    else:
        out.update({"mIoU_unseen": None, "hIoU": None})
    out["pAcc"] = pixel_accuracy(cm)
    out["per_class"] = {n: (None if v != v else v) for n, v in zip(class_names, ious, strict=True)}
    return out


@torch.no_grad()
def evaluate_model(model: ZegCLIP, dataset: SegEvalDataset, text: Tensor, bench: Benchmark, cfg: Config,
                   calibration: float, device: torch.device, workers: int = 0) -> dict:
    """Run inference over an evaluation split and compute :func:`segmentation_metrics` (reduced over ranks)."""
    was_training = model.training
    model.eval()
    amp = autocast_dtype(device, cfg.runtime.precision)
    cm = ConfusionMatrix(bench.num_classes, ignore_index=img_io.IGNORE_INDEX, device=device)
    text = text.to(device)
    loader = make_eval_loader(dataset, 1, workers=workers, collate_fn=first_item)
    for sample in progress(loader, total=len(loader), desc="eval"):
        scores = segment_scores(model, sample["image"], text, cfg.eval, cfg.data.normalize, bench.seen, calibration,
                                device, amp)
        cm.update(scores.argmax(0), sample["label"].to(device))
    cm.reduce()
    model.train(was_training)
    return segmentation_metrics(cm.matrix.cpu(), bench.class_names, bench.seen, bench.unseen)


# ----------------------------------------------------------------------------- training
def param_groups(model: ZegCLIP, tcfg) -> list[dict]:
    """AdamW groups: prompts (backbone) and head at their lr multipliers; norm parameters without decay."""
    groups = []
    for part, params in model.trainable_groups().items():
        mult = tcfg.backbone_lr_mult if part == "backbone" else tcfg.head_lr_mult
        norm = [p for n, p in params if "norm" in n]
        rest = [p for n, p in params if "norm" not in n]
        if rest:
            groups.append({"params": rest, "lr_mult": mult, "weight_decay": tcfg.weight_decay})
        if norm:
            groups.append({"params": norm, "lr_mult": mult, "weight_decay": tcfg.weight_decay * tcfg.norm_decay_mult})
    return groups


def _grad_accum(tcfg) -> int:
    if tcfg.effective_batch is None:
        return tcfg.grad_accum
    per_step = tcfg.batch_size * dist.get_dist().world_size
    if tcfg.effective_batch % per_step:
        raise ZskError(f"train.effective_batch={tcfg.effective_batch} is not a multiple of train.batch_size x GPUs "
                       f"= {per_step}; change train.batch_size or train.effective_batch")
    return tcfg.effective_batch // per_step


def _stages(cfg: Config) -> list[tuple[str, str, int]]:
    """(stage name, setting, optimizer steps) for the recipe's setting."""
    tcfg = cfg.train
    if tcfg.setting != "transductive":
        return [("", tcfg.setting, -1)]
    if tcfg.steps is None:
        raise ZskError("the transductive setting needs train.steps (the total of both stages)")
    first = int(round(tcfg.steps * tcfg.transductive_split))
    if not 0 < first < tcfg.steps:
        raise ZskError(f"train.transductive_split={tcfg.transductive_split} leaves an empty stage; use a value in (0, 1)")
    return [("inductive", "inductive", first), ("self_training", "transductive", tcfg.steps - first)]


def train(ctx: RunContext) -> dict:
    """Train ZegCLIP in the recipe's setting (inductive, transductive in two stages, or fully supervised)."""
    cfg: Config = ctx.cfg
    device = ctx.device
    bench = load_benchmark(cfg.data)
    model, loaded = build_model(cfg)
    model.to(device)
    all_text = text_embeddings_for(model, loaded, cfg, bench.class_names, cfg.model.text.embeddings_file)
    seen = list(bench.seen)
    if cfg.train.setting != "fully" and not bench.unseen:
        log("warning: no unseen classes are defined; the zero-shot settings train on every class")
    eval_ds = SegEvalDataset(bench, cfg.data.val_split, cfg.eval.max_images)
    transform = SegTrainTransform((cfg.data.crop_size,) * 2, tuple(cfg.data.img_scale), tuple(cfg.data.ratio_range),
                                  cfg.data.cat_max_ratio, cfg.data.flip_prob, cfg.data.photometric, cfg.data.normalize)
    lc = cfg.train.loss
    criterion = NonMutuallyExclusiveLoss(lc.focal_weight, lc.dice_weight, lc.focal_alpha, lc.focal_gamma, lc.focal_ignore)
    best_metric = cfg.train.best_metric or ("hIoU" if bench.unseen else "mIoU")
    metrics: dict = {}
    stages = _stages(cfg)
    for stage, setting, steps in stages:
        self_training = setting == "transductive"
        if setting == "inductive":
            lut, text = splits.inductive_label_lut(bench.num_classes, seen), all_text[seen]
        else:
            lut, text = splits.identity_label_lut(bench.num_classes), all_text
        text = text.to(device)
        train_ds = SegTrainDataset(bench, cfg.data.train_split, lut, transform)
        tcfg = replace(cfg.train, grad_accum=_grad_accum(cfg.train), best_metric=best_metric,
                       steps=steps if steps > 0 else cfg.train.steps)
        calibration = calibration_for(setting, cfg.eval)
        seen_t = torch.as_tensor(seen, device=device)

        def step_fn(m, batch, step, text=text, self_training=self_training, seen_t=seen_t):
            logits = m(batch["image"], text, all_layers=lc.deep_supervision)
            labels = batch["label"]
            if self_training:
                last = logits[-1] if isinstance(logits, list) else logits
                labels = transductive_pseudo_labels(last, labels, seen_t)
            return criterion(logits, labels)

        def loader_fn(epoch, start, ds=train_ds, bs=tcfg.batch_size):
            return make_loader(ds, bs, epoch=epoch, seed=cfg.runtime.seed, workers=cfg.runtime.workers, start_batch=start)

        def eval_fn(m, calibration=calibration):
            return evaluate_model(m, eval_ds, all_text, bench, cfg, calibration, device, cfg.runtime.workers)

        extra = {"class_names": list(bench.class_names), "seen": seen, "unseen": list(bench.unseen),
                 "setting": setting, "text_embeddings": all_text.cpu(), "clip": loaded.source,
                 "clip_random_init": loaded.random_init}
        trainer = Trainer(ctx, model, tcfg, step_fn, loader_fn, batches_per_epoch(len(train_ds), tcfg.batch_size),
                          eval_fn=eval_fn, param_groups=param_groups(model, tcfg), extra=extra,
                          exclude_prefixes=excluded_prefixes(loaded), stage=stage, find_unused_parameters=True)
        if stage:
            log(f"stage {stage}: {setting} setting, {trainer.total_steps} steps")
        metrics = trainer.fit()
    if stages[-1][0] and dist.is_main():
        last = stages[-1][0]
        for base in ("best", "last"):
            shutil.copyfile(ctx.run_dir / f"{base}-{last}.pt", ctx.run_dir / f"{base}.pt")
        shutil.copyfile(ctx.run_dir / f"eval-{last}.json", ctx.run_dir / "eval.json")
    return metrics


# ----------------------------------------------------------------------------- from checkpoints
def read_checkpoint(checkpoint: str | Path, sets: list[str] | None = None,
                    recipe: str | Path | None = None) -> tuple[dict, Config]:
    """A segment checkpoint and the config it was trained with (``--set`` overrides applied)."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("task") != TASK:
        raise ZskError(f"{checkpoint} is a checkpoint of task {ckpt.get('task')!r}, not segment")
    cfg, _ = config_from_checkpoint(ckpt, Config, sets, recipe)
    return ckpt, cfg


def load_trained(checkpoint: str | Path, ckpt: dict, cfg: Config,
                 device: torch.device) -> tuple[ZegCLIP, LoadedCLIP, Config, dict]:
    """Model, CLIP source, config and ``extra`` of a checkpoint written by ``train``."""
    extra = dict(ckpt.get("extra") or {})
    pretrained = not extra.get("clip_random_init", False)
    model, loaded = build_model(cfg, pretrained=pretrained)
    load_model_state(model, ckpt["model"], excluded_prefixes(loaded), source=str(checkpoint))
    model.to(device).eval()
    return model, loaded, cfg, extra


def evaluate(checkpoint: str | Path, sets: list[str] | None = None, split: str | None = None,
             device: str | None = None, recipe: str | Path | None = None) -> dict:
    """Evaluate a checkpoint on the recipe's (or ``split``) evaluation split."""
    ckpt, cfg = read_checkpoint(checkpoint, sets, recipe)
    dev = resolve_device(device, cfg.runtime.device)
    dist.init_distributed(dev)
    model, loaded, cfg, extra = load_trained(checkpoint, ckpt, cfg, dev)
    bench = load_benchmark(cfg.data)
    if list(extra.get("class_names", bench.class_names)) != list(bench.class_names):
        text = text_embeddings_for(model, loaded, cfg, bench.class_names, cfg.model.text.embeddings_file)
    else:
        text = extra["text_embeddings"].float()
    ds = SegEvalDataset(bench, split or cfg.data.val_split, cfg.eval.max_images)
    calibration = calibration_for(extra.get("setting", cfg.train.setting), cfg.eval)
    return evaluate_model(model, ds, text, bench, cfg, calibration, dev, cfg.runtime.workers)


def expand_inputs(inputs: Sequence[str], stdin: Iterable[str] | None = None) -> list[Path]:
    """Image paths from arguments: files, folders (their images, sorted) and '-' (one path a line on stdin)."""
    paths: list[Path] = []
    for arg in inputs:
        if arg == "-":
            lines = stdin if stdin is not None else sys.stdin
            paths.extend(Path(ln.strip()) for ln in lines if ln.strip())
            continue
        p = Path(arg)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in img_io.IMAGE_SUFFIXES)
            if not found:
                raise ZskError(f"folder {p} holds no images ({', '.join(img_io.IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise ZskError(f"input {p} does not exist; give image files, folders or '-' for paths on stdin")
    if not paths:
        raise ZskError("no input images; give image files, folders or '-' for paths on stdin")
    return paths


def parse_classes(classes: str | None, classes_file: str | Path | None) -> list[str] | None:
    """Class names from ``--classes "a,b,c"`` or ``--classes-file`` (one a line); None when neither is given."""
    if classes is not None and classes_file is not None:
        raise ZskError("give either --classes or --classes-file, not both")
    if classes_file is not None:
        return img_io.read_class_names(classes_file)
    if classes is not None:
        names = [c.strip() for c in classes.split(",") if c.strip()]
        if not names:
            raise ZskError("--classes is empty; give comma-separated class names, e.g. --classes 'cat,dog,grass'")
        if len(set(names)) != len(names):
            raise ZskError(f"--classes repeats a name: {classes}")
        return names
    return None


def overlay(image: np.ndarray, pred: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with the palette colours of a prediction."""
    colours = palette[pred].astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)


def predict(inputs: Sequence[str], checkpoint: str | Path, out: str | Path, classes: list[str] | None = None,
            sets: list[str] | None = None, device: str | None = None) -> list[dict]:
    """Open-vocabulary segmentation of images with any class names; writes per image a palette PNG mask,
    an overlay PNG and a JSON legend under ``out``; returns one record per image."""
    paths = expand_inputs(inputs)
    ckpt, cfg = read_checkpoint(checkpoint, sets)
    dev = resolve_device(device, cfg.runtime.device)
    model, loaded, cfg, extra = load_trained(checkpoint, ckpt, cfg, dev)
    trained_names = list(extra.get("class_names") or [])
    if classes is None:
        names = trained_names
        text = extra["text_embeddings"].float()
    else:
        names = classes
        text = text_embeddings_for(model, loaded, cfg, names)
    if not names:
        raise ZskError(f"{checkpoint} stores no class names; pass --classes or --classes-file")
    trained_seen = {trained_names[i] for i in extra.get("seen", [])}
    seen = [i for i, n in enumerate(names) if n in trained_seen]
    calibration = calibration_for(extra.get("setting", cfg.train.setting), cfg.eval)
    amp = autocast_dtype(dev, cfg.runtime.precision)
    palette = img_io.voc_palette()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = text.to(dev)
    records = []
    for path in progress(paths, total=len(paths), desc="predict"):
        image = img_io.read_image(path)
        scores = segment_scores(model, torch.from_numpy(image.copy()), text, cfg.eval, cfg.data.normalize, seen,
                                calibration, dev, amp)
        pred = scores.argmax(0).cpu().numpy().astype(np.uint8)
        mask_path, overlay_path, legend_path = out / f"{path.stem}.png", out / f"{path.stem}_overlay.png", out / f"{path.stem}.json"
        img_io.write_label(mask_path, pred, palette)
        Image.fromarray(overlay(image, pred, palette)).save(overlay_path)
        counts = np.bincount(pred.reshape(-1), minlength=len(names))
        legend = {"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                  "classes": [{"id": i, "name": n, "color": palette[i].tolist(), "pixels": int(counts[i]),
                               "fraction": float(counts[i] / pred.size)} for i, n in enumerate(names)]}
        legend_path.write_text(json.dumps(legend, indent=2))
        present = [n for i, n in enumerate(names) if counts[i] > 0]
        records.append({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                        "legend": str(legend_path), "classes_present": present})
    return records


# ----------------------------------------------------------------------------- info / bench / demo
def _bench_classes(cfg: Config) -> tuple[list[str], tuple[int, ...]]:
    """Class names and seen ids without reading images (folder datasets read their class-name file)."""
    bench = load_benchmark(cfg.data)
    return bench.class_names, bench.seen


def info(cfg: Config) -> dict:
    """Classes, splits, parameters (zsk's own and the paper-comparable count) and GFLOPs at the crop size."""
    names, seen = _bench_classes(cfg)
    model, _ = build_model(cfg, pretrained=False)
    model.eval()
    total, trainable = count_params(model)
    text_params = sum(p.numel() for p in model.text_encoder.parameters()) if model.text_encoder is not None else 0
    unused = unused_self_attention_params(model.embed_dim, cfg.model.decoder_layers)
    crop = cfg.data.crop_size
    x = torch.zeros(1, 3, crop, crop)
    text = F.normalize(torch.randn(len(names), model.embed_dim), dim=-1)
    with torch.no_grad():
        flops = count_flops(lambda: model(x, text))
    return {
        "dataset": cfg.data.dataset,
        "classes": len(names),
        "seen": len(seen),
        "unseen": len(names) - len(seen),
        "unseen_classes": [n for i, n in enumerate(names) if i not in set(seen)],
        "setting": cfg.train.setting,
        "clip": f"{cfg.model.clip.name} ({cfg.model.clip.pretrained or 'random init'})",
        "params_total": total,
        "params_image_model": total - text_params,
        "params_trainable": trainable,
        "params_trainable_paper_comparable": trainable + unused,
        "unused_self_attention_params_not_built": unused,
        "input": f"1x3x{crop}x{crop}, {len(names)} classes",
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
    }


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """Random-init ZegCLIP of the recipe at its crop size: one AdamW train step and one whole-image inference."""
    names, seen = _bench_classes(cfg)
    model, _ = build_model(cfg, pretrained=False)
    model.to(device)
    bs = batch_size or cfg.train.batch_size
    crop = cfg.data.crop_size
    g = torch.Generator().manual_seed(0)
    all_text = F.normalize(torch.randn(len(names), model.embed_dim, generator=g), dim=-1).to(device)
    train_text = all_text[list(seen)]
    images = torch.randn(bs, 3, crop, crop, generator=g).to(device)
    labels = torch.randint(0, len(seen), (bs, crop, crop), generator=g).to(device)
    lc = cfg.train.loss
    criterion = NonMutuallyExclusiveLoss(lc.focal_weight, lc.dice_weight, lc.focal_alpha, lc.focal_gamma, lc.focal_ignore)
    opt = torch.optim.AdamW([{k: v for k, v in grp.items() if k != "lr_mult"} | {"lr": cfg.train.lr * grp["lr_mult"]}
                             for grp in param_groups(model, cfg.train)], lr=cfg.train.lr)

    def train_step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = criterion(model(images, train_text), labels)["loss"]
        loss.backward()
        opt.step()

    infer_images = images[:1]

    @torch.no_grad()
    def infer_step() -> None:
        model.eval()
        model(infer_images, all_text).sigmoid().argmax(1)

    return BenchSpec(train_step=train_step, infer_step=infer_step, train_samples=bs, infer_samples=1, unit="images")


def run_demo(workdir: Path, device: str) -> dict:
    """Write the sample data under ``workdir``, train ``recipes/segment/demo.yaml`` on it, evaluate and predict."""
    workdir = Path(workdir)
    data = write_sample(workdir / "data")
    sets = [f"data.root={data}"]
    ctx = start_run(TASK, Config, "segment/demo", sets, out=workdir / "run", device=device)
    train(ctx)
    result = evaluate(ctx.run_dir / "best.pt", device=device)
    preds = predict([str(next((data / "JPEGImages").iterdir()))], ctx.run_dir / "best.pt", workdir / "predict",
                    device=device)
    log(f"demo prediction: {preds[0]['mask']}")
    return {"metric": "mIoU_seen", "value": result["mIoU_seen"], "hIoU": result["hIoU"], "pAcc": result["pAcc"]}


def load_info_config(recipe: str | Path, sets: list[str] | None) -> Config:
    """The validated config of a recipe (for ``info``)."""
    cfg, _ = load_config(TASK, Config, recipe, sets)
    return cfg

