"""DTC (medseg) against the official code, Luoxd1996/DTC (AAAI 2021), fp32 on the CPU.

    python tools/parity/medseg.py --official /path/to/DTC [--save tests/parity/medseg] [--cases 100]

Both sides get the same random weights (zsk's state dict copied into the official ``VNet``), the same
seeded inputs and labels. Compared: parameter count and both heads (paper width 16 and the saved width 4),
the SDF targets, every loss term and the total, one SGD step's gradients and weights, the step LR and the
consistency ramp over 6,000 iterations, the random crop and rot/flip, the sliding window, the largest
component, the four metrics (medpy), the LA HDF5 reader and split lists on the real cases shipped in the
checkout, and la_heart_processing.py on synthetic .nrrd cases.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import medseg_shims  # noqa: E402
from common import Report, official_commit, parser  # noqa: E402

from zsk.tasks.medseg.config import DataConfig, TrainConfig  # noqa: E402
from zsk.tasks.medseg.data import (  # noqa: E402
    crop_padding,
    crop_start_bound,
    level_set_targets,
    load_case,
    random_rot_flip,
    split_cases,
)
from zsk.tasks.medseg.evaluate import largest_connected_component, sliding_window_scores  # noqa: E402
from zsk.tasks.medseg.losses import LossConfig, consistency_weight, dtc_loss  # noqa: E402
from zsk.tasks.medseg.model import DualTaskVNet  # noqa: E402

PATCH = (16, 16, 16)  # training-batch patch of the saved figures (V-Net needs multiples of 16)
WIDTH = 2  # n_filters of the saved model (the paper's 16 is compared live: its weights are 37 MB)
ITERATION = 3000  # the consistency weight is mid-ramp here: sigmoid_rampup(20, 40)
WINDOW, STRIDE, VOLUME = (32, 32, 16), (8, 8, 4), (44, 26, 23)  # y shorter than the window: padded
LA_ROOT = "data/2018LA_Seg_Training Set"


def official_key(name: str) -> str:
    """zsk's DualTaskVNet parameter name -> the official VNet's (vnet_sdf.py)."""
    if name.startswith("level_set_head."):
        return "out_conv." + name.split(".", 1)[1]
    if name.startswith("seg_head."):
        return "out_conv2." + name.split(".", 1)[1]
    _, block, rest = name.split(".", 2)  # encoder.block_one.0.weight -> block_one.conv.0.weight
    return f"{block}.conv.{rest}"


def build_pair(width: int, seed: int):
    """zsk's model with seeded weights (BatchNorm statistics randomised too) and the official VNet with the
    same state dict."""
    from networks.vnet_sdf import VNet

    torch.manual_seed(seed)
    ours = DualTaskVNet(num_classes=2, n_filters=width)
    with torch.no_grad():
        for name, buf in ours.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
        for name, p in ours.named_parameters():
            if ".weight" in name and p.ndim == 1:  # BatchNorm scale
                p.uniform_(0.5, 1.5)
            elif ".bias" in name and p.ndim == 1:
                p.normal_(0, 0.1)
    theirs = VNet(n_channels=1, n_classes=1, n_filters=width, normalization="batchnorm", has_dropout=True)
    state = {official_key(k): v for k, v in ours.state_dict().items()}
    missing = theirs.load_state_dict(state, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    return ours, theirs


def blobs(shape, n: int, seed: int) -> np.ndarray:
    """Seeded binary masks: a random ellipsoid per sample (one sample with two blobs, one empty)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    out = np.zeros((n, *shape), np.uint8)
    for i in range(n):
        for _ in range(1 + (i == 1)):
            c = rng.uniform(0.25, 0.75, 3) * np.asarray(shape)
            r = rng.uniform(0.15, 0.35, 3) * np.asarray(shape)
            out[i] |= (((grid - c) / r) ** 2).sum(-1) <= 1
    return out


def compare_model(rep: Report, seed: int) -> None:
    ours16, theirs16 = build_pair(16, seed)
    rep.compare("params (n_filters 16)", sum(p.numel() for p in ours16.parameters()),
                sum(p.numel() for p in theirs16.parameters()), keep=False)
    x = torch.randn(1, 1, 32, 32, 16, generator=torch.Generator().manual_seed(seed))
    ours16.eval(), theirs16.eval()
    with torch.no_grad():
        a, b = ours16(x), theirs16(x)
    rep.compare("forward level-set head (16, eval)", a[0], b[0], keep=False)
    rep.compare("forward seg head (16, eval)", a[1], b[1], keep=False)


