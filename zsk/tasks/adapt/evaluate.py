"""STAL evaluation (licongguan/ILM-ASSL eval.py): Cityscapes val at full resolution, sliding 769 x 769
windows with stride ceil(769 x 2/3) = 513 (zero padding when the image is smaller), logits upsampled
(bilinear, align_corners) and averaged, argmax, intersection and union accumulated over the set; mIoU over
19 classes, plus the SYNTHIA protocol's mIoU16 and mIoU13 over the same confusion matrix."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsk.core.checkpoint import read_state_dict
from zsk.core.device import autocast, autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.progress import progress
from zsk.core.task import Loaded, load_trained
from zsk.core.trainer import make_eval_loader
from zsk.data.overlay import preview_panel, to_uint8_image
from zsk.metrics.confusion import ConfusionMatrix
from zsk.metrics.segmentation import iou_per_class, mean_iou
from zsk.models.inferers import sliding_window_inference
from zsk.tasks.adapt.config import Config
from zsk.tasks.adapt.data import CITYSCAPES_CLASSES, CLASSES_13, CLASSES_16, EvalSet, cityscapes_split


def segment_logits(net: nn.Module, image: Tensor, cfg: Config, window_batch: int | None = None) -> Tensor:
    """(C, H, W) averaged logits of one normalised (3, H, W) image by the sliding-window protocol."""
    device = next(net.parameters()).device

    def predictor(windows: Tensor) -> Tensor:
        out = net(windows)["pred"]
        return F.interpolate(out.float(), size=windows.shape[-2:], mode="bilinear", align_corners=True)

    with torch.no_grad(), autocast(device, autocast_dtype(device, cfg.runtime.precision)):
        return sliding_window_inference(image.to(device), cfg.eval.window, cfg.eval.stride, predictor,
                                        window_batch=window_batch or cfg.eval.window_batch, pad="symmetric")


def center_crop_predict(net: nn.Module, image: Tensor, label: Tensor, cfg: Config) -> tuple[Tensor, Tensor]:
    """The validation STAL runs during training (train.py ``validate``): one forward on the centre crop
    of the window size (image zero-padded, label 255-padded when smaller). Returns (prediction, label)."""
    h, w = image.shape[-2:]
    ch, cw = cfg.eval.window
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    border = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph or pw:
        image, label = F.pad(image, border), F.pad(label, border, value=255)
    top, left = (image.shape[-2] - ch) // 2, (image.shape[-1] - cw) // 2
    x = image[:, top:top + ch, left:left + cw]
    device = next(net.parameters()).device
    with torch.no_grad(), autocast(device, autocast_dtype(device, cfg.runtime.precision)):
        out = net(x[None].to(device))["pred"]
    out = F.interpolate(out.float(), size=(ch, cw), mode="bilinear", align_corners=True)[0]
    return out.argmax(0), label[top:top + ch, left:left + cw]


def miou_report(cm: ConfusionMatrix, class_names: list[str]) -> dict[str, Any]:
    """mIoU (all classes), mIoU16 / mIoU13 (SYNTHIA protocols, for 19-class trainIds) and per-class IoU,
    in percent."""
    m = cm.matrix
    ious = iou_per_class(m)
    out: dict[str, Any] = {"mIoU": 100 * mean_iou(m)}
    if m.shape[0] == 19:
        out["mIoU16"] = 100 * mean_iou(m, CLASSES_16)
        out["mIoU13"] = 100 * mean_iou(m, CLASSES_13)
    out["per_class"] = {name: 100 * float(v) for name, v in zip(class_names, ious, strict=True)}
    return out


def evaluate_model(net: nn.Module, cfg: Config, split: str = "val", protocol: str = "sliding",
                   limit: int | None = None) -> dict[str, Any]:
    """Evaluate ``net`` (a DeepLabV3Plus) on a Cityscapes split, split across ranks."""
    samples = cityscapes_split(cfg.data, split)[: limit or cfg.data.max_val]
    if any(s.label is None or not s.label.is_file() for s in samples):
        missing = next(s for s in samples if s.label is None or not s.label.is_file())
        raise ZskError(f"label {missing.label} does not exist; Cityscapes evaluation needs gtFine/{split}/<city>/"
                       "*_gtFine_labelTrainIds.png (or *_labelIds.png)")
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    cm = ConfusionMatrix(cfg.data.num_classes, ignore_index=255, device=device)
    loader = make_eval_loader(EvalSet(samples, cfg.data), 1)
    for batch in progress(loader, total=len(loader), desc=f"evaluating {split}"):
        image, label = batch["image"][0], batch["label"][0].to(device)
        if protocol == "sliding":
            pred = segment_logits(net, image, cfg).argmax(0)
        else:
            pred, label = center_crop_predict(net, image, label, cfg)
        cm.update(pred, label)
    cm.reduce()
    net.train(was_training)
    names = list(CITYSCAPES_CLASSES) if cfg.data.num_classes == 19 else [f"class_{i}" for i in range(cfg.data.num_classes)]
    return {**miou_report(cm, names), "images": len(samples), "protocol": protocol}


@torch.no_grad()
def preview_model(net: nn.Module, cfg: Config, split: str = "val") -> dict[str, np.ndarray]:
    """``image | ground truth | prediction`` panels (Cityscapes colours) of the first ``runtime.preview_images``
    images of a Cityscapes split, whole images by the sliding window (what training sends to the trackers)."""
    from zsk.tasks.adapt.predict import palette

    samples = cityscapes_split(cfg.data, split)[: cfg.runtime.preview_images]
    was_training = net.training
    net.eval()
    out = {}
    for i, item in enumerate(EvalSet(samples, cfg.data)):
        pred = segment_logits(net, item["image"], cfg).argmax(0)
        out[f"{i}_{Path(samples[i].image).stem}"] = preview_panel(
            to_uint8_image(item["image"], cfg.data.mean, cfg.data.std), item["label"].numpy(), pred.cpu().numpy(),
            palette(cfg.data.num_classes), 255)
    net.train(was_training)
    return out


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """A trained mean-teacher pair in eval mode; calling ``loaded.model`` runs the teacher."""
    from zsk.tasks.adapt.train import build_model

    loaded, _ = load_trained("adapt", checkpoint, Config, lambda c: build_model(c, pretrained=False), sets, device,
                             recipe)
    return loaded


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None, *, student: bool = False,
             center_crop: bool = False) -> dict[str, Any]:
    """mIoU / mIoU16 / mIoU13 / per-class IoU of the teacher (``student``: the student) on a Cityscapes
    split by the sliding-window protocol (``center_crop``: the single centre crop STAL validates with
    during training). Writes nothing (``--out DIR`` saves the result)."""
    cfg: Config = loaded.cfg
    if student:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, model="student"))
    net = loaded.model.student if cfg.eval.model == "student" else loaded.model.teacher
    return evaluate_model(net, cfg, split or cfg.eval.split, "center_crop" if center_crop else "sliding")


def import_official(checkpoint: Path, recipe: str, out: Path, sets: list[str] | None = None) -> dict[str, Any]:
    """An official STAL / ILM-ASSL ``ckpt_best.pth`` (``model_state`` and ``teacher_state`` of DDP-wrapped
    ``ModelBuilder`` networks, ``class_criterion``) as a zsk checkpoint with ``recipe``, so ``eval``,
    ``select`` and ``predict`` run the released weights (STAL's own ``Config.py`` expects a teacher-only
    ``ckpt_best_teacher.pth`` that training never writes)."""
    from zsk.core.checkpoint import model_state, save_checkpoint
    from zsk.core.io import output_folder
    from zsk.core.run import load_config
    from zsk.tasks.adapt.train import _class_names, build_model

    path = Path(checkpoint)
    state = read_state_dict(path, "official checkpoint", "pass the ckpt_best.pth (or ckpt.pth) STAL's train.py writes",
                            unwrap=False)
    if "teacher_state" not in state or "model_state" not in state:
        raise ZskError(f"{path} holds no model_state / teacher_state; pass the ckpt_best.pth (or ckpt.pth) STAL's "
                       "train.py writes")
    cfg, recipe_dict = load_config("adapt", Config, recipe, sets)
    net = build_model(cfg, pretrained=False)

    def strip(sd: dict) -> dict:
        return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}

    for name, part in (("model_state", net.student), ("teacher_state", net.teacher)):
        sd = strip(state[name])
        missing, unexpected = sorted(set(part.state_dict()) - set(sd)), sorted(set(sd) - set(part.state_dict()))
        if missing or unexpected:
            raise ZskError(f"{path}: {name} does not fit the recipe's network ({len(missing)} missing, e.g. "
                           f"{(missing or unexpected)[0]}); use the recipe of the checkpoint's experiment")
        try:
            part.load_state_dict(sd)
        except RuntimeError as e:
            raise ZskError(f"{path}: {name} does not fit the recipe's network ({str(e).splitlines()[1].strip()})") from None
    crit = state.get("class_criterion")
    if isinstance(crit, torch.Tensor) and crit.shape[-1] == cfg.data.num_classes:
        net.class_conf.copy_(crit.reshape(-1, cfg.data.num_classes)[0].float())
    out = Path(out)
    if out.suffix != ".pt":
        out = output_folder(out) / "best.pt"
    else:
        output_folder(out.parent)
    extra = {"class_names": _class_names(cfg), "labeled": [], "imported_from": path.name,
             "official_epoch": int(state.get("epoch", 0)), "official_best_miou": float(state.get("best_miou", 0.0))}
    save_checkpoint(out, {"task": "adapt", "recipe": {k: v for k, v in recipe_dict.items() if k != "_source"},
                          "model": model_state(net), "extra": extra})
    return {"checkpoint": str(out), "official_epoch": extra["official_epoch"],
            "official_best_miou": 100 * extra["official_best_miou"],
            "next": f"zsk adapt eval -c {out} --json"}
