"""fakenews' hooks for ``info``, ``sample``, ``zsk demo`` and ``zsk bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsk.core import dist
from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.errors import ZskError
from zsk.core.progress import log
from zsk.core.stages import stage_config
from zsk.core.task import run_demo
from zsk.tasks.fakenews.config import Config
from zsk.tasks.fakenews.data import Corpus, split_path, write_sample
from zsk.tasks.fakenews.model import _settings_quiet_transformers
from zsk.tasks.fakenews.train import branch_step_fn, build_branches, build_model, load_corpora, param_groups

TASK = "fakenews"
DEMO_TEXTS = "ministry confirmed new tests and recovered cases\nmiracle garlic cure exposed as secret hoax\n"


def info(cfg: Config) -> dict[str, Any]:
    """Classes, splits, parameters per branch and the added tokens, GFLOPs per input of max_length."""
    _settings_quiet_transformers()
    try:
        corpora: dict[str, Corpus] | None = load_corpora(cfg)
    except ZskError as e:
        log(f"data not readable ({e}); describing the architecture only")
        corpora = None
    classes = corpora["train"].classes if corpora else (cfg.data.classes or ["class-0", "class-1"])
    branches = build_branches(cfg, corpora)
    model = build_model(cfg, branches)
    total, trainable = count_params(model)
    L = cfg.data.max_length
    inputs = {n: {"input_ids": torch.ones(1, L, dtype=torch.long), "attention_mask": torch.ones(1, L, dtype=torch.long)}
              for n in branches}
    model.eval()
    with torch.no_grad():
        flops = count_flops(lambda: model(inputs=inputs))
    splits = {}
    for split in ("train", "val", "test"):
        p = split_path(cfg.data, split)
        splits[split] = str(p) + ("" if p.is_file() else " (missing)")
    if corpora:
        splits["sizes"] = {k: len(v) for k, v in corpora.items()}
    return {
        "task": TASK,
        "classes": classes,
        "splits": splits,
        "max_length": L,
        "params_total": total,
        "params_trainable": trainable,
        "branches": {n: {"source": b.source, "params": sum(p.numel() for p in b.module.parameters()),
                         "hidden_size": b.module.feature_dim, "added_tokens": b.added_tokens} for n, b in branches.items()},
        "fusion": (f"{cfg.model.fusion}: MLP {model.fusion_dim()} -> {cfg.model.fusion_hidden} -> {len(classes)}"
                   if model.fusion_head is not None else "none (single branch)"),
        "fusion_params": sum(p.numel() for p in model.fusion_head.parameters()) if model.fusion_head is not None else 0,
        "gflops": flops / 1e9,
        "gflops_unit": "per input text (all branches + fusion)",
    }


def sample(out: Path, seed: int = 0) -> dict[str, Any]:
    """Write a small synthetic labelled corpus (Constraint_Train/Val.csv, english_test_with_labels.csv)."""
    counts = write_sample(out, seed=seed)
    return {"out": str(out), **counts}


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (``data.root: "@sample"``): the sample corpus of seed 0."""
    write_sample(root)
    return {"data.root": str(root)}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train ``fakenews/demo`` (both branches, then the fusion) on the sample corpus, evaluate the
    test file's weighted F1 and label two texts."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    texts = workdir / "texts.txt"
    texts.write_text(DEMO_TEXTS, encoding="utf-8")
    return run_demo(_task(), workdir, device, "f1_weighted", lambda loaded, data: [texts])


def _task() -> Any:
    from zsk.tasks.fakenews.cli import TASK as task

    return task


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """One optimizer step of every branch stage at once (heated softmax + FGM, each branch through its
    stage's step function, the first branch's train settings) on a batch of max_length sequences, and
    one fused prediction call on an eval batch; random-init branches of the recipe's architecture.
    Peak memory holds every branch's activations at once, where training holds one branch's."""
    _settings_quiet_transformers()
    branches = build_branches(cfg, None)
    model = build_model(cfg, branches).to(device)
    names = list(branches)
    tcfg = stage_config(cfg.train, names[0])
    bs = batch_size or tcfg.batch_size
    ebs = batch_size or cfg.eval.batch_size
    L = cfg.data.max_length
    classes = cfg.data.classes or ["class-0", "class-1"]
    g = torch.Generator().manual_seed(0)

    def batch_inputs(n: int) -> dict:
        out = {}
        for name, b in branches.items():
            vocab = b.module.word_embeddings.num_embeddings
            ids = torch.randint(5, vocab, (n, L), generator=g)
            out[name] = {"input_ids": ids, "attention_mask": torch.ones(n, L, dtype=torch.long)}
        return out

    batch = {"index": torch.arange(bs), "inputs": batch_inputs(bs), "label": torch.randint(0, len(classes), (bs,), generator=g)}
    infer_inputs = {n: {k: v.to(device) for k, v in x.items()} for n, x in batch_inputs(ebs).items()}
    fused = model.fusion_head is not None
    # the first alpha phase throughout (an epoch of 10^9 optimizer steps)
    step_fns = {n: branch_step_fn(stage_config(cfg.train, n), 10**9, n, fused) for n in names}

    def step_fn(m: nn.Module, b: dict, step: int) -> dict[str, torch.Tensor]:
        plain = dist.unwrap(m)
        outs = {n: fn(plain.branches[n] if fused else m, b, step) for n, fn in step_fns.items()}
        return {"loss": sum(o["loss"] for o in outs.values()), **{f"loss_{n}": o["loss"].detach() for n, o in outs.items()}}

    @torch.no_grad()
    def infer_step() -> None:
        was_training = model.training
        model.eval()
        model(inputs=infer_inputs)
        model.train(was_training)

    return BenchSpec(model=model, step_fn=step_fn, batch=batch, train_cfg=tcfg, infer_step=infer_step,
                     train_samples=bs, infer_samples=ebs, param_groups=param_groups(model.branches, tcfg.weight_decay),
                     unit="samples", infer_unit="texts")
