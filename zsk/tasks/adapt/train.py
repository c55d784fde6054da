"""STAL training (Guan & Yuan, arXiv 2301.13361; licongguan/ILM-ASSL train.py): mean-teacher self-training
of DeepLabv3+ on labelled source + target images and unlabelled target images, and active-learning
rounds between trainings. Each round is a stage (``round1``, ``round2``, ...): before a round after the
first, the previous round's best teacher scores the unlabelled target images and the budget is labelled
(the ground truth plays the oracle); the round then retrains from the ImageNet weights (``train.al.warm_start``
keeps the previous weights)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from zsk.core import dist
from zsk.core.checkpoint import load_checkpoint, load_model_state
from zsk.core.errors import ZskError
from zsk.core.io import atomic_open, atomic_path
from zsk.core.progress import log, progress
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages
from zsk.core.trainer import Callback, TrainConfig, Trainer, make_loader
from zsk.data.images import read_image
from zsk.models.backbones import load_weights_file
from zsk.tasks.adapt.config import Config
from zsk.tasks.adapt.data import (
    IGNORE,
    LabeledSet,
    Sample,
    StepPlan,
    StepSampler,
    StepSet,
    UnlabeledSet,
    check_samples,
    cityscapes_split,
    collate_step,
    labeled_pool,
    read_list,
    sample_seed,
    source_samples,
    to_tensor,
)
from zsk.tasks.adapt.losses import (
    MemoryBank,
    consistency_loss,
    contrastive_loss,
    entropy,
    entropy_mask,
    label_onehot,
    percentile,
    supervised_loss,
)
from zsk.tasks.adapt.mixing import (
    category_confidence,
    copy_paste,
    cutmix_mask,
    query_classes,
    sample_from_bank,
    update_bank,
)
from zsk.tasks.adapt.model import DeepLabV3Plus, MeanTeacher
from zsk.tasks.adapt.selection import (
    CITYSCAPES_TRAIN_CITIES,
    image_uncertainty,
    initial_selection,
    ripu_region_mask,
    select_by_city,
)


def build_model(cfg: Config, pretrained: bool = True) -> MeanTeacher:
    """The student/teacher pair of the recipe; the encoder from ``model.pretrained`` when given (U2PL's
    deep-stem ``resnet101.pth`` state dict, loaded into both)."""
    m = cfg.model
    student = DeepLabV3Plus(cfg.data.num_classes, m.layers, m.base_width, m.stem_width, m.decoder_channels,
                            m.dilations, m.multi_grid, m.zero_init_residual)
    if pretrained and m.pretrained:
        load_weights_file(student.encoder, m.pretrained, "model.pretrained (deep-stem ResNet ImageNet weights)")
    return MeanTeacher(student, cfg.data.num_classes, seed=cfg.runtime.seed)


def param_groups(net: MeanTeacher, head_lr_mult: float) -> list[dict]:
    """Backbone at train.lr, decoder and aux head at train.lr x head_lr_mult (x10 in STAL)."""
    s = net.student
    heads = list(s.decoder.parameters()) + list(s.auxor.parameters())
    return [{"params": list(s.encoder.parameters())}, {"params": heads, "lr_mult": head_lr_mult}]


def _up(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


@dataclass
class StepState:
    """What the step function shares with the stage: the unlabelled set (ACM partners), the memory bank,
    the Trainer (for ``extra["cutmix_bank"]``) and the schedule."""

    unlabeled: UnlabeledSet | None
    steps_per_epoch: int
    epochs: int
    seed: int
    bank: MemoryBank
    trainer: Trainer | None = None
    extra: dict = field(default_factory=dict)

    @property
    def store(self) -> dict:
        return self.trainer.extra if self.trainer is not None else self.extra


def make_step_fn(cfg: Config, state: StepState):
    """step_fn(model, batch, step): STAL's iteration (train.py ``train``): ACP on the labelled batch, ACM
    on the unlabelled image, student and teacher passes, class-confidence update, and
    L = L_sup + L_cons + 0.1 L_contra (from epoch ``contra.start_epoch``)."""
    t, mix, lc = cfg.train, cfg.train.mix, cfg.train.loss
    num_classes = cfg.data.num_classes

    def step_fn(model: nn.Module, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        net: MeanTeacher = dist.unwrap(model)  # type: ignore[assignment]
        device = batch["image"].device
        rng = np.random.default_rng(sample_seed(state.seed, 5, step))
        g = torch.Generator().manual_seed(sample_seed(state.seed, 6, step))
        epoch = step // max(state.steps_per_epoch, 1)
        images, labels = batch["image"], batch["label"]
        h, w = images.shape[-2:]
        if mix.acp and "paste_image" in batch:
            classes = query_classes(net.class_conf, mix.acp_number, mix.acp_ignore_classes, rng)
            images, labels = copy_paste(images, labels, batch["paste_image"], batch["paste_label"], classes)
        # unlabelled input: one image, mixed with a partner from the cutmix bank (ACM)
        u_img = batch["u_image"][:1]
        pair, mask, partner, cat = None, None, -1, -1
        bank_t = state.store.get("cutmix_bank")
        if mix.acm and bank_t is not None and state.unlabeled is not None:
            partner, cat = sample_from_bank(bank_t, net.class_conf, rng)
            u2 = state.unlabeled[(partner, sample_seed(state.seed, 7, step))]["image"][None].to(device)
            pair = torch.cat([u_img, u2])

        out = model(images, role="student")
        pred_l, aux_l, rep_s_l = _up(out["pred"], (h, w)), _up(out["aux"], (h, w)), out["rep"]
        hs, ws = out["pred"].shape[-2:]
        loss_sup = supervised_loss(pred_l, aux_l, labels, cfg.model.aux_weight, lc.ohem_thresh, lc.ohem_min_kept)

        with torch.no_grad():
            net.teacher.train()
            t_l = net.teacher(images)
            rep_t_l, logit_t_l = t_l["rep"], _up(t_l["pred"], (h, w))
            net.teacher.eval()
            logit_t_u = _up(net.teacher(pair if pair is not None else u_img)["pred"], (h, w))
            if pair is not None:
                mask = cutmix_mask(logit_t_u[1].argmax(0), cat, mix.area_thresh, rng)
                u_strong = (pair[0] * (1 - mask) + pair[1] * mask)[None]
                update_bank(bank_t, logit_t_u.cpu(), [int(batch["u_index"][0]), partner], mix.area_thresh2)
                logit_t_u = (logit_t_u[0] * (1 - mask) + logit_t_u[1] * mask)[None]
            else:
                u_strong = u_img
            prob_t_l = F.softmax(logit_t_l, 1)
            conf_l, pseudo_l = prob_t_l.max(1)
            pseudo_l = pseudo_l.masked_fill(conf_l < lc.cons.threshold, IGNORE)
            prob_t_u = F.softmax(logit_t_u, 1)
            ent_u = entropy(prob_t_u)
            conf_u, pseudo_u = prob_t_u.max(1)
            pseudo_u = pseudo_u.masked_fill(entropy_mask(ent_u, epoch, t.epochs or 1, lc.cons), IGNORE)
            net.teacher.train()
            rep_t_u = net.teacher(u_strong)["rep"]
            prob_l_small = F.softmax(_up(logit_t_l, (hs, ws)), 1)
            prob_u_small = F.softmax(_up(logit_t_u, (hs, ws)), 1)

        out_u = model(u_strong, role="student")
        pred_u, rep_s_u = _up(out_u["pred"], (h, w)), out_u["rep"]

        with torch.no_grad():  # class confidence EMA (AEL), used by ACP, ACM and the sampling mask
            cat_conf = category_confidence(pred_l.detach(), labels, num_classes)
            net.class_conf.mul_(mix.momentum).add_(cat_conf.to(net.class_conf), alpha=1 - mix.momentum)
        conf_vec = net.class_conf
        loss_cons = (consistency_loss(pred_l, conf_l, pseudo_l, lc.cons, conf_vec, g)
                     + consistency_loss(pred_u, conf_u, pseudo_u, lc.cons, conf_vec, g))

        c = lc.contra
        if epoch >= c.start_epoch and c.weight > 0:
            with torch.no_grad():
                valid_u = pseudo_u != IGNORE
                low = (ent_u <= percentile(ent_u, c.low_entropy_threshold)) & valid_u
                high = (ent_u >= percentile(ent_u, c.unsupervised_entropy_ignore)) & valid_u
                lab_valid = (labels != IGNORE).float()[:, None]
                low_all = F.interpolate(torch.cat([lab_valid, low.float()[:, None]]), size=(hs, ws), mode="nearest")
                high_all = F.interpolate(torch.cat([lab_valid, high.float()[:, None]]), size=(hs, ws), mode="nearest")
                lab_small = F.interpolate(label_onehot(labels, num_classes), size=(hs, ws), mode="nearest").long()
                u_small = F.interpolate(label_onehot(pseudo_u, num_classes), size=(hs, ws), mode="nearest").long()
            loss_contra = contrastive_loss(torch.cat([rep_s_l, rep_s_u]), lab_small, u_small, prob_l_small,
                                           prob_u_small, low_all, high_all, c, state.bank,
                                           torch.cat([rep_t_l, rep_t_u]).detach(), g)
        else:
            loss_contra = rep_s_l.sum() * 0.0
        loss = loss_sup + lc.cons_weight * loss_cons + c.weight * loss_contra
        if t.loss_world_scale:
            loss = loss / dist.get_dist().world_size
        return {"loss": loss, "sup": loss_sup.detach(), "cons": loss_cons.detach(), "contra": loss_contra.detach()}

    return step_fn


class EMATeacher(Callback):
    """After every optimizer step: teacher <- EMA of the student with decay min(1 - 1/(i+1), ema_decay),
    i the 0-based iteration (STAL train.py)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def on_step_end(self, trainer: Trainer, out: dict[str, Tensor]) -> None:
        trainer.model.ema_update(trainer.step - 1, self.decay)


