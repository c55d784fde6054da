"""refer's hooks for ``info``, ``sample``, ``zsk demo`` and ``zsk bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.errors import ZskError
from zsk.tasks.refer.config import Config
from zsk.tasks.refer.data import write_sample
from zsk.tasks.refer.evaluate import mask_logits
from zsk.tasks.refer.train import build_model, make_step_fn, param_groups


def _dummy_text(cfg: Config, n: int, g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n token sequences of 12 tokens ([CLS] ... [SEP]) padded to ``data.max_tokens``."""
    t = cfg.data.max_tokens
    k = min(12, t)
    ids = torch.zeros(n, t, dtype=torch.long)
    ids[:, :k] = torch.randint(5, cfg.model.vocab_size, (n, k), generator=g)
    att = torch.zeros(n, t, dtype=torch.long)
    att[:, :k] = 1
    return ids, att


def info(cfg: Config) -> dict[str, Any]:
    """Model parts, parameter counts and forward GFLOPs for one image + one expression."""
    model = build_model(cfg, pretrained=False).eval()
    total, trainable = count_params(model)
    s = cfg.data.image_size
    x = torch.zeros(1, 3, s, s)
    ids, att = _dummy_text(cfg, 1)
    with torch.no_grad():
        flops = count_flops(lambda: model(x, ids, att))
    m = cfg.model
    return {"task": "refer", "model": "AlignFormer (LGFormer architecture + cross-modal instance contrastive loss)",
            "image_encoder": f"Swin embed {m.embed_dim}, depths {m.depths}, window {m.window_size}",
            "text_encoder": m.text_encoder or f"random BERT ({m.text_layers} layers, {m.text_dim}-d)",
            "dataset": f"{cfg.data.dataset} ({cfg.data.split_by})", "input_size": [s, s],
            "max_tokens": cfg.data.max_tokens, "params_total": total, "params_trainable": trainable,
            "gflops": flops / 1e9, "gflops_unit": "per image and expression",
            "outputs": m.dec_layers + 1, "contrastive_weight": cfg.train.loss.contrastive.weight}


def sample(out: Path, seed: int = 0, *, images: int = 40, size: int = 64) -> dict[str, Any]:
    """Write a synthetic referring set in the refer layout (RefCOCO UNC file names)."""
    if images < 4:
        raise ZskError("sample: --images must be at least 4 (train, val, testA and testB each need one)")
    if not 32 <= size <= 1024:
        raise ZskError(f"sample: --size {size} must be between 32 and 1024 pixels")
    root = write_sample(out, num_images=images, size=size, seed=seed)
    return {"root": str(root), "images": images, "refs": 2 * images, "expressions": 6 * images,
            "next": f"zsk refer train --recipe refer/demo --set data.root={root}"}


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (``data.root: "@sample"``): the default sample set."""
    return {"data.root": str(write_sample(root))}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train ``refer/demo`` on the sample data, evaluate oIoU on val and segment one image from an expression."""
    from zsk.core.run import release_run, start_run
    from zsk.tasks.refer.cli import TASK
    from zsk.tasks.refer.evaluate import evaluate, load
    from zsk.tasks.refer.predict import predict

    workdir = Path(workdir)
    ctx = start_run("refer", Config, "refer/demo", [], out=workdir / "run", device=device, sample=TASK)
    TASK.train(ctx)
    release_run(ctx)
    loaded = load(ctx.run_dir / "best.pt", device=device)
    result = evaluate(loaded, None, workdir / "eval")
    root = Path(ctx.recipe["data"]["root"])
    image = sorted((root / "images" / "mscoco" / "images" / "train2014").glob("*.jpg"))[-1]
    for _ in predict(loaded, [image], workdir / "pred", text=["the red square", "thing on the left"]):
        pass
    return {"metric": "oIoU", "value": result["oIoU"]}


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """The Trainer's step on a synthetic batch at the recipe's input size, and inference of
    ``eval.expressions_per_batch`` expressions on one image (the evaluation loop's unit)."""
    bs = batch_size or cfg.train.batch_size
    model = build_model(cfg, pretrained=False).to(device)
    g = torch.Generator().manual_seed(0)
    s = cfg.data.image_size
    ids, att = _dummy_text(cfg, bs, g)
    mask = torch.zeros(bs, s, s, dtype=torch.uint8)
    mask[:, s // 4: s // 2, s // 4: 3 * s // 4] = 1
    batch = {"image": torch.randn(bs, 3, s, s, generator=g), "mask": mask, "input_ids": ids, "attention_mask": att}
    n = cfg.eval.expressions_per_batch
    eids, eatt = _dummy_text(cfg, n, g)
    image = torch.randn(3, s, s, generator=g)

    def infer_step() -> None:
        mask_logits(model, image, eids, eatt, device, cfg.runtime.precision, cfg.eval.output, n)

    return BenchSpec(model=model, step_fn=make_step_fn(cfg), batch=batch, train_cfg=cfg.train, infer_step=infer_step,
                     train_samples=bs, infer_samples=n, param_groups=param_groups(model), unit="images",
                     infer_unit="expressions")
