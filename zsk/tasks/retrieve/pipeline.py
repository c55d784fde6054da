"""Train, evaluate, predict, index and query for the retrieve task (LSEH on VSE++ / VSE infinity)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from zsk.core import dist
from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.checkpoint import load_checkpoint, load_model_state
from zsk.core.device import autocast, autocast_dtype, resolve_device
from zsk.core.errors import ZskError
from zsk.core.progress import log, progress
from zsk.core.run import RunContext, config_from_checkpoint
from zsk.core.trainer import Trainer, batches_per_epoch, make_eval_loader, make_loader
from zsk.data.captions import PrecompSplit, read_caption_lines, read_features, write_lsa_matrix
from zsk.metrics.retrieval import coco_1k, evaluate_embeddings
from zsk.tasks.retrieve.config import Config, TrainConfig
from zsk.tasks.retrieve.data import (
    BertTokens,
    Collate,
    ImageFeatures,
    ImageFiles,
    PrecompPairs,
    RawPairs,
    RawSplit,
    Vocabulary,
    load_split,
    subset_split,
    write_sample,
)
from zsk.tasks.retrieve.losses import RankingLoss
from zsk.tasks.retrieve.lsa import LsaSettings, lsa_for_caption_file
from zsk.tasks.retrieve.model import (
    AggrGPOImageEncoder,
    BertGPOTextEncoder,
    BiGRUGPOTextEncoder,
    CNNImageEncoder,
    GRUTextEncoder,
    PrecompLinearImageEncoder,
    VSEModel,
    cnn_trunk,
)

TASK = "retrieve"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# ----------------------------------------------------------------------------- building blocks


def build_tokenizer(cfg: Config, train_captions: list[str] | None = None, vocab_words: list[str] | None = None):
    """The caption tokenizer: a word vocabulary from the training captions (GRU/BiGRU) or BERT's."""
    _, text = cfg.model.resolved()
    if text == "bert":
        from zsk.models.hf import load_hf_tokenizer

        return BertTokens(load_hf_tokenizer(cfg.model.bert, option="model.bert"))
    if vocab_words is not None:
        return Vocabulary(vocab_words)
    if train_captions is None:
        raise ZskError("a word vocabulary needs the training captions (data.root)")
    return Vocabulary.build(train_captions, cfg.data.vocab_threshold)


def build_model(cfg: Config, vocab_size: int, load_pretrained: bool = True) -> VSEModel:
    """The recipe's VSE network. ``load_pretrained`` off builds pretrained parts with random weights."""
    m = cfg.model
    pool, text = m.resolved()
    if m.image_encoder == "cnn":
        trunk, feat_dim = cnn_trunk(m.backbone, m.pretrained if load_pretrained else None)
        image = CNNImageEncoder(trunk, feat_dim, m.embed_size, m.finetune)
    elif pool in ("flatten", "mean"):
        image = PrecompLinearImageEncoder(m.img_dim, m.num_regions, m.embed_size, pool)
    else:
        image = AggrGPOImageEncoder(m.img_dim, m.embed_size, m.gpo_dim)
    if text == "gru":
        txt: nn.Module = GRUTextEncoder(vocab_size, m.word_dim, m.embed_size, m.text_layers)
    elif text == "bigru":
        txt = BiGRUGPOTextEncoder(vocab_size, m.word_dim, m.embed_size, m.text_layers, m.gpo_dim)
    else:
        from transformers import AutoConfig, AutoModel

        from zsk.models.hf import load_hf_model

        if load_pretrained:
            bert = load_hf_model(m.bert, option="model.bert")
        else:
            bert = AutoModel.from_config(load_hf_model(m.bert, option="model.bert", loader=AutoConfig))
        txt = BertGPOTextEncoder(bert, m.embed_size, m.gpo_dim)
    return VSEModel(image, txt)


def frozen_prefixes(cfg: Config) -> tuple[str, ...]:
    """Pretrained parts that are not trained and therefore not copied into checkpoints."""
    m = cfg.model
    if m.image_encoder == "cnn" and not m.finetune and m.pretrained:
        return ("image_encoder.backbone.",)
    return ()