# ----------------------------------------------------------------------------- rounds


def write_list(path: Path, rels: list[str]) -> None:
    """A STAL list file (one relative image path per line), atomically, on the main process."""
    if dist.is_main():
        with atomic_open(path, "w") as f:
            f.write("".join(f"{r}\n" for r in rels))
    dist.barrier()


def read_rels(path: Path) -> list[str]:
    """The non-empty lines of a list file written by :func:`write_list`."""
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


@torch.no_grad()
def score_images(net: nn.Module, samples: list[Sample], cfg: Config, device: torch.device,
                 keep_maps: int = 0) -> tuple[dict[str, float], dict[str, Tensor]]:
    """U(x) of every sample with the teacher ``net`` (split across ranks, gathered); the score maps of
    the first ``keep_maps`` samples are returned too (montages)."""
    al = cfg.train.al
    info = dist.get_dist()
    mine = samples[info.rank::info.world_size]
    scores: dict[str, float] = {}
    maps: dict[str, Tensor] = {}
    was = net.training
    net.eval()
    for s in progress(mine, desc="scoring unlabelled images"):
        x = to_tensor(read_image(s.image), cfg.data).to(device)
        score, smap = image_uncertainty(net, x, al.select_size, al.selector, al.ripu_radius)
        scores[s.rel] = score
        if len(maps) < keep_maps:
            maps[s.rel] = smap.cpu()
    net.train(was)
    if info.enabled:
        merged: dict[str, float] = {}
        for part in dist.all_gather_object(scores):
            merged.update(part)
        scores = merged
    return scores, maps