def compare_training(rep: Report, ours, theirs, train_mod, losses_mod, util_mod, seed: int) -> None:
    """Forward in train mode (batch statistics, the same dropout masks), SDF targets, every loss term, the
    total, the gradients and the weights after one SGD step."""
    x = torch.randn(4, 1, *PATCH, generator=torch.Generator().manual_seed(seed + 1))
    label = torch.from_numpy(blobs(PATCH, 4, seed + 2).astype(np.int64))
    rep.keep("train/input", x)
    rep.keep("train/label", label.to(torch.uint8))
    ours.train(), theirs.train()
    torch.manual_seed(seed + 3)
    ls_o, seg_o = ours(x)
    torch.manual_seed(seed + 3)
    ls_t, seg_t = theirs(x)
    rep.compare("forward level-set head (train, dropout)", ls_o, ls_t)
    rep.compare("forward seg head (train, dropout)", seg_o, seg_t)

    # the official loss, composed as train_la_dtc.py does, from its own functions
    labeled_bs = 2
    soft = torch.sigmoid(seg_t)
    with torch.no_grad():
        gt_dis = torch.from_numpy(util_mod.compute_sdf(label.numpy(), seg_t[:labeled_bs, 0].shape)).float()
    t_lsf = torch.nn.MSELoss()(ls_t[:labeled_bs, 0], gt_dis)
    t_ce = torch.nn.BCEWithLogitsLoss()(seg_t[:labeled_bs, 0], label[:labeled_bs].float())
    t_dice = losses_mod.dice_loss(soft[:labeled_bs, 0], label[:labeled_bs] == 1)
    t_dtc = torch.mean((torch.sigmoid(-1500 * ls_t) - soft) ** 2)
    t_w = train_mod.get_current_consistency_weight(ITERATION // 150)
    t_total = t_dice + train_mod.args.beta * t_lsf + t_w * t_dtc

    sdf = np.zeros((4, 1, *PATCH), np.float32)
    for b in range(labeled_bs):
        sdf[b] = level_set_targets(label[b].numpy(), 2)
    rep.compare("SDF targets (compute_sdf)", sdf[:labeled_bs, 0], gt_dis)
    empty = np.zeros((1, *PATCH), np.uint8)
    rep.compare("SDF targets: patch without foreground", level_set_targets(empty[0], 2)[0],
                util_mod.compute_sdf(empty, empty.shape)[0], keep=False)
    rep.note("SDF targets: patch all foreground",
             "deliberate: zsk -1 everywhere; compute_sdf divides 0 by 0 (NaN target, NaN loss)")
    terms = dtc_loss(ls_o, seg_o, label, torch.from_numpy(sdf), torch.tensor([True, True, False, False]),
                     ITERATION, 2, LossConfig())
    rep.compare("loss: Dice (labelled)", terms["loss_dice"], t_dice)
    rep.compare("loss: level-set MSE", terms["loss_lsf"], t_lsf)
    rep.compare("loss: BCE (logged, not added)", terms["loss_ce"], t_ce)
    rep.compare("loss: dual-task consistency", terms["loss_dtc"], t_dtc)
    rep.compare(f"consistency weight at iteration {ITERATION}", terms["dtc_weight"], t_w)
    rep.compare("loss: total", terms["loss"], t_total)

    from zsk.core.trainer import build_optimizer

    cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt_o = build_optimizer([{"params": list(ours.parameters())}], cfg)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0001)  # train_la_dtc.py
    opt_o.zero_grad(), opt_t.zero_grad()
    terms["loss"].backward()
    t_total.backward()
    names = [n for n, _ in ours.named_parameters()]
    theirs_params = dict(theirs.named_parameters())
    g_o = torch.cat([p.grad.flatten() for p in ours.parameters()])
    g_t = torch.cat([theirs_params[official_key(n)].grad.flatten() for n in names])
    scale = float(g_t.abs().max())
    rep.compare("SGD step: gradients (all parameters)", g_o, g_t)
    opt_o.step(), opt_t.step()
    w_o = torch.cat([p.detach().flatten() for p in ours.parameters()])
    w_t = torch.cat([theirs_params[official_key(n)].detach().flatten() for n in names])
    rep.compare("SGD step: weights after the step", w_o, w_t, keep=False)
    rep.keep("SGD step: weights after the step (every 8th)", w_t[::8])
    rep.keep("meta/grad_scale", np.float64(scale))