def check_split_features(cfg: Config, split) -> None:
    """Per-image feature shape of a precomputed split against the model (names the file on mismatch)."""
    if not isinstance(split, PrecompSplit):
        return
    m = cfg.model
    pool, _ = m.resolved()
    shape = tuple(split.features.shape[1:])
    if pool == "flatten":
        want = (m.num_regions, m.img_dim) if len(shape) == 2 else (m.img_dim * m.num_regions,)
        if shape != want:
            raise ZskError(f"{split.ims_path}: per-image features {shape} do not match the flattened encoder's "
                           f"(model.num_regions={m.num_regions}, model.img_dim={m.img_dim}); set them to the file's shape")
    elif shape[-1] != m.img_dim:
        raise ZskError(f"{split.ims_path}: feature width {shape[-1]} does not match model.img_dim={m.img_dim}; "
                       f"set model.img_dim={shape[-1]}")


def training_lsa(cfg: Config, split) -> np.ndarray:
    """LSA rows of the training captions: from ``data.lsa_file`` or computed once and cached (Step 1)."""
    from zsk.data.captions import read_lsa_matrix

    if cfg.data.lsa_file:
        return read_lsa_matrix(cfg.data.lsa_file, split.num_captions)
    settings = LsaSettings(cfg.data.lsa_rank, cfg.data.lsa_iter, cfg.data.lsa_seed)
    if isinstance(split, PrecompSplit):
        return lsa_for_caption_file(split.caps_path, split.captions, settings)
    return _raw_lsa(cfg, split, settings)


def _raw_lsa(cfg: Config, split: RawSplit, settings: LsaSettings) -> np.ndarray:
    from zsk.core.cache import code_version, default_cache, file_fingerprint
    from zsk.tasks.retrieve.lsa import fit_lsa

    key = {"source": file_fingerprint(split.source), "split": cfg.data.train_split, "restval": cfg.data.use_restval,
           "settings": dataclasses.asdict(settings), "code": code_version(), "producer": "retrieve.lsa.raw.v1"}
    return default_cache().get_or_compute("retrieve-lsa", key, lambda: fit_lsa(split.captions, settings))


def make_dataset(cfg: Config, split, tokenizer, lsa: np.ndarray | None, train: bool):
    d = cfg.data
    if isinstance(split, PrecompSplit):
        return PrecompPairs(split, tokenizer, lsa, train, d.region_drop if train else 0.0,
                            d.token_aug if train else 0.0, d.max_words, cfg.runtime.seed)
    if d.region_drop > 0 or d.token_aug > 0:
        raise ZskError("data.region_drop / data.token_aug apply to precomputed features only (data.format precomp)")
    return RawPairs(split, tokenizer, cfg.model.image_size, lsa, train, d.max_words)


# ----------------------------------------------------------------------------- encoding and metrics


def _batched(seq: list, size: int):
    for s in range(0, len(seq), size):
        yield seq[s : s + size]


@torch.no_grad()
def encode_images(model: VSEModel, images, cfg: Config, device: torch.device, desc: str = "images") -> Tensor:
    """Embeddings of a gallery: ``images`` is a feature array ``(N, ...)`` or a list of image paths."""
    model.eval()
    ds = ImageFeatures(images) if isinstance(images, np.ndarray) else ImageFiles(list(images), cfg.model.image_size)
    # every rank encodes the whole gallery; the loader leaves the global RNG alone (exact resume)
    loader = make_eval_loader(ds, cfg.eval.batch_size, sharded=False)
    dtype = autocast_dtype(device, cfg.runtime.precision)
    out = []
    for x in progress(loader, desc=f"encode {desc}"):
        with autocast(device, dtype):
            out.append(model.encode_images(x.to(device), None).float())
    return torch.cat(out)


@torch.no_grad()
def encode_captions(model: VSEModel, captions: list[str], tokenizer, cfg: Config, device: torch.device) -> Tensor:
    """Embeddings of captions (padded batches of the tokenizer's ids)."""
    model.eval()
    if any(not c.strip() for c in captions):
        raise ZskError("empty caption given; every caption must hold text")
    ids = [tokenizer.encode(c) for c in captions]
    if cfg.data.max_words > 0:
        ids = [t[: cfg.data.max_words - 1] + [t[-1]] if len(t) > cfg.data.max_words else t for t in ids]
    dtype = autocast_dtype(device, cfg.runtime.precision)
    out = []
    for chunk in progress(list(_batched(ids, cfg.eval.batch_size)), desc="encode captions"):
        lens = torch.tensor([len(t) for t in chunk])
        toks = torch.full((len(chunk), int(lens.max())), tokenizer.pad_id, dtype=torch.long)
        for j, t in enumerate(chunk):
            toks[j, : len(t)] = torch.tensor(t)
        with autocast(device, dtype):
            out.append(model.encode_captions(toks.to(device), lens.to(device)).float())
    return torch.cat(out)