def select_round(net: nn.Module, cfg: Config, target: list[Sample], labeled: list[str], budget: int,
                 device: torch.device) -> tuple[list[str], dict[str, float]]:
    """One selection round: score the unlabelled target images with the teacher and take ``budget`` of
    them under the city quotas. Returns (new images, scores)."""
    unl = [s for s in target if s.rel not in set(labeled)]
    scores, _ = score_images(net, unl, cfg, device)
    return select_by_city(scores, target, labeled, budget, list(CITYSCAPES_TRAIN_CITIES)), scores


def region_round(teacher: nn.Module, cfg: Config, ctx: RunContext, k: int, target: list[Sample],
                 full: list[str]) -> list[Sample]:
    """Round k of ``train.al.selector: ripu_regions``: RIPU's region annotation (RA) on every target image not
    fully labelled, ``region_ratio`` of its pixels more per round, on top of the regions of the earlier
    rounds. Masks are PNGs under RUN/regions/round<k>/ listed in RUN/regions-round<k>.txt (written once, so
    a resumed run reuses them). Returns the partially labelled samples."""
    al = cfg.train.al
    listing = ctx.run_dir / f"regions-round{k}.txt"
    previous = ctx.run_dir / f"regions-round{k - 1}.txt"
    prev = dict(ln.split() for ln in read_rels(previous)) if previous.is_file() else {}
    if not listing.is_file():
        if dist.is_main():
            log(f"round {k}: RIPU region annotation, {100 * al.region_ratio:.2f}% more pixels of every image")
            lines = []
            for s in progress([s for s in target if s.rel not in set(full)], desc="annotating regions"):
                x = to_tensor(read_image(s.image), cfg.data).to(ctx.device)
                teacher.eval()
                with torch.no_grad():
                    _, smap = image_uncertainty(teacher, x, al.select_size, "ripu", al.ripu_radius)
                before = None
                if s.rel in prev:
                    before = torch.from_numpy(np.array(Image.open(ctx.run_dir / prev[s.rel])) > 0).to(smap.device)
                budget = int(round(al.region_ratio * smap.numel()))
                mask = ripu_region_mask(smap, budget, al.ripu_radius, before).cpu().numpy().astype(np.uint8)
                rel_mask = f"regions/round{k}/{Path(s.rel).with_suffix('').name}_regions.png"
                (ctx.run_dir / rel_mask).parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(ctx.run_dir / rel_mask) as tmp:
                    Image.fromarray(mask).save(tmp, format="PNG")
                lines.append(f"{s.rel} {rel_mask}")
            with atomic_open(listing, "w") as f:
                f.write("".join(f"{ln}\n" for ln in lines))
        dist.barrier()
    by_rel = {s.rel: s for s in target}
    out = []
    for ln in read_rels(listing):
        rel, mask = ln.split()
        s = by_rel[rel]
        out.append(Sample(s.image, s.label, s.kind, s.rel, s.city, ctx.run_dir / mask))
    return out