def compare_schedule(rep: Report, train_mod) -> None:
    """The LR of each of the 6,000 updates and the consistency ramp, from train_la_dtc.py's rules."""
    cfg = TrainConfig(lr=0.01, schedule="step", milestones=[2500, 5000], gamma=0.1, steps=6000)
    from zsk.core.trainer import lr_factor

    ours = np.array([cfg.lr * lr_factor(s, 6000, cfg) for s in range(6000)])
    # the official loop: the update after iter_num updates uses lr_, which is reset to
    # base_lr * 0.1 ** (iter_num // 2500) whenever iter_num % 2500 == 0 (train_la_dtc.py)
    theirs, lr_ = [], train_mod.args.base_lr
    for iter_num in range(6000):
        theirs.append(lr_)
        if (iter_num + 1) % 2500 == 0:
            lr_ = train_mod.args.base_lr * 0.1 ** ((iter_num + 1) // 2500)
    rep.compare("LR schedule, 6,000 iterations", ours, np.array(theirs))
    ramp_o = [consistency_weight(i, LossConfig()) for i in range(6000)]
    ramp_t = [train_mod.get_current_consistency_weight(i // 150) for i in range(6000)]
    rep.compare("consistency ramp, 6,000 iterations", ramp_o, ramp_t)


class _Fixed:
    """An rng whose ``integers`` returns preset values (to replay the official draws in zsk)."""

    def __init__(self, values):
        self.values = list(values)

    def integers(self, lo, hi):
        return self.values.pop(0)


def compare_augmentation(rep: Report, la_heart, seed: int) -> None:
    rng = np.random.default_rng(seed)
    worst_pad = worst_bound = worst_crop = 0.0
    patch = (32, 32, 16)
    for shape in [(40, 34, 16), (44, 40, 30), (30, 50, 20), (33, 33, 17), (60, 35, 12)]:
        image = rng.normal(size=shape).astype(np.float32)
        label = (rng.random(shape) > 0.5).astype(np.uint8)
        bounds: list[int] = []
        real = np.random.randint

        def spy(lo, hi=None, *a, **k):
            bounds.append(hi)  # noqa: B023 - called inside the iteration
            return hi - 1  # the largest start the official draw can give
        np.random.randint = spy
        try:
            out = la_heart.RandomCrop(patch)({"image": image, "label": label})
        finally:
            np.random.randint = real
        pads = crop_padding(shape, patch)
        padded = tuple(s + a + b for s, (a, b) in zip(shape, pads, strict=True))
        ours_bounds = [crop_start_bound(s, p, "official") for s, p in zip(padded, patch, strict=True)]
        worst_bound = max(worst_bound, float(np.max(np.abs(np.array(ours_bounds) - np.array(bounds)))))
        pimg = np.pad(image, pads)
        sl = tuple(slice(b - 1, b - 1 + p) for b, p in zip(ours_bounds, patch, strict=True))
        worst_crop = max(worst_crop, float(np.abs(pimg[sl] - out["image"]).max()))
        official_padded = tuple(b + p for b, p in zip(bounds, patch, strict=True))  # randint(0, size - patch)
        worst_pad = max(worst_pad, float(np.abs(np.subtract(pimg.shape, official_padded)).max()))
    rep.compare("random crop: padding rule (5 shapes)", worst_pad, 0.0, keep=False)
    rep.compare("random crop: start bound, crop_starts=official", worst_bound, 0.0, keep=False)
    rep.compare("random crop: patch at the same start", worst_crop, 0.0, keep=False)
    rep.note("random crop: start bound, default crop_starts=all",
             "deliberate: +1 (the official randint(0, size - patch) never draws the last start)")
    worst = 0.0
    image = rng.normal(size=(12, 10, 6)).astype(np.float32)
    label = (rng.random((12, 10, 6)) > 0.5).astype(np.uint8)
    for k in range(4):
        for axis in range(2):
            real = np.random.randint
            draws = iter([k, axis])
            np.random.randint = lambda *a, **kw: next(draws)  # noqa: B023
            try:
                out = la_heart.RandomRotFlip()({"image": image, "label": label})
            finally:
                np.random.randint = real
            im, lb = random_rot_flip(image, label, _Fixed([k, axis]))
            worst = max(worst, float(np.abs(im - out["image"]).max()), float(np.abs(lb - out["label"]).max()))
    rep.compare("rot90 + flip (8 combinations)", worst, 0.0, keep=False)


def compare_inference(rep: Report, test_util, seed: int) -> None:
    ours, theirs = build_pair(WIDTH, seed)  # the weights of train/weights, before the SGD step
    ours.eval(), theirs.eval()
    image = np.random.default_rng(seed + 11).normal(size=VOLUME).astype(np.float32)
    rep.keep("window/image", image)
    label_t, score_t = test_util.test_single_case(theirs, image, STRIDE[0], STRIDE[2], WINDOW, num_classes=1)
    scores = sliding_window_scores(ours, torch.from_numpy(image), WINDOW, STRIDE, 2)
    rep.compare("sliding window: averaged scores", scores, score_t)
    ours_label = (scores[0] > 0.5).numpy().astype(np.int64)
    rep.compare("sliding window: label map (> 0.5)", ours_label, label_t, keep=False)
    rep.keep("sliding window: label map (> 0.5)", label_t.astype(np.uint8))
    if test_util.label is not None:
        masks = blobs((30, 28, 20), 3, seed + 12)
        two = masks[1] | np.roll(masks[0], 9, axis=0)
        worst = max(float(np.abs(largest_connected_component(m).astype(np.int64)
                                 - test_util.getLargestCC(m).astype(np.int64)).max()) for m in (two, masks[2], label_t))
        rep.compare("largest connected component (getLargestCC)", worst, 0.0, keep=False)


def compare_metrics(rep: Report, test_util, seed: int) -> None:
    from zsk.metrics.medical import binary_case_metrics

    masks = blobs((40, 36, 24), 6, seed + 20)
    ours, theirs = [], []
    for pred, gt in [(masks[0], masks[1]), (masks[2], masks[3]), (masks[4], masks[5]), (masks[1], masks[1])]:
        m = binary_case_metrics(pred, gt)
        ours.append([m["dice"], m["jaccard"], m["hd95"], m["asd"]])
        theirs.append(list(test_util.calculate_metric_percase(pred, gt)))
    ours, theirs = np.array(ours), np.array(theirs)
    rep.keep("metrics/masks", masks)
    for i, name in enumerate(["Dice (medpy dc)", "Jaccard (medpy jc)", "HD95 (medpy hd95)", "ASD (medpy asd)"]):
        rep.compare(f"metric: {name}", ours[:, i], theirs[:, i])
    rep.note("metric: empty prediction", "equal by construction: both score (0, 0, 0, 0) (test_all_case)")


def compare_reader(rep: Report, root: Path, la_heart, cases: int) -> dict:
    base = root / LA_ROOT
    if not (base / "train.list").is_file():
        rep.note("LA reader (real cases)", f"not compared: {base} has no train.list")
        return {}
    cfg = DataConfig(root=str(base))
    worst, n, shapes = 0.0, 0, []
    for split in ("train", "test"):
        official = la_heart.LAHeart(base_dir=str(base), split=split)
        refs = split_cases(cfg, split)
        if [r.name for r in refs] != official.image_list:
            rep.rows.append((f"LA {split}.list", float("inf"), "DIFFERENT"))
            continue
        for i, ref in enumerate(refs[: max(cases - n, 0)]):
            sample = official[i]
            vol = load_case(ref, cfg, require_label=True)
            worst = max(worst, float(np.abs(vol.image - sample["image"]).max()),
                        float(np.abs(vol.label - sample["label"]).max()))
            shapes.append(vol.shape)
            n += 1
    rep.compare("LA split lists (80 train + 20 test IDs)", 0.0, 0.0, keep=False)
    rep.compare(f"LA reader: image + label, {n} real cases", worst, 0.0, keep=False)
    return {"la_cases_read": n, "la_shape_min": np.min(shapes, 0).tolist(), "la_shape_max": np.max(shapes, 0).tolist()}


def compare_processing(rep: Report, seed: int) -> None:
    nrrd = medseg_shims.optional("nrrd")
    processing = medseg_shims.optional("dataloaders.la_heart_processing") if nrrd else None
    if processing is None:
        rep.note("la_heart_processing.py (nrrd -> h5)", "not compared: pip install pynrrd")
        return
    import h5py

    from zsk.data.volumes import read_nrrd
    from zsk.tasks.medseg.preprocess import preprocess_la

    worst_read = worst_img = worst_lab = 0.0
    rng = np.random.default_rng(seed + 30)
    cwd = os.getcwd()
    for case, shape in enumerate([(200, 190, 30), (160, 176, 24)]):
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "LA_dataset" / "2018LA_Seg_Training Set" / f"CASE{case}"
            raw.mkdir(parents=True)
            image = rng.integers(0, 255, size=shape).astype(np.uint8)
            label = (blobs(shape, 1, seed + 31 + case)[0] * 255).astype(np.uint8)
            header = {"encoding": "gzip", "space directions": np.diag([0.625] * 3), "space": "left-posterior-superior"}
            nrrd.write(str(raw / "lgemri.nrrd"), image, header)
            nrrd.write(str(raw / "laendo.nrrd"), label, header)
            for name in ("lgemri.nrrd", "laendo.nrrd"):
                ours, _ = read_nrrd(raw / name)
                worst_read = max(worst_read, float(np.abs(ours.astype(np.float64) - nrrd.read(str(raw / name))[0]).max()))
            out = Path(tmp) / "zsk"
            preprocess_la(raw.parent, out, seed=seed + case, num_test=0)
            work = Path(tmp) / "a" / "b"  # the official script globs ../../LA_dataset/...
            work.mkdir(parents=True)
            os.chdir(work)
            try:
                np.random.seed(seed + case)
                processing.covert_h5()
            finally:
                os.chdir(cwd)
            with h5py.File(raw / "mri_norm2.h5") as f, h5py.File(out / f"CASE{case}" / "mri_norm2.h5") as g:
                if f["image"].shape != g["image"].shape:
                    worst_img = float("inf")
                    continue
                worst_img = max(worst_img, float(np.abs(f["image"][:] - g["image"][:]).max()))
                worst_lab = max(worst_lab, float(np.abs(f["label"][:].astype(int) - g["label"][:]).max()))
    rep.compare("NRRD reader vs pynrrd (synthetic gzip .nrrd)", worst_read, 0.0, keep=False)
    rep.compare("la_heart_processing.py: image (2 synthetic cases)", worst_img, 0.0, keep=False)
    rep.compare("la_heart_processing.py: label", worst_lab, 0.0, keep=False)


def bf16_effect(rep: Report, seed: int) -> dict:
    """How bf16 autocast changes the consistency gradient (k = 1500): the 1x1x1 level-set head on 16
    ReLU features, biased so phi sits near 0 (where sigmoid(-1500 phi) is steep), run in fp32 and under
    CPU bf16 autocast; cosine between the two gradients of L_dtc w.r.t. the head's weights and bias."""
    g = torch.Generator().manual_seed(seed + 40)
    feats = torch.relu(torch.randn(20000, 16, generator=g))
    w0 = torch.randn(1, 16, generator=g) * 0.3
    b0 = -(feats @ w0[0]).median().reshape(1)
    p = torch.rand(20000, generator=g)
    grads = []
    for bf16 in (False, True):
        w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            phi = torch.tanh(torch.nn.functional.linear(feats, w, b))
        ((torch.sigmoid(-1500 * phi.float()[:, 0]) - p) ** 2).mean().backward()
        grads.append(torch.cat([w.grad.flatten(), b.grad]))
    cos = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
    rep.note("precision: bf16 autocast, L_dtc gradient of the level-set head",
             f"cosine {cos:.2f} with fp32 (emulated on CPU); paper recipes are fp32")
    return {"bf16_consistency_grad_cosine": cos}


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    args.__dict__.setdefault("cases", 100)
    root = medseg_shims.setup(args.official)
    rep = Report("medseg", official_commit(root))
    train_mod = medseg_shims.train_script(root)
    losses_mod = medseg_shims.optional("utils.losses")
    util_mod = medseg_shims.optional("utils.util")
    test_util = medseg_shims.optional("test_util")
    la_heart = medseg_shims.optional("dataloaders.la_heart")
    compare_model(rep, args.seed)
    ours, theirs = build_pair(WIDTH, args.seed)
    rep.keep("train/weights", torch.cat([v.detach().flatten().float() for v in ours.state_dict().values()
                                         if v.dtype.is_floating_point]))
    if train_mod is not None and util_mod is not None and losses_mod is not None:
        compare_training(rep, ours, theirs, train_mod, losses_mod, util_mod, args.seed)
        compare_schedule(rep, train_mod)
    else:
        rep.note("SDF, losses, SGD step, schedule", f"not compared: {medseg_shims.MISSING}")
    compare_augmentation(rep, la_heart, args.seed)
    if test_util is not None:
        compare_inference(rep, test_util, args.seed)
        compare_metrics(rep, test_util, args.seed)
    else:
        rep.note("sliding window, metrics", f"not compared: {medseg_shims.MISSING.get('test_util')}")
    extra = compare_reader(rep, root, la_heart, int(os.environ.get("PARITY_LA_CASES", "100")))
    compare_processing(rep, args.seed)
    extra.update(bf16_effect(rep, args.seed))
    rep.print()
    rep.save(args.save, extra={"seed": args.seed, "width": WIDTH, "patch": PATCH, "iteration": ITERATION,
                               "window": WINDOW, "stride": STRIDE, **extra})
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