def split_images(split) -> np.ndarray | list[Path]:
    return split.features if isinstance(split, PrecompSplit) else [it.path for it in split.images]


def split_image_names(split) -> list[str]:
    if isinstance(split, PrecompSplit):
        return split.image_ids or [str(i) for i in range(split.num_images)]
    return [str(it.path) for it in split.images]


def encode_split(model: VSEModel, split, tokenizer, cfg: Config, device: torch.device) -> tuple[Tensor, Tensor]:
    return (encode_images(model, split_images(split), cfg, device),
            encode_captions(model, split.captions, tokenizer, cfg, device))


def flat_metrics(m: dict) -> dict[str, float]:
    """``{"i2t": {"r1": ..}, ...}`` -> ``{"i2t_r1": .., ..., "rsum": ..}`` for the trainer's log."""
    out = {"rsum": float(m["rsum"])}
    for d in ("i2t", "t2i"):
        out.update({f"{d}_{k}": float(v) for k, v in m[d].items()})
    return out


def score_split(model: VSEModel, split, tokenizer, cfg: Config, device: torch.device,
                protocol: str = "standard") -> dict:
    """Retrieval metrics of a split under a protocol: ``standard`` (all of the split, e.g. F30K 1K test or
    COCO 5K), ``coco1k`` (five folds of 1,000 images averaged) or ``coco5k`` (the whole split)."""
    img, cap = encode_split(model, split, tokenizer, cfg, device)
    if protocol == "coco1k":
        if split.num_images % cfg.eval.folds:
            raise ZskError(f"--protocol coco1k: {split.num_images} images do not split into {cfg.eval.folds} folds; "
                           "use the 5K testall split")
        return coco_1k(img, cap, split.captions_per_image, cfg.eval.folds, cfg.eval.chunk)
    return evaluate_embeddings(img, cap, split.captions_per_image, cfg.eval.chunk)


# ----------------------------------------------------------------------------- train


def _with_lr_update(tcfg: TrainConfig, optim_steps_per_epoch: int) -> TrainConfig:
    """VSE++'s decay ``lr * gamma ** (epoch // lr_update)`` as step-schedule milestones."""
    if tcfg.lr_update <= 0:
        return tcfg
    if tcfg.schedule not in ("constant", "step"):
        raise ZskError(f"train.lr_update ({tcfg.lr_update} epochs) defines a step schedule; it cannot be combined "
                       f"with train.schedule={tcfg.schedule} (set train.lr_update=0 or train.schedule=step)")
    if tcfg.epochs is not None:
        total = tcfg.epochs * optim_steps_per_epoch
    elif tcfg.steps is not None:
        total = tcfg.steps
    else:
        raise ZskError("the recipe sets neither train.steps nor train.epochs: set one (e.g. --set train.epochs=30)")
    every = tcfg.lr_update * optim_steps_per_epoch
    return dataclasses.replace(tcfg, schedule="step", milestones=list(range(every, total, every)))


def vocabulary_captions(cfg: Config, train_split) -> list[str]:
    """Captions the word vocabulary is counted over (``data.vocab_splits``; training only by default)."""
    caps: list[str] = []
    for name in cfg.data.vocab_splits:
        caps += train_split.captions if name == cfg.data.train_split else load_split(cfg.data, name).captions
    if not caps:
        raise ZskError("data.vocab_splits is empty; list at least the training split")
    return caps


def param_groups(model: VSEModel, cfg: Config) -> list[dict]:
    """BERT trains at ``lr * model.bert_lr_mult`` (VSE infinity); everything else at ``lr``."""
    bert = getattr(model.text_encoder, "bert", None)
    if bert is None:
        return [{"params": list(model.parameters())}]
    bert_ids = {id(p) for p in bert.parameters()}
    rest = [p for p in model.parameters() if id(p) not in bert_ids]
    return [{"params": rest}, {"params": list(bert.parameters()), "lr_mult": cfg.model.bert_lr_mult}]