def split_initial_list(cfg: Config) -> tuple[list[Sample], list[str]]:
    """``train.al.initial_list``: its source lines (``gta5_*``/``synthia_*``, GTAV/SYNTHIA paths) and its
    Cityscapes lines (the labelled target images of round 1)."""
    assert cfg.train.al.initial_list is not None
    items = read_list(cfg.train.al.initial_list, cfg.data)
    return [s for s in items if s.kind != "cityscapes"], [s.rel for s in items if s.kind == "cityscapes"]


def train(ctx: RunContext) -> dict[str, Any]:
    """Train STAL's rounds with the recipe in ``ctx``; returns the final teacher's sliding-window metrics."""
    from zsk.tasks.adapt.evaluate import evaluate_model, preview_model

    cfg: Config = ctx.cfg
    d, al = cfg.data, cfg.train.al
    seed = cfg.runtime.seed
    target = cityscapes_split(d, "train")
    by_rel = {s.rel: s for s in target}
    initial_source: list[Sample] | None = None
    if al.initial_list:
        initial_source, initial_target = split_initial_list(cfg)
        unknown = [r for r in initial_target if r not in by_rel]
        if unknown:
            raise ZskError(f"{al.initial_list}: {unknown[0]} is not a Cityscapes train image under data.root; "
                           "fix the list or data.root")
    else:
        initial_target = initial_selection(target, al.initial_size, seed)
    source = initial_source if (initial_source and not d.source_list) else source_samples(d, seed)
    regions = al.selector == "ripu_regions"
    if not regions and len(initial_target) + al.budget_per_round * (al.rounds - 1) >= len(target):
        raise ZskError(f"train.al: {len(initial_target)} initial + {al.rounds - 1} x {al.budget_per_round} images "
                       f"would label all {len(target)} target train images; lower the budget or the rounds")
    has_val = bool(cfg.eval.split)
    # every file opened once before training (cached): a bad file stops the run before anything is written
    check_samples(target, "target train")
    check_samples(source, f"{d.source} source")
    if has_val:
        check_samples(cityscapes_split(d, cfg.eval.split)[: d.max_val], cfg.eval.split)
    net = build_model(cfg)
    if ctx.dist.world_size > 1 and cfg.model.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    init_state = copy.deepcopy(net.state_dict())
    log(f"adapt: {len(source)} {d.source} source + {len(initial_target)} labelled / {len(target)} target images, "
        f"{al.rounds} round(s), +{al.budget_per_round} per round")

    def build_round(k: int):
        def build(tcfg: TrainConfig) -> Trainer:
            path = ctx.run_dir / f"labeled-round{k}.txt"
            if path.is_file():
                rels = read_rels(path)
            elif k == 1:
                rels = list(initial_target)
                write_list(path, rels)
            elif regions:
                rels = read_rels(ctx.run_dir / f"labeled-round{k - 1}.txt")
                write_list(path, rels)
            else:
                prev = read_rels(ctx.run_dir / f"labeled-round{k - 1}.txt")
                log(f"round {k}: selecting {al.budget_per_round} images with the round {k - 1} teacher ({al.selector})")
                new, _ = select_round(net.teacher, cfg, target, prev, al.budget_per_round, ctx.device)
                rels = prev + new
                write_list(path, rels)
            region_samples = region_round(net.teacher, cfg, ctx, k, target, rels) if regions and k > 1 else []
            if k == 1 or not al.warm_start:
                net.load_state_dict(init_state)  # every round retrains from the ImageNet weights (official)
                if k > 1:
                    log(f"round {k} retrains from the initial weights (train.al.warm_start=false)")
            labeled_t = [by_rel[r] for r in rels if r in by_rel] + region_samples
            unlabeled = [s for s in target if s.rel not in set(rels)]
            pool = labeled_pool(source, labeled_t, len(target), d.repeat_target, seed)
            pad = 255 if d.crop_pad_label == "ignore" else 0
            lab_set = LabeledSet(pool, d, tcfg.mix.acp, tcfg.mix.acp_prob, pad)
            unl_set = UnlabeledSet(unlabeled, d)
            plan = StepPlan(len(pool), len(unlabeled), tcfg.batch_size, tcfg.unlabeled_batch, seed=seed,
                            rank=ctx.dist.rank, world_size=ctx.dist.world_size)
            steps_set = StepSet(lab_set, unl_set, plan)
            steps = plan.steps
            if steps < 1:
                raise ZskError(f"{len(unlabeled)} unlabelled target images give no step per epoch with "
                               f"train.unlabeled_batch = {tcfg.unlabeled_batch}; add images or lower it")
            epochs = tcfg.epochs or max(1, (tcfg.steps or 1) // steps)
            state = StepState(unl_set, steps, epochs, sample_seed(seed, k), MemoryBank(
                d.num_classes, tcfg.loss.contra.queue_size, tcfg.loss.contra.queue_size_first))

            def loader_fn(epoch: int, start_batch: int):
                return make_loader(steps_set, tcfg.batch_size, epoch=epoch, seed=seed,
                                   batch_sampler=StepSampler(plan, epoch), start_batch=start_batch,
                                   workers=cfg.runtime.workers, collate_fn=collate_step)

            def eval_fn(m: nn.Module) -> dict[str, Any]:
                return evaluate_model(m.teacher, cfg, cfg.eval.split, cfg.eval.train_protocol)

            def preview_fn(m: nn.Module) -> dict[str, Any]:
                return preview_model(m.teacher, cfg, cfg.eval.split)

            extra = {"class_names": _class_names(cfg), "round": k, "labeled": rels,
                     "cutmix_bank": torch.zeros(d.num_classes, len(unlabeled), dtype=torch.uint8),
                     "world_size": ctx.dist.world_size}
            trainer = Trainer(ctx, net, tcfg, make_step_fn(cfg, state), loader_fn, steps,
                              eval_fn=eval_fn if has_val else None, param_groups=param_groups(net, tcfg.head_lr_mult),
                              extra=extra, stage=f"round{k}", callbacks=[EMATeacher(tcfg.ema_decay)],
                              preview_fn=preview_fn if has_val else None)
            state.trainer = trainer
            return trainer

        return build

    def final_eval(m: nn.Module) -> dict[str, Any]:
        """The selected (best-val) teacher by the sliding-window protocol, plus the final-epoch teacher of the
        last round (``last_*``): best-val selection is optimistic, so both are reported."""
        result = evaluate_model(m.teacher, cfg, cfg.eval.split)
        last = ctx.run_dir / f"last-round{al.rounds}.pt"
        if last.is_file():
            final = build_model(cfg, pretrained=False).to(ctx.device)
            load_model_state(final, load_checkpoint(last)["model"], source=str(last))
            res = evaluate_model(final.teacher, cfg, cfg.eval.split)
            result.update({f"last_{k}": res[k] for k in ("mIoU", "mIoU16", "mIoU13") if k in res})
        return result

    stages = [Stage(f"round{k}", build_round(k)) for k in range(1, al.rounds + 1)]
    return run_stages(ctx, stages, final_model=net, final_eval=final_eval if has_val else None)


def _class_names(cfg: Config) -> list[str]:
    from zsk.tasks.adapt.data import CITYSCAPES_CLASSES

    return list(CITYSCAPES_CLASSES) if cfg.data.num_classes == 19 else [f"class_{i}" for i in range(cfg.data.num_classes)]
