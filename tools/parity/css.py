"""SATS (css) against the official code, QIU023/SATS_Continual_Semantic_Seg, fp32 on the CPU.

    python tools/parity/css.py --official /path/to/SATS_Continual_Semantic_Seg [--save tests/parity/css]

Both sides get the same random weights (zsk's state dicts copied into the official
``IncrementalSegmentationModule`` built around the official MiT and ``SegFormer_Head``; a small MiT with
the B2 head counts and reduction ratios) and the same seeded 512 x 512 batch (the official L_SATS code
hard-codes the 512-crop grid sizes). Compared: logits and the four attention maps; PLOP's entropy
thresholds (``Trainer.find_median``); one incremental training step of the official ``Trainer.train``
(label masking, entropy pseudo-labels, CE, 20 x UNKD, 20 x L_SATS, the total and every gradient) against
zsk's step function with ``train.sats.head_layout=official_code`` and ``pseudo_label.median=official_code``,
and the zsk defaults (per-head pooling, histogram median) as the deliberate differences; MiB's classifier
initialisation; the VOC/ADE task tables and MiB's ``filter_images``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import css_shims  # noqa: E402
from common import Report, add_official, official_commit, parser  # noqa: E402

from zsk.core.recipe import parse_config  # noqa: E402
from zsk.models.segformer import MiTConfig  # noqa: E402
from zsk.tasks.css import increments  # noqa: E402
from zsk.tasks.css.config import Config  # noqa: E402
from zsk.tasks.css.data import ADE_CLASSES, step_indices  # noqa: E402
from zsk.tasks.css.losses import entropy_histogram, median_thresholds  # noqa: E402
from zsk.tasks.css.model import IncrementalSegFormer, frozen_copy  # noqa: E402
from zsk.tasks.css.train import OldModelState, make_step_fn  # noqa: E402

MIT = MiTConfig((8, 16, 20, 32), (1, 2, 5, 8), (1, 1, 1, 1), (8, 4, 2, 1))  # B2's heads and ratios, small widths
DECODER = 16
CLASSES = [4, 1]  # step 0: background + 3 classes, step 1: one new class (dataset ids 0..4)
CROP = 512


def zsk_models(seed: int) -> tuple[IncrementalSegFormer, IncrementalSegFormer]:
    """The new model (step 1) and a differently seeded old model (step 0), as zsk builds them."""
    torch.manual_seed(seed)
    new = IncrementalSegFormer(MIT, CLASSES, drop_path_rate=0.0, decoder_dim=DECODER)
    torch.manual_seed(seed + 1)
    old = frozen_copy(IncrementalSegFormer(MIT, CLASSES, drop_path_rate=0.0, decoder_dim=DECODER), 0)
    new.active_step = 1
    return new, old


def seeded_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 512 x 512 images and blocky raw label maps (ids 0..4, 255 borders) with several classes per image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, CROP, CROP, generator=g)
    coarse = torch.tensor([0, 1, 2, 3, 4, 255])[torch.randint(0, 6, (2, 8, 8), generator=g)]
    coarse[:, 0, 0] = 0
    labels = coarse.repeat_interleave(64, 1).repeat_interleave(64, 2)
    return images, labels


def official_model(mods: dict, state: dict, classes: list[int]) -> nn.Module:
    """The official IncrementalSegmentationModule around the official MiT and SegFormer_Head, with ``state``."""
    mit = mods["mit"].MixVisionTransformer(
        embed_dims=list(MIT.embed_dims), num_heads=list(MIT.num_heads), mlp_ratios=[4] * 4, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), depths=list(MIT.depths), sr_ratios=list(MIT.sr_ratios),
        drop_rate=0.0, drop_path_rate=0.0)
    head = mods["segformer"].SegFormer_Head(dims=MIT.embed_dims, decoder_dim=DECODER)
    opts = types.SimpleNamespace(method="SATS", dataset="voc", model="segformer_b2")
    model = mods["segmentation_module"].IncrementalSegmentationModule(mit, head, DECODER, list(classes), opts=opts)
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=True)
    return model


def official_trainer(mods: dict, model: nn.Module, old: nn.Module, thresholds: torch.Tensor, max_entropy: torch.Tensor):
    """A ``train.Trainer`` with the attributes ``--method SATS`` sets at step 1 (built without its __init__,
    which needs the full argparse options, apex and CUDA)."""
    t = mods["train"].Trainer.__new__(mods["train"].Trainer)
    opts = types.SimpleNamespace(small_sample_test=False, batch_size=2, distill_object="sats-selfattn",
                                 model="segformer_b2", distill_weight_args=20, dataset="voc", method="SATS", distill_segformer=True,
                                 task="parity", step=1)
    attrs = dict(
        opts=opts, device=torch.device("cpu"), model=model, model_old=old, step=1, debugging=False,
        criterion=nn.CrossEntropyLoss(ignore_index=255, reduction="none"), old_classes=4, nb_current_classes=5,
        nb_new_classes=1, old_cls_upperbound=3, cur_cls_upperbound=4, pseudo_labeling="entropy",
        thresholds=thresholds, max_entropy=max_entropy, pseudo_soft=None, pseudo_ablation=None,
        classif_adaptive_factor=True, classif_adaptive_min_factor=0.0, lde_flag=False, lkd_flag=True,
        icarl_dist_flag=False, pod=None, distill_segformer=True, ret_intermediate=True, train_part=0,
        ce_on_pseudo=False, ce_on_new=False, icarl_only_dist=False, sample_weights_new=None, icarl_combined=False,
        lkd=20.0, lkd_mask=None, temperature_apply=None, kd_need_labels=False, kd_new=False,
        kd_mask_adaptative_factor=False, entropy_min=0.0, kd_scheduling=False, regularizer_flag=False,
        lkd_loss=mods["utils.loss"].UnbiasedKnowledgeDistillationLoss(reduction="none", alpha=1.0),
        pseudo_nb_bins=None, threshold=0.001, step_threshold=None, lde=0.0, icarl=0.0, align_weight=None,
        align_weight_frequency=None, dataset="voc")
    for k, v in attrs.items():
        setattr(t, k, v)
    return t


class _Loader(list):
    sampler = types.SimpleNamespace(set_epoch=lambda epoch: None)


class _Optim:
    param_groups = [{"lr": 0.001}]

    def zero_grad(self) -> None:
        pass

    def step(self) -> None:
        pass


_LOGGER = types.SimpleNamespace(info=lambda *a, **k: None, add_scalar=lambda *a, **k: None)


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    root = add_official(args.official)
    mods = css_shims.install(root)
    report = Report("css", official_commit(root))
    seed = args.seed
    torch.set_grad_enabled(True)

    new, old = zsk_models(seed)
    images, labels = seeded_batch(seed)
    report.keep("weights_new", torch.cat([v.flatten() for v in new.state_dict().values()]))
    report.keep("weights_old", torch.cat([v.flatten() for v in old.state_dict().values()]))
    off_new = official_model(mods, new.state_dict(), CLASSES)
    off_old = official_model(mods, old.state_dict(), CLASSES[:1])
    off_old.eval()

    # forward: logits and the last block's attention map of each stage
    new.eval()
    off_new.eval()
    with torch.no_grad():
        ours, attn = new(images, return_attn=True)
        theirs, feats = off_new(images, ret_intermediate=True)
    report.compare("logits[:, :, ::16, ::16]", ours[:, :, ::16, ::16], theirs[:, :, ::16, ::16])
    report.compare("logits (all pixels)", ours, theirs, keep=False)
    for i, (a, b) in enumerate(zip(attn, feats["distill4segformer"], strict=True)):
        rows = max(1, a.shape[2] // 16)  # 16 query rows of each map kept as figures
        report.compare(f"attention stage {i + 1} rows", a[:, :, ::rows], b[:, :, ::rows])
        report.compare(f"attention stage {i + 1} (all)", a, b, keep=False)

    # PLOP thresholds: official Trainer.find_median (mode entropy) on the raw labels (background = 0)
    trainer = official_trainer(mods, off_new, off_old, None, None)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        (Path(tmp) / "plop_median" / "voc").mkdir(parents=True)
        try:
            thr_off, max_value = mods["train"].Trainer.find_median(trainer, _Loader([(images, labels)]),
                                                                   torch.device("cpu"), _LOGGER, mode="entropy")
        finally:
            os.chdir(cwd)
    with torch.no_grad():
        hist = entropy_histogram(old(images), labels == 0, math.log(5), 5, 100)
    thr_zsk = median_thresholds(hist, 0.001, "official_code")
    # the official loop can divide 0 by 0 (NaN threshold: that class never gets a pseudo-label); NaN = -1 here
    report.compare("PLOP thresholds (median_rule official_code)", thr_zsk.nan_to_num(-1.0), thr_off.nan_to_num(-1.0))
    report.compare("PLOP max entropy log(|C_0:t|)", torch.tensor(math.log(5)), max_value)
    fixed = median_thresholds(hist, 0.001, "histogram")
    report.rows.append(("PLOP thresholds (zsk default: histogram median)",
                        float((fixed - thr_off.nan_to_num(-1.0)).abs().max()),
                        "differs by design"))
    report.keep("histogram", hist)

    # one incremental step: official Trainer.train vs zsk's step function (official layout and median)
    tasks = mods["tasks"]
    tasks.tasks_voc["parity"] = {0: [0, 1, 2, 3], 1: [4]}
    trainer.thresholds, trainer.max_entropy = thr_off, max_value
    off_new.train()
    off_new.zero_grad()
    css_shims.SCALED.clear()
    ce_off, kd_off = mods["train"].Trainer.train(trainer, 0, _Optim(), _Loader([(images, labels.clone())]),
                                                 logger=_LOGGER)
    total_off = css_shims.SCALED[-1].reshape(())
    sats_off = total_off - ce_off - kd_off
    grads_off = {n: p.grad.clone() for n, p in off_new.named_parameters() if p.grad is not None}

    steps = [[0, 1, 2, 3], [4]]
    masked = torch.from_numpy(increments.train_lut(steps, 1)[labels.numpy()]).long()
    for layout, median in (("official_code", "official_code"), ("per_head", "histogram")):
        cfg = parse_config(Config, {"train": {"sats": {"head_layout": layout}, "pseudo_label": {"median": median}}})
        thr = thr_zsk if median == "official_code" else fixed
        step_fn = make_step_fn(cfg, OldModelState(old, 4, thr, math.log(5)))
        new.train()
        new.zero_grad()
        out = step_fn(new, {"image": images, "label": masked.clone()}, 0)
        out["loss"].backward()
        if layout == "official_code":
            report.compare("train step: CE on pseudo-labels", out["ce"], ce_off)
            report.compare("train step: 20 x UNKD", out["unkd"], kd_off)
            report.compare("train step: 20 x L_SATS (official reshape)", out["sats"], sats_off)
            report.compare("train step: total loss", out["loss"], total_off)
            worst = max(float((p.grad - grads_off[n]).abs().max()) for n, p in new.named_parameters()
                        if p.grad is not None and n in grads_off)
            report.rows.append(("train step: every gradient", worst, "equal" if worst <= 1e-5 else "DIFFERENT"))
            for name in ("cls.1.weight", "cls.0.bias", "head.to_segmentation.weight", "body.block1.0.attn.q.weight"):
                report.keep(f"grad {name}", grads_off[name])
        else:
            report.rows.append(("train step: 20 x L_SATS (zsk default: per-head pooling)",
                                float((out["sats"] - sats_off).abs()), "differs by design"))

    # the ablations of the official code (sats-selfattn-GP / -NP, sats-feature-CNN), whose loss the official
    # code adds without the factor 20: zsk with train.sats.weight 1
    for obj, pooling, source in (("sats-selfattn-GP", "global", "attention"), ("sats-selfattn-NP", "none", "attention"),
                                 ("sats-feature-CNN", "class", "features")):
        trainer.opts.distill_object = obj
        off_new.zero_grad()
        css_shims.SCALED.clear()
        ce_o, kd_o = mods["train"].Trainer.train(trainer, 0, _Optim(), _Loader([(images, labels.clone())]), logger=_LOGGER)
        abl_off = css_shims.SCALED[-1].reshape(()) - ce_o - kd_o
        cfg = parse_config(Config, {"train": {"sats": {"head_layout": "official_code", "weight": 1.0, "pooling": pooling,
                                                       "source": source}, "pseudo_label": {"median": "official_code"}}})
        with torch.no_grad():
            out = make_step_fn(cfg, OldModelState(old, 4, thr_zsk, math.log(5)))(new, {"image": images,
                                                                                     "label": masked.clone()}, 0)
        report.compare(f"ablation {obj} (sats.pooling {pooling}, source {source}, weight 1)", out["sats"], abl_off)
    trainer.opts.distill_object = "sats-selfattn"

    # MiB classifier initialisation
    ours_init, _ = zsk_models(seed)
    theirs_init = official_model(mods, ours_init.state_dict(), CLASSES)
    ours_init.init_new_classifier(1)
    theirs_init.init_new_classifier(torch.device("cpu"))
    for name in ("cls.0.bias", "cls.1.weight", "cls.1.bias"):
        report.compare(f"MiB init {name}", ours_init.state_dict()[name], theirs_init.state_dict()[name])

    # task tables and MiB's filter_images
    worst = 0.0
    for ds, table in (("voc", tasks.tasks_voc), ("ade", tasks.tasks_ade)):
        for name, steps_off in table.items():
            if name in increments.TASKS[ds]:
                zsk_steps = increments.task_steps(ds, name)
                same = zsk_steps == [list(steps_off[k]) for k in sorted(steps_off)]
                worst = max(worst, 0.0 if same else 1.0)
    report.rows.append(("task tables (VOC, ADE)", worst, "equal" if worst == 0 else "DIFFERENT"))
    official_ade = [c.strip() for c in mods["dataset.ade"].classes[1:]]  # "void" first, "bed " with a space
    same = official_ade == list(ADE_CLASSES)
    report.rows.append(("ADE20K class names (150, official order)", 0.0 if same else 1.0, "equal" if same else "DIFFERENT"))
    rng = np.random.default_rng(seed)
    presence = [sorted({0, *rng.choice(np.arange(1, 21), size=int(rng.integers(1, 4)), replace=False).tolist()})
                for _ in range(200)]
    fake = [(None, torch.tensor(p)) for p in presence]
    voc = increments.task_steps("voc", "15-1")
    for overlap in (True, False):
        for t in (1, 3):
            labels_old = [c for s in voc[:t] for c in s]
            off_idx = mods["dataset.utils"].filter_images(fake, list(voc[t]), labels_old, overlap=overlap)
            zsk_idx = step_indices(presence, voc, t, train=True, overlap=overlap)
            diff = 0.0 if off_idx == zsk_idx else float(len(set(off_idx) ^ set(zsk_idx)))
            report.rows.append((f"filter_images 15-1 step {t} {'overlap' if overlap else 'disjoint'}", diff,
                                "equal" if diff == 0 else "DIFFERENT"))
    # the MiB/PLOP transforms on a PIL image of odd size: validation Resize(crop) + CenterCrop(crop), and the
    # training RandomResizedCrop given the same crop box (the official draws it with Python's random)
    tr = mods["dataset.transform"]
    rng = np.random.default_rng(seed)
    pil_img = rng.integers(0, 256, (75, 101, 3), dtype=np.uint8)
    pil_lab = rng.integers(0, 6, (15, 21), dtype=np.uint8).repeat(5, 0).repeat(5, 1)[:75, :101]
    from PIL import Image

    from zsk.tasks.css.data import TrainTransform, eval_transform, random_resized_crop_params

    val = tr.Compose([tr.Resize(size=32), tr.CenterCrop(size=32), tr.ToTensor(),
                      tr.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    img_off, lab_off = val(Image.fromarray(pil_img), Image.fromarray(pil_lab))
    img_zsk, lab_zsk = eval_transform(pil_img, pil_lab, 32)
    report.compare("val transform: labels (resize 32 + center crop)", lab_zsk, lab_off)
    report.compare("val transform: image (PIL vs antialiased torch bilinear, tol 1 grey level)", img_zsk, img_off, tol=0.02,
                   keep=False)
    box = random_resized_crop_params(75, 101, (0.5, 2.0), torch.Generator().manual_seed(seed))
    crop = tr.RandomResizedCrop(32, (0.5, 2.0))
    crop.get_params = lambda img, scale, ratio: box
    img_off, lab_off = crop(Image.fromarray(pil_img), Image.fromarray(pil_lab))
    t = TrainTransform(32, (0.5, 2.0), flip_prob=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(seed)
        img_zsk, lab_zsk = t(pil_img, pil_lab, g)
    report.compare("train RandomResizedCrop: labels (same box)", lab_zsk, torch.from_numpy(np.array(lab_off)))
    img_off = (torch.from_numpy(np.array(img_off)).permute(2, 0, 1).float() - torch.tensor([123.675, 116.28, 103.53])[:, None, None]) \
        / torch.tensor([58.395, 57.12, 57.375])[:, None, None]
    report.compare("train RandomResizedCrop: image (same box, PIL vs torch, tol 1 grey level)", img_zsk, img_off, tol=0.02, keep=False)
    report.note("apex O1 mixed precision", "not compared (CPU fp32 on both sides)")
    report.print()
    report.save(args.save, {"mit": {"embed_dims": list(MIT.embed_dims), "num_heads": list(MIT.num_heads),
                                    "depths": list(MIT.depths), "sr_ratios": list(MIT.sr_ratios)},
                            "decoder_dim": DECODER, "classes": CLASSES, "seed": seed})
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