def train(ctx: RunContext) -> dict:
    """Train with the recipe's loss; keep the best validation rsum; report epochs to the best model."""
    cfg: Config = ctx.cfg
    cfg.model.resolved()
    train_split = load_split(cfg.data, cfg.data.train_split)
    val_split = subset_split(load_split(cfg.data, cfg.data.val_split), cfg.eval.val_max_images)
    for s in (train_split, val_split):
        check_split_features(cfg, s)
    tokenizer = build_tokenizer(cfg, vocabulary_captions(cfg, train_split))
    loss_fn = RankingLoss(cfg.train.loss)
    lsa = training_lsa(cfg, train_split) if loss_fn.needs_lsa else None
    dataset = make_dataset(cfg, train_split, tokenizer, lsa, train=True)
    model = build_model(cfg, len(tokenizer))
    steps_per_epoch = batches_per_epoch(len(dataset), cfg.train.batch_size)
    optim_per_epoch = max(1, steps_per_epoch // cfg.train.grad_accum)
    tcfg = _with_lr_update(cfg.train, optim_per_epoch)
    log(f"retrieve: {train_split.num_images} train images / {train_split.num_captions} captions, "
        f"{val_split.num_images} val images; loss {cfg.train.loss.kind}; vocabulary {len(tokenizer)}")
    collate = Collate(tokenizer.pad_id)

    def step_fn(m: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        img, cap = m(batch["image"], batch["img_lengths"], batch["tokens"], batch["cap_lengths"])
        epoch = step // optim_per_epoch
        loss = loss_fn(img, cap, batch["img_index"], batch.get("lsa"), epoch)
        return {"loss": loss}

    def loader_fn(epoch: int, start: int):
        return make_loader(dataset, cfg.train.batch_size, epoch=epoch, seed=cfg.runtime.seed,
                           workers=cfg.runtime.workers, collate_fn=collate, start_batch=start)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return flat_metrics(score_split(m, val_split, tokenizer, cfg, ctx.device))

    extra = {"vocab": tokenizer.words if isinstance(tokenizer, Vocabulary) else [],
             "pretrained": {"backbone": cfg.model.backbone, "weights": cfg.model.pretrained}
             if frozen_prefixes(cfg) else {}}
    trainer = Trainer(ctx, model, tcfg, step_fn, loader_fn, steps_per_epoch, eval_fn,
                      param_groups=param_groups(model, cfg), extra=extra, exclude_prefixes=frozen_prefixes(cfg))
    metrics = trainer.fit()
    best = dict(trainer.best)
    summary = {"best_rsum": best.get("value"), "best_step": best.get("step")}
    if best.get("step") is not None:
        # the paper's headline: epochs needed to reach the best model (LSEH vs L_MH)
        summary["epochs_to_best"] = best["step"] / trainer.optim_steps_per_epoch
    if dist.is_main():
        path = ctx.run_dir / "eval.json"
        doc = json.loads(path.read_text()) if path.is_file() else {}
        doc.update(summary)
        path.write_text(json.dumps(doc, indent=2))
        log(f"best rsum {summary['best_rsum']} after {summary.get('epochs_to_best', float('nan')):.2f} epochs")
    return {**metrics, **summary}


# ----------------------------------------------------------------------------- checkpoint loading


def load_trained(checkpoint: Path, sets: list[str] | None = None, recipe: Path | None = None,
                 device: str | None = None) -> tuple[Config, VSEModel, object, torch.device]:
    """(config, model with weights, tokenizer, device) from a checkpoint written by ``train``."""
    state = load_checkpoint(checkpoint)
    if state.get("task") not in (None, TASK):
        raise ZskError(f"{checkpoint} is a checkpoint of task {state.get('task')!r}, not retrieve")
    cfg, _ = config_from_checkpoint(state, Config, sets, recipe)
    extra = state.get("extra") or {}
    words = extra.get("vocab") or None
    _, text = cfg.model.resolved()
    if text != "bert" and not words:
        raise ZskError(f"{checkpoint} holds no vocabulary; it was not written by `zsk retrieve train`")
    tokenizer = build_tokenizer(cfg, vocab_words=words)
    prefixes = frozen_prefixes(cfg)
    # weights not in the checkpoint (frozen pretrained backbone) come from their source; all others from it
    model = build_model(cfg, len(tokenizer), load_pretrained=bool(prefixes))
    load_model_state(model, state["model"], prefixes, source=str(checkpoint))
    dev = resolve_device(device, cfg.runtime.device)
    return cfg, model.to(dev).eval(), tokenizer, dev


def evaluate(checkpoint: Path, sets: list[str] | None = None, split: str | None = None,
             protocol: str | None = None, recipe: Path | None = None, device: str | None = None) -> dict:
    """Metrics of a checkpoint on a split: ``{"i2t": {...}, "t2i": {...}, "rsum": ...}``."""
    cfg, model, tokenizer, dev = load_trained(checkpoint, sets, recipe, device)
    protocol = protocol or cfg.eval.protocol
    if protocol not in ("standard", "coco1k", "coco5k"):
        raise ZskError(f"--protocol {protocol!r}: choose standard, coco1k or coco5k")
    name = split or cfg.eval.split or ("testall" if protocol in ("coco1k", "coco5k") else cfg.data.test_split)
    data = load_split(cfg.data, name)
    check_split_features(cfg, data)
    result = score_split(model, data, tokenizer, cfg, dev, protocol)
    return {**result, "split": name, "protocol": protocol, "images": data.num_images, "captions": data.num_captions}


# ----------------------------------------------------------------------------- queries, predict, index


def read_text_queries(inputs: list[str]) -> list[str]:
    """Queries from arguments; ``-`` reads one query per line from stdin."""
    out: list[str] = []
    for q in inputs:
        if q == "-":
            out.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            out.append(q)
    if not out or any(not q.strip() for q in out):
        raise ZskError("empty query: give a caption text (or '-' to read lines from stdin)")
    return out


def load_image_queries(inputs: list[str], cfg: Config) -> tuple[np.ndarray | list[Path], list[str]]:
    """Image queries: ``.npy`` feature files (one image ``(regions, dim)`` or many ``(N, regions, dim)``;
    ``(dim,)`` / ``(N, dim)`` for global-vector features) for precomputed models, image files for the
    raw-image model."""
    if cfg.model.image_encoder == "cnn":
        paths = [Path(p) for p in inputs]
        for p in paths:
            if not p.is_file():
                raise ZskError(f"image not found: {p}")
        return paths, [str(p) for p in paths]
    feats, names = [], []
    for q in inputs:
        p = Path(q)
        if p.suffix != ".npy":
            raise ZskError(f"{q}: this checkpoint encodes precomputed features; give a .npy file of image features")
        if not p.is_file():
            raise ZskError(f"feature file not found: {p}")
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            raise ZskError(f"{p}: not a readable .npy array ({e})") from None
        if arr.ndim not in (1, 2, 3) or not np.issubdtype(arr.dtype, np.floating):
            raise ZskError(f"{p}: expected float features (dim,), (regions, dim) or (N, regions, dim), "
                           f"got {arr.dtype} {tuple(arr.shape)}")
        # (N, regions, dim) is a batch; (regions, dim) one image, unless the model reads one global
        # vector per image (num_regions 1), where (N, dim) is a batch; (dim,) is one global vector
        if arr.ndim == 1 or (arr.ndim == 2 and cfg.model.num_regions > 1):
            arr = arr[None]
        m = cfg.model
        flat = m.resolved()[0] == "flatten"
        ok = arr.shape[-1] == m.img_dim and (
            not flat or tuple(arr.shape[1:]) == (m.num_regions, m.img_dim) or (m.num_regions == 1 and arr.ndim == 2))
        if not ok:
            raise ZskError(f"{p}: per-image features {tuple(arr.shape[1:])} do not match the model "
                           f"(model.num_regions={m.num_regions}, model.img_dim={m.img_dim})")
        feats.append(np.asarray(arr, dtype=np.float32))
        names.extend([f"{p}[{i}]" for i in range(arr.shape[0])] if arr.shape[0] > 1 else [str(p)])
    return np.concatenate(feats), names


def top_k(queries: Tensor, gallery: Tensor, k: int, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Exact (scores, indices) of the ``k`` highest dot products per query, chunked over queries."""
    k = min(k, gallery.shape[0])
    scores, idx = [], []
    for s in range(0, queries.shape[0], chunk):
        v, i = (queries[s : s + chunk] @ gallery.T).topk(k, dim=1)
        scores.append(v)
        idx.append(i)
    return torch.cat(scores), torch.cat(idx)


def predict(inputs: list[str], checkpoint: Path, k: int = 5, split: str | None = None, sets: list[str] | None = None,
            device: str | None = None, mode: str = "auto") -> list[dict]:
    """Retrieve from a dataset split: text queries -> images (t2i), image-feature queries -> captions (i2t)."""
    cfg, model, tokenizer, dev = load_trained(checkpoint, sets, device=device)
    name = split or cfg.eval.split or cfg.data.test_split
    data = load_split(cfg.data, name)
    check_split_features(cfg, data)
    if mode == "auto":
        mode = "i2t" if all(Path(q).suffix in (".npy",) + IMAGE_SUFFIXES and Path(q).is_file() for q in inputs) else "t2i"
    if mode == "t2i":
        queries = read_text_queries(inputs)
        q = encode_captions(model, queries, tokenizer, cfg, dev)
        gallery = encode_images(model, split_images(data), cfg, dev)
        names, texts = split_image_names(data), None
    else:
        imgs, queries = load_image_queries(inputs, cfg)
        q = encode_images(model, imgs, cfg, dev, desc="queries")
        gallery = encode_captions(model, data.captions, tokenizer, cfg, dev)
        names = [split_image_names(data)[j // data.captions_per_image] for j in range(data.num_captions)]
        texts = data.captions
    scores, idx = top_k(q, gallery, k)
    out = []
    for qi, query in enumerate(queries):
        matches = []
        for r, (s, j) in enumerate(zip(scores[qi].tolist(), idx[qi].tolist(), strict=True)):
            m = {"rank": r + 1, "index": j, "score": round(s, 6)}
            if texts is None:
                m["image"] = names[j]
            else:
                m["caption"], m["image"] = texts[j], names[j]
            matches.append(m)
        out.append({"query": query, "direction": mode, "split": name, "matches": matches})
    return out


INDEX_META = "index.json"


def build_index(checkpoint: Path, out: Path, images: Path | None = None, captions: Path | None = None,
                faiss_threshold: int = 100_000, nlist: int = 0, device: str | None = None) -> dict:
    """Encode a gallery once into ``out/``: image features (``.npy``) / an image folder, or a caption file.
    Galleries larger than ``faiss_threshold`` also get a FAISS IVF index (inner product)."""
    if (images is None) == (captions is None):
        raise ZskError("give exactly one of --images DIR_OR_NPY and --captions FILE")
    cfg, model, tokenizer, dev = load_trained(checkpoint, device=device)
    if images is not None:
        kind = "images"
        if images.is_dir():
            if cfg.model.image_encoder != "cnn":
                raise ZskError(f"{images} is a folder of images, but this checkpoint encodes precomputed features; "
                               "pass a .npy file of features (or train with model.image_encoder=cnn)")
            paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise ZskError(f"{images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            emb = encode_images(model, paths, cfg, dev)
            names = [str(p) for p in paths]
        else:
            if cfg.model.image_encoder == "cnn":
                raise ZskError(f"{images}: this checkpoint encodes raw images; pass a folder of image files")
            feats = read_features(images)
            probe = PrecompSplit(images.parent, images.stem, feats, [], 1)
            _check_gallery(cfg, probe, images)
            emb = encode_images(model, feats, cfg, dev)
            ids_file = images.with_name(images.name.replace("_ims.npy", "_ids.txt"))
            names = [str(i) for i in range(len(feats))]
            if ids_file != images and ids_file.is_file():
                ids = [x.strip() for x in ids_file.read_text().splitlines() if x.strip()]
                if len(ids) == len(feats):
                    names = ids
        texts = None
    else:
        kind = "captions"
        texts = read_caption_lines(captions)
        emb = encode_captions(model, texts, tokenizer, cfg, dev)
        names = [str(i) for i in range(len(texts))]
    out.mkdir(parents=True, exist_ok=True)
    emb_np = emb.cpu().numpy().astype(np.float32)
    np.save(out / "embeddings.npy", emb_np)
    meta = {"format": 1, "kind": kind, "count": len(names), "dim": int(emb_np.shape[1]),
            "checkpoint": str(Path(checkpoint).resolve()), "names": names, "texts": texts, "faiss": False}
    if len(names) > faiss_threshold:
        import faiss

        n_lists = nlist or max(1, int(4 * math.sqrt(len(names))))
        n_lists = min(n_lists, len(names))
        quantizer = faiss.IndexFlatIP(emb_np.shape[1])
        index = faiss.IndexIVFFlat(quantizer, emb_np.shape[1], n_lists, faiss.METRIC_INNER_PRODUCT)
        index.train(emb_np)
        index.add(emb_np)
        faiss.write_index(index, str(out / "faiss.index"))
        meta.update({"faiss": True, "nlist": n_lists})
    (out / INDEX_META).write_text(json.dumps(meta))
    return {"index": str(out), "kind": kind, "count": len(names), "dim": meta["dim"], "faiss": meta["faiss"]}


def _check_gallery(cfg: Config, probe: PrecompSplit, path: Path) -> None:
    try:
        check_split_features(cfg, probe)
    except ZskError as e:
        raise ZskError(str(e).replace(str(probe.ims_path), str(path))) from None


def query_index(index_dir: Path, inputs: list[str], k: int = 10, nprobe: int = 16,
                device: str | None = None) -> list[dict]:
    """Search an index from ``build_index``: text queries against an image index, image queries
    (``.npy`` features or image files) against a caption index. FAISS when the index has one."""
    meta_path = index_dir / INDEX_META
    if not meta_path.is_file():
        raise ZskError(f"{index_dir} is not a retrieve index (no {INDEX_META}); build one with `zsk retrieve index`")
    meta = json.loads(meta_path.read_text())
    cfg, model, tokenizer, dev = load_trained(Path(meta["checkpoint"]), device=device)
    if meta["kind"] == "images":
        queries = read_text_queries(inputs)
        q = encode_captions(model, queries, tokenizer, cfg, dev)
    else:
        imgs, queries = load_image_queries(inputs, cfg)
        q = encode_images(model, imgs, cfg, dev, desc="queries")
    q_np = q.cpu().numpy().astype(np.float32)
    k = min(k, meta["count"])
    if meta.get("faiss"):
        import faiss

        index = faiss.read_index(str(index_dir / "faiss.index"))
        index.nprobe = min(nprobe, meta["nlist"])
        scores, idx = index.search(q_np, k)
    else:
        emb = torch.from_numpy(np.load(index_dir / "embeddings.npy"))
        s, i = top_k(torch.from_numpy(q_np), emb, k)
        scores, idx = s.numpy(), i.numpy()
    out = []
    for qi, query in enumerate(queries):
        matches = []
        for r, (s, j) in enumerate(zip(scores[qi].tolist(), idx[qi].tolist(), strict=True)):
            if j < 0:
                continue
            m = {"rank": r + 1, "index": int(j), "name": meta["names"][j], "score": round(float(s), 6)}
            if meta.get("texts"):
                m["caption"] = meta["texts"][j]
            matches.append(m)
        out.append({"query": query, "matches": matches})
    return out


def write_lsa_file(cfg: Config, out: Path | None = None) -> dict:
    """Compute (or fetch from the cache) the training captions' LSA and write ``train_svd.txt`` (Step 1.5)."""
    split = load_split(cfg.data, cfg.data.train_split)
    lsa = training_lsa(cfg, split)
    if out is None:
        base = split.folder if isinstance(split, PrecompSplit) else Path(cfg.data.root)
        out = base / f"{cfg.data.train_split}_svd.txt"
    write_lsa_matrix(out, lsa)
    return {"file": str(out), "rows": int(lsa.shape[0]), "rank": int(lsa.shape[1])}


# ----------------------------------------------------------------------------- info, demo, bench


def info(cfg: Config) -> dict:
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
        vocab_size = len(Vocabulary.build(train_caps, cfg.data.vocab_threshold))
    else:
        vocab_size = 10_000  # stand-in when the training captions are absent (F30K's vocabulary is ~8.5K words)
    model = build_model(cfg, vocab_size, load_pretrained=False)
    img_total, img_train = count_params(model.image_encoder)
    txt_total, txt_train = count_params(model.text_encoder)
    frozen = frozen_prefixes(cfg)
    if frozen:
        img_train = sum(p.numel() for n, p in model.image_encoder.named_parameters() if not n.startswith("backbone."))
    images, img_len, tokens, tok_len = synthetic_batch(cfg, 1, vocab_size)
    model.eval()
    flops = count_flops(lambda: model(images, img_len, tokens, tok_len))
    return {
        "task": TASK, "base": cfg.model.base, "image_encoder": cfg.model.image_encoder, "image_pool": pool,
        "text_encoder": text, "loss": cfg.train.loss.kind, "embed_size": cfg.model.embed_size,
        "vocab_size": vocab_size if (train_caps is not None or text == "bert") else None,
        "params": {"image_encoder": {"total": img_total, "trainable": img_train},
                   "text_encoder": {"total": txt_total, "trainable": txt_train},
                   "total": img_total + txt_total, "trainable": img_train + txt_train},
        "params_total": img_total + txt_total, "params_trainable": img_train + txt_train,
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


BENCH_EVAL_IMAGES = 5000  # the COCO 5K test protocol: 5,000 images x 25,000 captions


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """Training pairs/s on the recipe's real input sizes (random init) and inference captions+images/s;
    ``extra`` times the chunked evaluation of a 5K-image x 25K-caption similarity matrix."""
    bs = batch_size or cfg.train.batch_size
    _, text = cfg.model.resolved()
    vocab_size = len(build_tokenizer(cfg)) if text == "bert" else 10_000
    model = build_model(cfg, vocab_size, load_pretrained=False).to(device)
    loss_fn = RankingLoss(cfg.train.loss)
    images, img_len, tokens, tok_len = synthetic_batch(cfg, bs, vocab_size, device=device)
    img_ids = torch.arange(bs, device=device) // 2  # pairs of captions of the same picture, as in real batches
    lsa = torch.randn(bs, cfg.data.lsa_rank, device=device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)

    def train_step() -> None:
        model.train()
        img, cap = model(images, img_len, tokens, tok_len)
        loss = loss_fn(img, cap, img_ids, lsa, epoch=10**6)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
        opt.step()

    def infer_step() -> None:
        model.eval()
        with torch.no_grad():
            model(images, img_len, tokens, tok_len)

    def extra() -> dict:
        n_img, n_cap = BENCH_EVAL_IMAGES, 5 * BENCH_EVAL_IMAGES
        g = torch.Generator().manual_seed(1)
        img = torch.nn.functional.normalize(torch.randn(n_img, cfg.model.embed_size, generator=g), dim=1).to(device)
        cap = torch.nn.functional.normalize(torch.randn(n_cap, cfg.model.embed_size, generator=g), dim=1).to(device)
        t0 = time.perf_counter()
        evaluate_embeddings(img, cap, 5, cfg.eval.chunk)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return {"eval_images": n_img, "eval_captions": n_cap, "eval_s": time.perf_counter() - t0}

    return BenchSpec(train_step=train_step, infer_step=infer_step, train_samples=bs, infer_samples=bs,
                     unit="pairs", extra=extra)


def run_demo(workdir: Path, device: str) -> dict:
    """Write the sample data, train ``recipes/retrieve/demo.yaml`` on it, evaluate and predict (offline)."""
    from zsk.core.run import start_run

    workdir = Path(workdir)
    data = write_sample(workdir / "data")
    ctx = start_run(TASK, Config, "retrieve/demo", [f"data.root={data}"], out=workdir / "run", device=device)
    train(ctx)
    ckpt = ctx.run_dir / "best.pt"
    result = evaluate(ckpt, split="test", device=device)
    preds = predict(["a dog sitting on the beach"], ckpt, k=3, split="test", device=device)
    log(f"demo query 'a dog sitting on the beach' -> {[m['image'] for m in preds[0]['matches']]}")
    return {"metric": "rsum", "value": float(result["rsum"])}
