"""retrieve's hooks for ``info``, ``sample``, ``zsk demo`` and ``zsk bench``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.errors import ZskError
from zsk.core.io import StdinInput
from zsk.core.task import Loaded, run_demo
from zsk.metrics.retrieval import evaluate_embeddings
from zsk.tasks.retrieve.config import Config
from zsk.tasks.retrieve.data import Vocabulary, load_split, write_sample
from zsk.tasks.retrieve.model import RankingLoss
from zsk.tasks.retrieve.train import (
    build_model,
    build_tokenizer,
    frozen_prefixes,
    make_step_fn,
    param_groups,
    vocabulary_captions,
)

BENCH_EVAL_IMAGES = 5000  # the COCO 5K test protocol: 5,000 images x 25,000 captions
BENCH_PAIR_CAPTIONS = 500  # SGR/SAF: captions scored against one shard of images (quadratic cost, extrapolated)
DEMO_QUERY = "a dog sitting on the beach"


def info(cfg: Config) -> dict[str, Any]:
    """Parameters per encoder, FLOPs per (image, caption) pair, split sizes when the data is present."""
    pool, text = cfg.model.resolved()
    splits: dict[str, dict | str] = {}
    train_caps = None
    for name in dict.fromkeys([cfg.data.train_split, cfg.data.val_split, cfg.data.test_split]):
        try:
            s = load_split(cfg.data, name)
            splits[name] = {"images": s.num_images, "captions": s.num_captions}
            if name == cfg.data.train_split:
                train_caps = vocabulary_captions(cfg, s)
        except ZskError as e:
            splits[name] = f"not available: {e}"
    if text == "bert":
        tokenizer = build_tokenizer(cfg)
        vocab_size = len(tokenizer)
    elif train_caps is not None:
        vocab_size = len(Vocabulary.build(train_caps, cfg.data.vocab_threshold, cfg.data.tokenizer))
    else:
        vocab_size = 10_000  # stand-in when the training captions are absent (F30K's vocabulary is ~8.5K words)
    model = build_model(cfg, vocab_size, load_pretrained=False)
    frozen = frozen_prefixes(cfg)
    params: dict[str, Any] = {}
    total = trainable = 0
    # image_encoder, text_encoder, and VSRN's captioner (training only) / SGR-SAF's similarity network
    for name, part in model.named_children():
        n_total, n_train = count_params(part)
        if name == "image_encoder" and frozen:
            n_train = sum(p.numel() for n, p in part.named_parameters() if not n.startswith("backbone."))
        params[name] = {"total": n_total, "trainable": n_train}
        total, trainable = total + n_total, trainable + n_train
    params.update(total=total, trainable=trainable)
    images, img_len, tokens, tok_len = synthetic_batch(cfg, 1, vocab_size)
    model.eval()
    flops = count_flops(lambda: model(images, img_len, tokens, tok_len))
    return {
        "task": "retrieve", "base": cfg.model.base, "image_encoder": cfg.model.image_encoder, "image_pool": pool,
        "text_encoder": text, "loss": cfg.train.loss.kind, "embed_size": cfg.model.embed_size,
        "vocab_size": vocab_size if (train_caps is not None or text == "bert") else None,
        "params": params, "params_total": total, "params_trainable": trainable,
        "gflops": flops / 1e9, "gflops_unit": "per image-caption pair", "captions_per_image": cfg.data.captions_per_image, "splits": splits,
    }


def synthetic_batch(cfg: Config, batch: int, vocab_size: int, words: int = 12,
                    device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random inputs of the recipe's real sizes: images (B, regions, dim) or (B, 3, S, S), tokens (B, words)."""
    m = cfg.model
    g = torch.Generator().manual_seed(0)
    if m.image_encoder == "cnn":
        images = torch.randn(batch, 3, m.image_size, m.image_size, generator=g)
    else:
        images = torch.rand(batch, m.num_regions, m.img_dim, generator=g)
    img_len = torch.full((batch,), images.shape[1] if images.dim() == 3 else 1, dtype=torch.long)
    tokens = torch.randint(5, max(6, vocab_size), (batch, words), generator=g)
    tok_len = torch.full((batch,), words, dtype=torch.long)
    dev = device or torch.device("cpu")
    return images.to(dev), img_len.to(dev), tokens.to(dev), tok_len.to(dev)


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """The Trainer's step (the training step function, the recipe's optimizer, BERT's lr multiplier,
    clipping) on a synthetic batch of the recipe's real input sizes, random init; inference embeds
    the batch's images and captions. ``extra`` times the chunked evaluation of a 5K-image x
    25K-caption similarity matrix; for SGR/SAF (pairwise, quadratic) it times one row of score blocks and
    extrapolates the F30K and COCO 5K test matrices from the pair rate."""
    bs = batch_size or cfg.train.batch_size
    _, text = cfg.model.resolved()
    vocab_size = len(build_tokenizer(cfg)) if text == "bert" else 10_000
    model = build_model(cfg, vocab_size, load_pretrained=False).to(device)
    loss_fn = RankingLoss(cfg.train.loss)
    images, img_len, tokens, tok_len = synthetic_batch(cfg, bs, vocab_size, device=device)
    batch = {"image": images, "img_lengths": img_len, "tokens": tokens, "cap_lengths": tok_len,
             "img_index": torch.arange(bs, device=device) // 2,  # pairs of captions of the same picture, as in real batches
             "index": torch.arange(bs, device=device)}  # caption indices (train.loss.lseh.mask_ids: caption_index_div5)
    if loss_fn.needs_lsa:
        batch["lsa"] = torch.randn(bs, cfg.data.lsa_rank, device=device)

    def infer_step() -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(images, img_len, tokens, tok_len)
        model.train(was_training)

    def pair_extra() -> dict[str, Any]:
        # SGR/SAF: one row of shards (eval.shard images x BENCH_PAIR_CAPTIONS captions) through the similarity
        # network, timed; the full F30K 1K x 5K and COCO 5K x 25K matrices are extrapolated from its pair rate
        from zsk.tasks.retrieve.model_sgraf import LocalCaptions, score_blocks

        n_img, n_cap = min(cfg.eval.shard, BENCH_PAIR_CAPTIONS), BENCH_PAIR_CAPTIONS
        g = torch.Generator().manual_seed(1)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            img = model.encode_images(torch.rand(n_img, cfg.model.num_regions, cfg.model.img_dim, generator=g).to(device))
            toks = torch.randint(5, vocab_size, (n_cap, 12), generator=g).to(device)
            cap = model.encode_captions(toks, torch.full((n_cap,), 12, device=device))
        caps = LocalCaptions(list(cap))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        score_blocks(model, img, caps, cfg.eval.shard, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        model.train(was_training)
        rate = n_img * n_cap / dt
        out = {"eval_images": n_img, "eval_captions": n_cap, "eval_s": dt, "eval_pairs_per_s": rate,
               "eval_shard": cfg.eval.shard, "eval_words_per_caption": 12,
               "f30k_1k_test_s_extrapolated": 1000 * 5000 / rate, "coco_5k_test_s_extrapolated": 5000 * 25000 / rate}
        if device.type == "cuda":
            out["eval_peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        return out

    def extra() -> dict[str, Any]:
        if cfg.model.pairwise:
            return pair_extra()
        n_img, n_cap = BENCH_EVAL_IMAGES, 5 * BENCH_EVAL_IMAGES
        g = torch.Generator().manual_seed(1)
        img = torch.nn.functional.normalize(torch.randn(n_img, cfg.model.embed_size, generator=g), dim=1).to(device)
        cap = torch.nn.functional.normalize(torch.randn(n_cap, cfg.model.embed_size, generator=g), dim=1).to(device)
        t0 = time.perf_counter()
        evaluate_embeddings(img, cap, 5, cfg.eval.chunk)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return {"eval_images": n_img, "eval_captions": n_cap, "eval_s": time.perf_counter() - t0}

    # one optimizer step per epoch: past VSE infinity's first-epoch warm-up, the hardest-negative loss is timed
    return BenchSpec(model=model, step_fn=make_step_fn(loss_fn, 1), batch=batch, train_cfg=cfg.train,
                     infer_step=infer_step, train_samples=bs,
                     # SGR/SAF score every image of the batch against every caption: bs x bs pairs per call
                     infer_samples=bs * bs if cfg.model.pairwise else bs, param_groups=param_groups(model, cfg),
                     exclude_prefixes=frozen_prefixes(cfg), unit="pairs", extra=extra)


def sample(out: Path, seed: int = 0) -> dict[str, Any]:
    """Write a small synthetic precomputed dataset (for recipes/retrieve/demo.yaml and tests)."""
    folder = write_sample(out, seed=seed)
    return {"data": str(folder), "use": f"zsk retrieve train --recipe retrieve/demo --set data.root={folder}"}


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (``data.root: "@sample"``): the default sample set."""
    return {"data.root": str(write_sample(root))}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train ``retrieve/demo`` on the sample data, evaluate rsum on its test split and run one caption query."""

    def inputs(loaded: Loaded, data: dict) -> list[StdinInput]:
        return [StdinInput(DEMO_QUERY.encode("utf-8"))]

    return run_demo(_task(), workdir, device, "rsum", inputs, split="test")


def _task() -> Any:
    from zsk.tasks.retrieve.cli import TASK

    return TASK
