"""hsi (Alam et al., IEEE TGRS 2019) against its peer toolbox DeepHyperX (nshaud/DeepHyperX), fp32 on the CPU.

    python tools/parity/hsi.py --official /path/to/DeepHyperX [--save tests/parity/hsi]

Alam et al. publish no code, so the band-group CNN, the CRF potentials, mean field, the piecewise losses,
the optimiser and the refinement have no official counterpart: the table says so, and tests/tasks/hsi checks
them against the paper's equations. DeepHyperX is the reference for what it shares with zsk, compared here
through its own functions (utils.py, datasets.py, models.py): the .mat readers and get_dataset's NaN rule and
global min-max normalisation on files in its layout for all six benchmarks, the ENVI reader, patch extraction
(HyperX) and its padding helper (padding_image), dense sliding-window inference (models.test) with the same
network on both sides, the train/test sampling (sample_gt: disjoint exactly; random and fixed by their counts,
since scikit-learn's draw cannot be replayed), inverse-median-frequency class weights, and the metrics
(utils.metrics: confusion matrix, OA, F1, kappa; AA and per-class accuracy from its confusion matrix).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.io
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hsi_shims  # noqa: E402
from common import Report, official_commit, parser  # noqa: E402

from zsk.data import cubes  # noqa: E402
from zsk.tasks.hsi import data as hsi_data  # noqa: E402
from zsk.tasks.hsi.config import DataConfig, EvalConfig, SplitConfig  # noqa: E402
from zsk.tasks.hsi.evaluate import classification_metrics, node_features, to_image_grid  # noqa: E402
from zsk.tasks.hsi.losses import unary_loss  # noqa: E402
from zsk.tasks.hsi.model import HSINet  # noqa: E402
from zsk.tasks.hsi.train import class_weights  # noqa: E402

# DeepHyperX dataset name -> zsk benchmark
BENCHMARKS = {"PaviaC": "pavia_c", "PaviaU": "pavia_u", "Salinas": "salinas", "IndianPines": "indian_pines",
              "Botswana": "botswana", "KSC": "ksc"}
NAN_BENCHMARK = "PaviaU"  # written as float64 with a NaN pixel: get_dataset's NaN rule
SCENE = (40, 30, 8, 4)  # rows, cols, bands, classes of the sampling / patch / metrics scene
PATCH = 5
N_PATCHES = 48


def tiny_net(bands: int, classes: int, seed: int) -> HSINet:
    """The same small patch CNN on both sides (DeepHyperX's test() runs any network)."""
    torch.manual_seed(seed)
    net = HSINet("cnn", bands, classes, patch=PATCH, band_groups=2, branch_channels=(2, 3),
                 branch_spectral_kernels=(3, 3), feature_dim=6, refine=False)
    g = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def flat_weights(net: torch.nn.Module) -> np.ndarray:
    return np.concatenate([v.detach().reshape(-1).numpy() for v in net.state_dict().values()
                           if v.dtype.is_floating_point]).astype(np.float32)


def bench_inputs(rng: np.random.Generator, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A tiny cube and label map for benchmark `name` with every class present (zsk requires it)."""
    k = len(hsi_data.BENCHMARKS[BENCHMARKS[name]].class_names)
    h, w, b = 7, 6, 5
    gt = rng.permutation(np.arange(h * w) % (k + 1)).reshape(h, w).astype(np.uint8)
    if name == NAN_BENCHMARK:
        cube = rng.uniform(0, 8000, (h, w, b))
        cube[2, 3, 1] = np.nan
    else:
        cube = rng.integers(0, 9000, (h, w, b)).astype(np.int16)
    return cube, gt


def write_bench(folder: Path, name: str, cube: np.ndarray, gt: np.ndarray) -> None:
    """The two .mat files of benchmark `name` under folder/<name>/ (DeepHyperX's layout and keys)."""
    b = hsi_data.BENCHMARKS[BENCHMARKS[name]]
    d = folder / name
    d.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(d / b.image, {b.image_key: cube})
    scipy.io.savemat(d / b.labels, {b.labels_key: gt})


def zsk_bench(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """zsk's scene of benchmark `name`: globally min-max normalised cube, labels, class names."""
    cfg = DataConfig(root=str(folder), dataset=BENCHMARKS[name], non_finite="zero")
    scene = hsi_data.load_scene(cfg)
    stats = hsi_data.fit_preprocess(scene.image, "global", None)
    return hsi_data.apply_preprocess(scene.image, stats), scene.labels, scene.class_names


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    root = hsi_shims.setup(args.official)
    import datasets as dhx_data  # DeepHyperX/datasets.py
    import models as dhx_models  # DeepHyperX/models.py (test: sliding-window inference)
    import utils as dhx_utils  # DeepHyperX/utils.py

    report = Report("hsi", official_commit(root))
    seed = args.seed
    rng = np.random.default_rng(seed)

    # ---- readers and get_dataset on .mat files in DeepHyperX's layout --------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, zname in BENCHMARKS.items():
            cube, gt = bench_inputs(rng, name)
            write_bench(folder, name, cube, gt)
            report.keep(f"in/{name}/cube", cube)
            report.keep(f"in/{name}/gt", gt)
            b = hsi_data.BENCHMARKS[zname]
            raw = dhx_utils.open_file(str(folder / name / b.image))[b.image_key]
            ours_raw = cubes.read_cube(folder / name / b.image, b.image_key)
            report.compare(f"reader .mat {name} (open_file)", np.nan_to_num(ours_raw), np.nan_to_num(raw), keep=False)
            img, ogt, values, ignored, _, _ = dhx_data.get_dataset(name, str(folder) + "/",
                                                                   {name: {"download": False}})
            ours_img, ours_gt, ours_names = zsk_bench(folder, name)
            report.compare(f"get_dataset {name}: normalised cube", ours_img, img)
            report.compare(f"get_dataset {name}: labels (NaN pixels 0)", ours_gt, ogt)
            theirs = [v for v in values[1:]]
            mismatch = [i for i, (a, c) in enumerate(zip(ours_names, theirs, strict=True)) if a != c]
            if name == "KSC" and mismatch == [12] and theirs[12] == "Wate":
                report.rows.append((f"class names {name}", 1.0, "deliberate: DeepHyperX spells class 13 'Wate'; "
                                    "zsk 'Water'"))
            else:
                report.compare(f"class names {name} (mismatches)", float(len(mismatch)), 0.0, keep=False)
            assert ignored == [0]

        # ---- ENVI through spectral (DeepHyperX open_file .hdr) --------------------------------------------
        envi_cube = rng.normal(size=(6, 5, 4)).astype(np.float32)
        report.keep("in/envi", envi_cube)
        for il in ("bsq", "bil", "bip"):
            hdr = cubes.write_envi(folder / f"e_{il}.hdr", envi_cube, interleave=il)
            report.compare(f"reader ENVI {il} (open_file)", cubes.read_cube(hdr), np.asarray(dhx_utils.open_file(str(hdr))),
                           keep=False)
        bad = folder / "e_bsq.hdr"
        bad.write_text(bad.read_text().replace("lines = 6", "lines = 5"))
        theirs_shape = np.asarray(dhx_utils.open_file(str(bad))).shape
        report.note("ENVI header lines/samples wrong for its data file",
                    f"deliberate: DeepHyperX reads a {theirs_shape} cube of a 6 x 5 x 4 file silently; zsk refuses")
        report.note("ENVI data ignore value", "deliberate: DeepHyperX keeps the value (it enters the min-max "
                    "normalisation); zsk reads it as NaN (no data), then data.non_finite applies")
        report.note("MATLAB v7.3 .mat", "zsk only: scipy.io.loadmat (DeepHyperX) cannot read v7.3 files")

    # ---- patches, padding, sliding-window inference ------------------------------------------------------
    h, w, bands, k = SCENE
    cube, labels, _ = hsi_data.synthetic_scene(h, w, bands, k, seed=seed)
    img = ((cube - cube.min()) / (cube.max() - cube.min())).astype(np.float32)
    report.keep("in/img", img)
    report.keep("in/labels", labels)
    p = PATCH // 2
    np.random.seed(seed)
    ds = dhx_data.HyperX(img, labels, dataset="scene", patch_size=PATCH, ignored_labels=[0],
                         flip_augmentation=False, radiation_augmentation=False, mixture_augmentation=False,
                         center_pixel=True, supervision="full")
    idx = np.asarray(ds.indices[:N_PATCHES])
    theirs = np.stack([ds[i][0][0].numpy() for i in range(len(idx))])
    their_labels = np.asarray([int(ds[i][1]) for i in range(len(idx))])
    chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    ys, xs = torch.from_numpy(idx[:, 0]), torch.from_numpy(idx[:, 1])
    report.keep("in/patch_centres", idx)
    report.compare("patch extraction (HyperX, data.pad: none)", hsi_data.extract_patches(chw, ys - p, xs - p, PATCH),
                   theirs)
    report.compare("patch centre label (HyperX center_pixel)", labels[idx[:, 0], idx[:, 1]].astype(np.int64),
                   their_labels)
    ours_centres = {tuple(c) for c in np.argwhere(hsi_data.border_mask(labels.shape, p) & (labels > 0))}
    their_centres = {tuple(c) for c in ds.indices}
    extra = ours_centres - their_centres
    assert not (their_centres - ours_centres) and all(y == p or x == p for y, x in extra)
    report.rows.append(("training centres, data.pad: none (pixels)", float(len(extra)),
                        "deliberate: HyperX's `x > p` never samples row/column p (only at the top/left); zsk does"))
    padded = hsi_data.pad_cube(chw, p, "reflect").permute(1, 2, 0)
    with hsi_shims.lenient_pad():  # the helper raises on current NumPy for every mode but constant
        reflect = dhx_utils.padding_image(img, [PATCH, PATCH], "reflect")
        symmetric = dhx_utils.padding_image(img, [PATCH, PATCH])
    report.compare("padding (padding_image mode=reflect)", padded, reflect)
    sym = float(np.abs(padded.numpy() - symmetric).max())
    report.rows.append(("padding (padding_image default symmetric)", sym, "deliberate: zsk reflects without repeating "
                        "the edge (DeepHyperX's helper is not wired into its main.py, which leaves borders at 0)"))

    net = tiny_net(bands, k, seed)
    report.keep("in/net_weights", flat_weights(net))

    class Wrapped(torch.nn.Module):  # DeepHyperX's class 0 is Undefined: a column no pixel wins
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            u = self.net(x[:, 0])
            return torch.cat([torch.full((len(u), 1), -1e4), -u], 1)

    hp = {"patch_size": PATCH, "center_pixel": True, "batch_size": 37, "device": torch.device("cpu"),
          "n_classes": k + 1, "test_stride": 1}
    probs = dhx_models.test(Wrapped(), img, hp)
    with torch.no_grad():
        feats = node_features(net, chw, EvalConfig(chunk_pixels=53))
        unary = net.potentials.unary(feats)
    report.compare("dense inference scores (models.test, stride 1)", -unary, probs[p : h - p, p : w - p, 1:])
    ours_pred = to_image_grid(unary.argmin(-1), labels.shape, p, fill=-1) + 1
    report.compare("dense prediction map (border 0)", ours_pred, np.argmax(probs, -1))
    report.note("test_stride > 1", "not offered: zsk predicts every pixel (stride 1, DeepHyperX's default)")

    # ---- sampling -------------------------------------------------------------------------------------------
    for frac in (0.3, 0.5):
        tr, te = dhx_utils.sample_gt(labels, frac, mode="disjoint")
        split = hsi_data.split_labels(labels, SplitConfig(mode="disjoint", fraction=frac, val_share=0.0), seed)
        report.compare(f"sample_gt disjoint {frac}: train", split.train, tr)
        report.compare(f"sample_gt disjoint {frac}: test", split.test, te)
    counts = lambda m: np.bincount(np.asarray(m).ravel(), minlength=k + 1)[1:]  # noqa: E731
    old_gt = labels.view(hsi_shims.OldIndexing)  # sample_gt's a[[rows, cols]] as the NumPy it was written for
    np.random.seed(seed)
    tr, te = dhx_utils.sample_gt(old_gt, 0.1, mode="random")
    tr, te = np.asarray(tr), np.asarray(te)
    np.random.seed(seed)
    now, _ = dhx_utils.sample_gt(labels, 0.1, mode="random")
    report.rows.append(("sample_gt random on NumPy >= 1.23: extra train pixels", float((now > 0).sum() - (tr > 0).sum()),
                        "DeepHyperX bug: a[[rows, cols]] now indexes whole rows; the rows below use the old indexing"))
    split = hsi_data.split_labels(labels, SplitConfig(mode="random", fraction=0.1, val_share=0.0), seed)
    report.compare("sample_gt random 0.1: train pixels per class", counts(split.train), counts(tr))
    report.compare("sample_gt random 0.1: test pixels per class", counts(split.test), counts(te))
    overlap = lambda a, b: float(((a > 0) & (b > 0)).sum() + ((labels > 0) != ((a > 0) | (b > 0))).sum())  # noqa: E731
    report.compare("sample_gt random: train/test disjoint, cover the labels", overlap(split.train, split.test),
                   overlap(tr, te), keep=False)
    report.note("sample_gt random: which pixels", "not comparable: scikit-learn's train_test_split draw vs numpy's "
                "default_rng (same counts, disjoint, stratified)")
    np.random.seed(seed)
    tr, te = dhx_utils.sample_gt(old_gt, 5, mode="fixed")
    split = hsi_data.split_labels(labels, SplitConfig(mode="fixed", count=5, val_share=0.0), seed)
    report.compare("sample_gt fixed 5: train pixels per class", counts(split.train), counts(tr))
    np.random.seed(seed)
    tr, _ = dhx_utils.sample_gt(old_gt, 10, mode="random")
    split = hsi_data.split_labels(labels, SplitConfig(mode="random", count=10, val_share=0.0), seed)
    report.compare("sample_gt random count 10: train pixels per class", counts(split.train), counts(tr))
    report.note("sample_gt disjoint with a count (> 1)", "deliberate: DeepHyperX compares the count with a share "
                "(never reached: all rows train); zsk turns the count into that class's share")
    report.compare("compute_imf_weights (inverse median frequency)",
                   class_weights(split.train, k, "inverse_median"),
                   dhx_utils.compute_imf_weights(split.train, k + 1, [0])[1:])

    # ---- metrics ----------------------------------------------------------------------------------------------
    pred = np.random.default_rng(seed + 7).integers(1, k + 1, labels.shape)
    pred = np.where(np.random.default_rng(seed + 8).random(labels.shape) < 0.6, np.maximum(labels, 1), pred)
    report.keep("in/pred", pred)
    res = dhx_utils.metrics(pred, labels, ignored_labels=[0], n_classes=k + 1)
    ours = classification_metrics(torch.from_numpy(pred - 1), labels, [f"c{i}" for i in range(1, k + 1)])
    cm = res["Confusion matrix"]
    report.compare("metrics: confusion matrix", np.asarray(ours["confusion"]), cm[1:, 1:])
    report.compare("metrics: OA", ours["OA"], res["Accuracy"] / 100)
    report.compare("metrics: kappa", ours["kappa"], res["Kappa"])
    report.compare("metrics: per-class F1", list(ours["per_class_f1"].values()), res["F1 scores"][1:])
    per_class = np.diag(cm)[1:] / cm[1:].sum(1)
    report.compare("metrics: per-class accuracy (from its confusion matrix)", list(ours["per_class"].values()),
                   per_class)
    report.compare("metrics: AA (from its confusion matrix)", ours["AA"], per_class.mean())
    report.note("metrics with unpredicted border pixels", "deliberate: DeepHyperX scores them as class 0 "
                "(wrong); zsk leaves them out of the score (data.pad: none) or predicts them (reflect)")

    # ---- bf16 autocast: a measurement (the paper recipes train in fp32, runtime.precision) -----------------
    bf_net = tiny_net(bands, k, seed + 7)  # eval mode: BatchNorm running statistics and no dropout on both runs
    bf_patches = hsi_data.extract_patches(chw, ys - p, xs - p, PATCH)
    bf_target = torch.as_tensor(labels[idx[:, 0], idx[:, 1]].astype(np.int64) - 1)

    def energies_loss_grads(bf16: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bf_net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            u = bf_net(bf_patches)
        loss = unary_loss(u.float(), bf_target)
        loss.backward()
        grads = torch.cat([q.grad.flatten() for q in bf_net.parameters() if q.grad is not None])
        return u.detach().float(), loss.detach(), grads

    u32, l32, g32 = energies_loss_grads(False)
    u16, l16, g16 = energies_loss_grads(True)
    for name, a, b in (("unary energies", u16, u32), ("unary loss (sum)", l16, l32), ("unary-head gradients", g16, g32)):
        diff = float((a - b).abs().max())
        rel = diff / max(float(b.abs().max()), 1e-12)
        report.rows.append((f"{name}, bf16 autocast vs fp32 (CPU)", diff,
                            f"measured: relative {rel:.2g} (bf16 unit roundoff 2^-8 = 3.9e-3)"))

    # ---- what has no official code -------------------------------------------------------------------------
    for part in ("band-group 3-D CNN forward and parameter count", "unary and pairwise heads",
                 "mean-field inference (model.mean_field_update)", "piecewise loss terms and total",
                 "optimizer step gradients", "LR schedule", "deconvolution refinement"):
        report.note(part, "no official code (Alam et al. publish none); the paper's equations are checked in "
                    "tests/tasks/hsi")

    report.print()
    report.save(args.save, {"seed": seed, "patch": PATCH, "scene": list(SCENE),
                            "benchmarks": BENCHMARKS, "nan_benchmark": NAN_BENCHMARK})
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
