"""adapt's hooks for ``info``, ``sample``, ``zsk demo`` and ``zsk bench``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.errors import ZskError
from zsk.core.stages import stage_config
from zsk.core.task import Loaded, run_demo
from zsk.tasks.adapt.config import Config
from zsk.tasks.adapt.data import cityscapes_split, write_sample
from zsk.tasks.adapt.losses import MemoryBank
from zsk.tasks.adapt.selection import image_uncertainty
from zsk.tasks.adapt.train import StepState, build_model, make_step_fn, param_groups

CITYSCAPES_SIZE = (1024, 2048)


def info(cfg: Config) -> dict[str, Any]:
    """Classes, rounds and budgets, parameter counts and forward GFLOPs per training crop."""
    model = build_model(cfg, pretrained=False)
    total, trainable = count_params(model.student)
    student = model.student.to("meta").eval()
    x = torch.zeros(1, 3, *cfg.data.crop_size, device="meta")
    with torch.no_grad():
        flops = count_flops(lambda: student(x))
    al = cfg.train.al
    splits: dict[str, Any] = {}
    for split in ("train", "val"):
        try:
            splits[split] = len(cityscapes_split(cfg.data, split))
        except ZskError as e:
            splits[split] = f"not available ({e})"
    budgets = [al.initial_size + k * al.budget_per_round for k in range(al.rounds)]
    return {"task": "adapt", "model": "DeepLabv3+ (deep-stem ResNet, OS8) mean teacher (STAL)",
            "classes": cfg.data.num_classes, "source": cfg.data.source, "params_total": total,
            "params_trainable": trainable, "params_teacher": total, "gflops": flops / 1e9,
            "gflops_unit": f"student forward per {cfg.data.crop_size[0]}x{cfg.data.crop_size[1]} crop",
            "rounds": al.rounds, "labelled_target_per_round": budgets, "selector": al.selector,
            "eval_window": list(cfg.eval.window), "eval_stride": list(cfg.eval.stride), "target_images": splits}


def sample(out: Path, seed: int = 0, *, num_source: int = 12, num_train: int = 12, num_val: int = 4,
           size: str = "64,128") -> dict[str, Any]:
    """Write the synthetic GTAV-layout source and Cityscapes-layout target (colour-shifted) sets."""
    try:
        hw = tuple(int(v) for v in size.split(","))
    except ValueError:
        hw = ()
    if len(hw) != 2 or min(hw) < 32 or max(hw) > 2048:
        raise ZskError(f"sample: --size {size!r} must be H,W from 32 to 2048, e.g. 64,128")
    if min(num_source, num_train, num_val) < 1:
        raise ZskError("sample: --source, --train and --val must be at least 1")
    out = Path(out)
    roots = write_sample(out, num_source, num_train, num_val, hw, seed)  # type: ignore[arg-type]
    return {"cityscapes": str(roots["cityscapes"]), "gtav": str(roots["gtav"]), "source": num_source,
            "train": num_train, "val": num_val,
            "next": f"zsk adapt train --recipe adapt/demo --set data.root={roots['cityscapes']} "
                    f"--set data.source_root={roots['gtav']}"}


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (``data.root: "@sample"``): the default sample sets."""
    roots = write_sample(root)
    return {"data.root": str(roots["cityscapes"]), "data.source_root": str(roots["gtav"])}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train ``adapt/demo`` (two rounds) on the sample data, evaluate mIoU and predict one val image."""

    def inputs(loaded: Loaded, data: dict) -> list[Path]:
        return sorted((Path(data["root"]) / "leftImg8bit" / "val").glob("*/*.png"))[:1]

    return run_demo(_task(), workdir, device, "mIoU", inputs)


def _task() -> Any:
    from zsk.tasks.adapt.cli import TASK

    return TASK


class _RandomImages:
    """Stand-in unlabelled set for bench: ``[(index, seed)]`` gives a random crop-sized image."""

    def __init__(self, crop: tuple[int, int]) -> None:
        self.crop = crop

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(int(item[1]) % 2**31)
        return {"image": torch.randn(3, *self.crop, generator=g), "index": torch.tensor(item[0])}


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None,
               image_shape: tuple[int, int] = CITYSCAPES_SIZE) -> BenchSpec:
    """The Trainer's STAL step (ACP, ACM, student + teacher passes, all losses, from the contrastive epoch
    on) on a synthetic batch of the recipe's crop size; inference = one selection score (a Cityscapes-sized
    image resized to train.al.select_size); ``extra`` times the sliding-window evaluation of one image."""
    tcfg = stage_config(cfg.train, "round1")
    bs = batch_size or tcfg.batch_size
    net = build_model(cfg, pretrained=False).to(device)
    c = cfg.data.num_classes
    crop = tuple(cfg.data.crop_size)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c, (bs, *crop), generator=g)
    batch = {"image": torch.randn(bs, 3, *crop, generator=g), "label": labels,
             "paste_image": torch.randn(bs, 3, *crop, generator=g), "paste_label": labels.flip(-1),
             "u_image": torch.randn(1, 3, *crop, generator=g), "u_index": torch.tensor([0])}
    n_unl = 64
    state = StepState(_RandomImages(crop), steps_per_epoch=10**9, epochs=tcfg.epochs or 1, seed=0,  # type: ignore[arg-type]
                      bank=MemoryBank(c, tcfg.loss.contra.queue_size, tcfg.loss.contra.queue_size_first),
                      extra={"cutmix_bank": torch.ones(c, n_unl, dtype=torch.uint8)})
    # time the full loss: the contrastive term is on (as from epoch contra.start_epoch)
    import dataclasses

    contra = dataclasses.replace(tcfg.loss.contra, start_epoch=0)
    run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(tcfg, loss=dataclasses.replace(tcfg.loss, contra=contra)))
    step_fn = make_step_fn(run_cfg, state)
    image = torch.randn(1, 3, *image_shape, generator=g).to(device)

    def infer_step() -> None:
        image_uncertainty(net.teacher.eval(), image, cfg.train.al.select_size, cfg.train.al.selector,
                          cfg.train.al.ripu_radius)

    def extra() -> dict[str, Any]:
        from zsk.tasks.adapt.evaluate import segment_logits

        net.teacher.eval()
        segment_logits(net.teacher, image[0], cfg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        segment_logits(net.teacher, image[0], cfg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return {"eval_image_shape": list(image_shape), "eval_s_per_image": time.perf_counter() - t0,
                "eval_window": list(cfg.eval.window), "eval_stride": list(cfg.eval.stride)}

    return BenchSpec(model=net, step_fn=step_fn, batch=batch, train_cfg=tcfg, infer_step=infer_step,
                     train_samples=bs, infer_samples=1, param_groups=param_groups(net, tcfg.head_lr_mult),
                     unit="images", infer_unit="selection_images", extra=extra)
