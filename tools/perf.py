"""Reproduce every figure of the README's performance table (issue 19), one command per figure.

    .venv/bin/python tools/perf.py FIGURE [--full] [--repeats 3] [--out FILE.jsonl]

Every figure times a subject and its reference in the same process, interleaved (subject, reference,
subject, ...), one torch thread, and reports the median of ``--repeats`` runs of each in CPU time
(user and system apart, from getrusage) and wall time, the ratio of the medians, the machine (CPU model,
threads) and its load average before and after. CPU time is the figure to compare on a shared machine:
other processes' load slows the wall clock, not the CPU time of this process. Equalities (labels, ranks,
marginals) are checked on the same runs and reported beside the timings.

Figures (default sizes take one to three minutes each on one CPU thread; ``--full`` runs the issue's sizes):

- ``hsi-dense``: fully convolutional scene features (``branch_padding: valid``) vs the per-patch loop of the
  same model in batches of 100 patches, 145x145x200 scene, the spec's model; labels compared pixel by pixel
  (differing pixels counted, each with the gap between its two best unary energies: a flip is a float tie).
  Without ``--full`` the loop runs on the first rows only and its cost is scaled to the scene.
- ``hsi-predict``: ``zsk hsi predict`` end to end on a 145x145x200 cube in the Indian Pines files with a
  ``hsi/indian_pines`` checkpoint vs a process running the per-pixel loop over the same checkpoint's CNN.
- ``hsi-chunk``: the patch path (``same``) at the old fixed chunk (1,024), at 100, and at the measured chunk.
- ``hsi-crf``: mean field with the pairwise energies computed once vs once per iteration; bit-for-bit equal.
- ``medseg-windows``: V-Net (la_16) sliding windows batched by 8 vs one at a time vs a loop in the shape of
  DTC's ``test_single_case``; channels_last_3d; window GFLOP/s against a measured conv3d peak.
- ``retrieval``: one-pass ranks vs two-pass ranks vs a numpy loop in the shape of VSE++'s ``i2t``/``t2i``
  (argsort per query); 1,000 images x 5,000 captions, 5,000 x 25,000 with ``--full``.
- ``bench-flops``: a ViT-B/16 forward at 512x512 counted by torch's counter and by zsk's, against a hand count.
- ``peaks``: the matmul and convolution peaks of this machine, best of several calls.
- ``gzsl-dgp``: a DGP train step (gzsl demo bench spec) with the grouped propagation in reused buffers vs
  the written-out sum over hop groups (zsk before issue 19).
- ``churn``: system-time share of hsi dense features and of DGP train steps with glibc's default
  allocator vs ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` (freed memory kept, not returned).
- ``cli-help``: whole-process CPU time of ``zsk --help`` and ``zsk hsi --help`` vs ``python -c "import torch"``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usage() -> tuple[float, float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, time.perf_counter()


def measure(variants: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, dict], dict[str, Any]]:
    """Run every variant once as warm-up, then `repeats` interleaved rounds; per variant the median user,
    system, CPU (user + system) and wall seconds, and the last output of each variant."""
    outputs = {name: fn() for name, fn in variants.items()}
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            u0, s0, w0 = _usage()
            outputs[name] = fn()
            u1, s1, w1 = _usage()
            runs[name].append((u1 - u0, s1 - s0, w1 - w0))
    return _medians(runs), outputs


def _medians(runs: dict[str, list[tuple[float, float, float]]]) -> dict[str, dict]:
    """Per variant the median user, system, CPU (user + system) and wall seconds of its (user, sys, wall) runs."""
    return {name: {"user_s": statistics.median(r[0] for r in rs), "sys_s": statistics.median(r[1] for r in rs),
                   "cpu_s": statistics.median(r[0] + r[1] for r in rs), "wall_s": statistics.median(r[2] for r in rs),
                   "runs": len(rs)} for name, rs in runs.items()}


def child_usage(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(user, system, wall) seconds of one child process, from its own rusage (wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return usage.ru_utime, usage.ru_stime, time.perf_counter() - t0


def measure_children(variants: dict[str, tuple[list[str], dict[str, str] | None]], repeats: int) -> dict[str, dict]:
    """`measure` for whole processes (interleaved, medians)."""
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (cmd, env) in variants.items():
            runs[name].append(child_usage(cmd, env))
    return _medians(runs)


def ratio(table: dict[str, dict], reference: str, subject: str, key: str = "cpu_s") -> float:
    """How many times faster `subject` is than `reference` (median CPU seconds by default)."""
    return table[reference][key] / table[subject][key] if table[subject][key] > 0 else math.inf


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _hsi_model(padding: str, bands: int = 200, classes: int = 16):
    from zsk.core.recipe import load_recipe, parse_config
    from zsk.tasks.hsi.config import Config
    from zsk.tasks.hsi.train import build_model

    cfg = parse_config(Config, load_recipe(REPO / "recipes/hsi/indian_pines.yaml", [f"model.branch_padding={padding}"]))
    torch.manual_seed(0)
    net = build_model(cfg, bands, classes).eval()
    for m in net.modules():  # non-trivial BN statistics, as a trained model has
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net, cfg


def _scene(size: int, bands: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(bands, size, size, generator=g) + torch.linspace(0, 1, size)  # structure across the scene


def fig_hsi_dense(args: argparse.Namespace) -> dict:
    from zsk.tasks.hsi import data as hsi_data
    from zsk.tasks.hsi.evaluate import node_features
    from zsk.tasks.hsi.train import padded_cube

    size, bands = 145, 200
    net, cfg = _hsi_model("valid", bands)
    padded = padded_cube(_scene(size, bands), cfg)
    feats, w = net.potentials.features, cfg.model.patch
    n_loop = (size if args.full else args.loop_rows) * size
    out = torch.empty(size, size, feats.feature_dim)
    # random-init features barely vary between pixels: centre the unary head on the compared rows' mean feature,
    # so the labels spread over the classes and "identical labels" compares many classes, not one or two
    with torch.no_grad():
        rows = n_loop // size
        mean = feats.forward_dense(padded[:, : rows + w - 1]).mean((0, 1))
        lin = net.potentials.unary.linear
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=torch.Generator().manual_seed(2)))
        lin.bias.copy_(-lin.weight @ mean)

    @torch.no_grad()
    def dense() -> torch.Tensor:
        return net.potentials.unary(node_features(net, padded, cfg.eval, desc="dense", out=out))

    @torch.no_grad()
    def loop() -> torch.Tensor:  # the plain per-pixel loop: patches of the same model, 100 per batch
        energies = torch.empty(n_loop, net.potentials.unary.linear.out_features)
        for s in range(0, n_loop, 100):
            idx = torch.arange(s, min(n_loop, s + 100))
            patches = hsi_data.extract_patches(padded, idx // size, idx % size, w)
            energies[s : s + len(idx)] = net.potentials.unary(feats(patches))
        return energies

    # the recipes' `same` model (the default before issue 19) in the same loop: a different model (its labels
    # are not comparable), the reference for what the fully convolutional choice buys
    net_same, _ = _hsi_model("same", bands)
    feats_same = net_same.potentials.features
    n_same = args.same_rows * size

    @torch.no_grad()
    def loop_same() -> None:
        for s in range(0, n_same, 100):
            idx = torch.arange(s, min(n_same, s + 100))
            net_same.potentials.unary(feats_same(hsi_data.extract_patches(padded, idx // size, idx % size, w)))

    table, outs = measure({"dense": dense, "per_patch_loop": loop, "same_padding_loop": loop_same}, args.repeats)
    scale = size * size / n_loop
    scene_loop = {k: v * scale for k, v in table["per_patch_loop"].items() if k.endswith("_s")}
    scene_same = {k: v * size * size / n_same for k, v in table["same_padding_loop"].items() if k.endswith("_s")}
    # labels are argmin of the unary energies; the two paths sum in different orders (features differ by ~1e-7),
    # so a pixel whose two best energies are closer than that may flip: count those and give their margins
    u_dense, u_loop = outs["dense"].reshape(-1, outs["dense"].shape[-1])[:n_loop], outs["per_patch_loop"]
    l_dense, l_loop = u_dense.argmin(-1), u_loop.argmin(-1)
    flipped = (l_dense != l_loop).nonzero().flatten()
    best2 = u_loop[flipped].sort(-1).values[:, :2]
    same_labels = flipped.numel() == 0
    return {"scene": f"{size}x{size}x{bands}", "model": "indian_pines recipe, branch_padding valid",
            "loop_pixels": n_loop, "same_loop_pixels": n_same, "loops_scaled_to_scene": True, "table": table,
            "per_patch_loop_scene_s": scene_loop, "same_padding_loop_scene_s": scene_same,
            "speedup_cpu": scene_loop["cpu_s"] / table["dense"]["cpu_s"],
            "speedup_user": scene_loop["user_s"] / table["dense"]["user_s"],
            "speedup_vs_same_padding_loop_cpu": scene_same["cpu_s"] / table["dense"]["cpu_s"],
            "identical_labels": same_labels, "labels_differing": int(flipped.numel()),
            "differing_pixels_best_two_gap": (best2[:, 1] - best2[:, 0]).tolist(),
            "unary_max_abs_diff": float((u_dense - u_loop).abs().max()), "classes_seen": int(l_loop.unique().numel())}


_HSI_LOOP_CHILD = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from zsk.tasks.hsi import data as hsi_data
from zsk.tasks.hsi.evaluate import load
from zsk.tasks.hsi.predict import read_input_cube
from zsk.tasks.hsi.train import padded_cube
loaded = load(sys.argv[1], device="cpu")
net, cfg = loaded.model.eval(), loaded.cfg
raw = read_input_cube(__import__("pathlib").Path(sys.argv[2]), None)
cube = hsi_data.apply_preprocess(raw, loaded.extra["preprocess"], sys.argv[2])
padded = padded_cube(torch.from_numpy(cube).permute(2, 0, 1).contiguous(), cfg)
h, w = raw.shape[:2]
labels = np.empty(h * w, dtype=np.int64)
feats, unary, p = net.potentials.features, net.potentials.unary, cfg.model.patch
with torch.no_grad():  # the plain per-pixel loop: the CNN's unary labels, 100 patches per batch
    for s in range(0, h * w, 100):
        idx = torch.arange(s, min(h * w, s + 100))
        labels[s : s + len(idx)] = unary(feats(hsi_data.extract_patches(padded, idx // w, idx % w, p))).argmin(-1).numpy()
np.save(sys.argv[3], labels.reshape(h, w))
"""


def _indian_pines_files(root: Path, seed: int = 0) -> Path:
    """A synthetic 145x145x200 scene in the real Indian Pines files (MATLAB, the benchmark's keys): 16 classes in
    blocks, each with its own spectrum plus noise. Returns the cube's path."""
    import scipy.io

    g = np.random.default_rng(seed)
    folder = root / "IndianPines"
    folder.mkdir(parents=True)
    gt = np.zeros((145, 145), np.uint8)
    for c in range(16):  # a 4 x 4 grid of class blocks, 36 x 36 pixels, the margins unlabelled
        r, q = divmod(c, 4)
        gt[r * 36 + 1 : r * 36 + 35, q * 36 + 1 : q * 36 + 35] = c + 1
    spectra = g.uniform(1000, 9000, (17, 200))
    cube = (spectra[gt] + g.normal(0, 400, (145, 145, 200))).astype(np.uint16)
    scipy.io.savemat(folder / "Indian_pines_corrected.mat", {"indian_pines_corrected": cube})
    scipy.io.savemat(folder / "Indian_pines_gt.mat", {"indian_pines_gt": gt})
    return folder / "Indian_pines_corrected.mat"


def fig_hsi_predict(args: argparse.Namespace) -> dict:
    """`zsk hsi predict` end to end (process start, the .mat cube read, dense features, CRF, refinement, the label
    map written) with an Indian Pines recipe checkpoint, against a process running the plain per-pixel loop over
    the same checkpoint's CNN in batches of 100 patches: the issue's first measurement, whole processes."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="zsk-perf-hsi-predict-"))
    try:
        cube = _indian_pines_files(tmp / "data")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        zsk = [sys.executable, "-m", "zsk"]
        # a paper-recipe checkpoint (two steps per stage: the weights do not change the cost)
        subprocess.run([*zsk, "hsi", "train", "--recipe", "hsi/indian_pines", "--set", f"data.root={tmp / 'data'}",
                        "--set", "train.max_steps=2", "--set", "train.stages.refine.steps=2", "--out", str(tmp / "run"),
                        "--quiet"], env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpt = tmp / "run" / "best.pt"
        runs: dict[str, list[tuple[float, float, float]]] = {"zsk_hsi_predict": [], "per_pixel_loop": []}
        for i in range(args.repeats):  # interleaved; every predict writes into a folder of its own
            runs["zsk_hsi_predict"].append(child_usage([*zsk, "hsi", "predict", str(cube), "-c", str(ckpt), "--out",
                                                        str(tmp / f"pred{i}"), "--quiet"], env))
            runs["per_pixel_loop"].append(child_usage([sys.executable, "-c", _HSI_LOOP_CHILD, str(ckpt), str(cube),
                                                       str(tmp / f"loop{i}.npy")], env))
        table = _medians(runs)
        return {"scene": "145x145x200 (Indian Pines files, synthetic values)", "recipe": "hsi/indian_pines",
                "table": table, "speedup_cpu": ratio(table, "per_pixel_loop", "zsk_hsi_predict"),
                "note": "predict runs CNN + CRF + refinement and writes its files; the loop runs the CNN only"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fig_hsi_chunk(args: argparse.Namespace) -> dict:
    from zsk.tasks.hsi import evaluate as hsi_eval
    from zsk.tasks.hsi.config import EvalConfig
    from zsk.tasks.hsi.train import padded_cube

    size, bands = (145, 200)
    net, cfg = _hsi_model("same", bands)
    padded = padded_cube(_scene(size, bands), cfg)
    n = size * size if args.full else args.patches
    rows = math.ceil(n / size)
    part = padded[:, : rows + cfg.model.patch - 1]  # the first rows: n patches or a little more

    def run(chunk: int | str) -> Callable[[], torch.Tensor]:
        return lambda: hsi_eval.node_features(net, part, EvalConfig(chunk_pixels=chunk), desc=f"chunk {chunk}")

    hsi_eval._measured_chunks.clear()
    auto = run("auto")()  # measures once (remembered for the timed runs)
    chosen = next(iter(hsi_eval._measured_chunks.values()))
    table, outs = measure({"chunk_1024": run(1024), "chunk_100": run(100), f"chunk_measured_{chosen}": run(chosen)},
                          args.repeats)
    ref = outs["chunk_1024"]
    return {"scene_rows": rows, "patches": rows * size, "measured_chunk": chosen, "table": table,
            "speedup_measured_vs_1024": ratio(table, "chunk_1024", f"chunk_measured_{chosen}"),
            "speedup_100_vs_1024": ratio(table, "chunk_1024", "chunk_100"),
            "max_abs_diff": max(float((o - ref).abs().max()) for o in [*outs.values(), auto])}


def fig_hsi_crf(args: argparse.Namespace) -> dict:
    from zsk.tasks.hsi.model import CRFGrid, mean_field

    torch.manual_seed(0)
    net, cfg = _hsi_model("same")
    head = net.potentials.pairwise
    size = 145
    features = torch.randn(size, size, cfg.model.feature_dim).relu()
    unary = torch.randn(size, size, net.num_classes)

    @torch.no_grad()
    def run(cache_bytes: int) -> Callable[[], torch.Tensor]:
        def fn() -> torch.Tensor:
            grid = CRFGrid(head, features, cfg.model.crf_radius, cfg.eval.tile_pixels, cfg.model.mean_field_update,
                           cache_bytes=cache_bytes)
            with torch.no_grad():
                return mean_field(unary, grid.message, cfg.model.mean_field_iters)
        return fn

    table, outs = measure({"energies_once": run(int(cfg.eval.crf_cache_mb * 2**20)), "energies_per_iteration": run(0)},
                          args.repeats)
    return {"scene": f"{size}x{size}", "classes": net.num_classes, "iterations": cfg.model.mean_field_iters,
            "table": table, "speedup_cpu": ratio(table, "energies_per_iteration", "energies_once"),
            "bit_for_bit": bool(torch.equal(outs["energies_once"], outs["energies_per_iteration"]))}


def _conv3d_peak(reps: int = 3) -> float:
    """Best FLOP/s of 3-D convolutions shaped like a V-Net's (16 -> 16 and 32 -> 32 channels, 3x3x3 and
    5x5x5 kernels, same padding), each the best of `reps` calls."""
    from zsk.core.bench import _best_rate

    cpu = torch.device("cpu")
    best = 0.0
    with torch.no_grad():
        for c, k, size in ((16, 5, (56, 56, 40)), (32, 3, (56, 56, 40)), (32, 3, (28, 28, 20))):
            x = torch.randn(1, c, *size)
            w = torch.randn(c, c, k, k, k)
            flops = 2.0 * c * math.prod(size) * c * k**3
            best = max(best, _best_rate(lambda x=x, w=w, k=k: torch.nn.functional.conv3d(x, w, padding=k // 2),
                                        flops, cpu, reps))
    return best


def fig_medseg_windows(args: argparse.Namespace) -> dict:
    from zsk.core.bench import count_flops
    from zsk.core.recipe import load_recipe, parse_config
    from zsk.models.inferers import window_starts
    from zsk.tasks.medseg.config import Config
    from zsk.tasks.medseg.evaluate import sliding_window_scores
    from zsk.tasks.medseg.train import build_model

    cfg = parse_config(Config, load_recipe(REPO / "recipes/medseg/la_16.yaml", []))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    shape = (175, 132, 88) if args.full else (166, 112, 84)  # 45 windows (the volume) / 8 windows
    volume = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    patch, stride = cfg.eval_patch, cfg.eval.stride
    n_windows = math.prod(len(window_starts(s, p, st)) for s, p, st in zip(shape, patch, stride, strict=True))

    def zsk_windows(batch: int) -> Callable[[], torch.Tensor]:
        return lambda: sliding_window_scores(model, volume, patch, stride, cfg.data.num_classes, batch)

    @torch.no_grad()
    def official_loop() -> torch.Tensor:  # the shape of DTC's test_single_case: one window per call, numpy sums
        image = volume.numpy()
        score = np.zeros((1, *shape), np.float32)
        count = np.zeros(shape, np.float32)
        for x in window_starts(shape[0], patch[0], stride[0]):
            for y in window_starts(shape[1], patch[1], stride[1]):
                for z in window_starts(shape[2], patch[2], stride[2]):
                    window = image[x : x + patch[0], y : y + patch[1], z : z + patch[2]]
                    _, seg = model(torch.from_numpy(np.ascontiguousarray(window))[None, None])
                    prob = torch.sigmoid(seg[0]).numpy() if seg.shape[1] == 1 else torch.softmax(seg[0], 0)[1:].numpy()
                    score[:, x : x + patch[0], y : y + patch[1], z : z + patch[2]] += prob[:1]
                    count[x : x + patch[0], y : y + patch[1], z : z + patch[2]] += 1
        return torch.from_numpy(score / count)

    model_cl = build_model(cfg).eval()
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=torch.channels_last_3d)

    @torch.no_grad()
    def channels_last() -> torch.Tensor:
        def predictor(w: torch.Tensor) -> torch.Tensor:
            from zsk.tasks.medseg.model import seg_probabilities

            return seg_probabilities(model_cl(w.contiguous(memory_format=torch.channels_last_3d))[1].float(),
                                     cfg.data.num_classes)

        from zsk.models.inferers import sliding_window_inference

        return sliding_window_inference(volume[None], patch, stride, predictor, window_batch=1, pad="symmetric")

    table, outs = measure({"batched_8": zsk_windows(8), "one_window": zsk_windows(1), "official_loop": official_loop,
                           "channels_last_3d": channels_last}, args.repeats)
    with torch.no_grad():
        window_flops = count_flops(lambda: model(torch.zeros(1, 1, *patch)))
    from zsk.core.bench import conv_peak

    peak = conv_peak(torch.device("cpu"), None)
    peak3d = _conv3d_peak()
    one = outs["one_window"]
    return {"volume": list(shape), "windows": n_windows, "window_gflop": window_flops / 1e9, "table": table,
            "one_window_vs_batched_8": ratio(table, "batched_8", "one_window"),
            "one_window_vs_official_loop": ratio(table, "official_loop", "one_window"),
            "channels_last_vs_one_window": ratio(table, "one_window", "channels_last_3d"),
            "window_gflops_per_cpu_s": window_flops * n_windows / table["one_window"]["cpu_s"] / 1e9,
            "conv_peak_gflops": peak / 1e9, "conv3d_peak_gflops": peak3d / 1e9,
            "window_share_of_conv3d_peak": window_flops * n_windows / table["one_window"]["cpu_s"] / peak3d,
            "max_abs_diff": {k: float((v - one).abs().max()) for k, v in outs.items()}}


def _official_ranks(img: np.ndarray, cap: np.ndarray, cpi: int, queries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A numpy loop in the shape of VSE++'s evaluation.i2t / t2i: one query at a time, argsort, position of
    the ground truth (written here; the official code is not copied). `queries`: only the first images
    (and their captions) as queries, against the whole gallery (each query costs the same)."""
    n = img.shape[0] if queries is None else queries
    r_i2t = np.zeros(n, dtype=np.int64)
    for i in range(n):
        order = np.argsort(img[i] @ cap.T)[::-1]
        r_i2t[i] = min(int(np.where(order == j)[0][0]) for j in range(cpi * i, cpi * i + cpi))
    r_t2i = np.zeros(n * cpi, dtype=np.int64)
    for i in range(n):
        scores = cap[cpi * i : cpi * i + cpi] @ img.T
        for k in range(cpi):
            order = np.argsort(scores[k])[::-1]
            r_t2i[cpi * i + k] = int(np.where(order == i)[0][0])
    return r_i2t, r_t2i


def fig_retrieval(args: argparse.Namespace) -> dict:
    import faiss

    from zsk.metrics.retrieval import FaissSearch, chunked_ranks, faiss_ranks, two_pass_ranks

    faiss.omp_set_num_threads(torch.get_num_threads())

    n_img = 5000 if args.full else 1000
    cpi, dim = 5, 1024
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=1)
    cap = torch.nn.functional.normalize(img.repeat_interleave(cpi, 0) + 0.9 * torch.randn(n_img * cpi, dim, generator=g),
                                        dim=1)  # captions near their image: realistic (low) ranks
    variants: dict[str, Callable[[], Any]] = {"one_pass": lambda: chunked_ranks(img, cap, cpi),
                                               "two_pass": lambda: two_pass_ranks(img, cap, cpi),
                                               # eval.search=faiss: the top 100 per query (R@K, medr; no meanr)
                                               "faiss_flat": lambda: faiss_ranks(img, cap, cpi, FaissSearch(100)),
                                               "faiss_ivf": lambda: faiss_ranks(
                                                   img, cap, cpi, FaissSearch(100, nlist=int(4 * n_img ** 0.5),
                                                                              nprobe=16))}
    queries = max(1, int(n_img * args.official_share))
    if not args.no_official:
        variants["official_loop"] = lambda: _official_ranks(img.numpy(), cap.numpy(), cpi, queries)
    table, outs = measure(variants, args.repeats)
    one = outs["one_pass"]
    out = {"images": n_img, "captions": n_img * cpi, "dim": dim, "table": table,
           "one_pass_vs_two_pass": ratio(table, "two_pass", "one_pass"),
           "ranks_equal_two_pass": bool(torch.equal(one[0], outs["two_pass"][0]) and torch.equal(one[1], outs["two_pass"][1]))}
    for name in ("faiss_flat", "faiss_ivf"):
        r_i, r_t, depth = outs[name]
        out[f"{name}_vs_one_pass"] = ratio(table, "one_pass", name)
        # ranks below the depth as the scan's (flat: all; IVF misses ground truths in unvisited lists)
        out[f"{name}_ranks_equal_below_depth"] = {
            "i2t": float((r_i == one[0].clamp(max=depth)).double().mean()),
            "t2i": float((r_t == one[1].clamp(max=depth)).double().mean())}
    if "official_loop" in outs:
        off = outs["official_loop"]
        scale = n_img / queries
        out["official_queries"] = f"{queries} of {n_img} images and their captions, cost scaled by {scale:g}"
        out["official_loop_scaled_cpu_s"] = table["official_loop"]["cpu_s"] * scale
        out["one_pass_vs_official_loop"] = out["official_loop_scaled_cpu_s"] / table["one_pass"]["cpu_s"]
        # numpy's per-query products round differently from the tiled matmul: near-ties may swap (rank +-1)
        d_i2t = np.abs(one[0].numpy()[:queries] - off[0])
        d_t2i = np.abs(one[1].numpy()[: queries * cpi] - off[1])
        out["ranks_vs_official"] = {"i2t_differing": int((d_i2t > 0).sum()), "t2i_differing": int((d_t2i > 0).sum()),
                                    "queries": int(queries * (1 + cpi)), "max_abs_diff": int(max(d_i2t.max(), d_t2i.max()))}
    return out


def fig_bench_flops(args: argparse.Namespace) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from zsk.core.bench import attention_flops, count_flops

    size, patch, dim, depth, mlp = 512, 16, 768, 12, 3072
    tokens = (size // patch) ** 2 + 1

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
            self.attn = torch.nn.MultiheadAttention(dim, 12, batch_first=True)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, mlp), torch.nn.GELU(), torch.nn.Linear(mlp, dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    # real tensors (the fused attention path is not taken on the meta device): two forwards, about 5 s
    embed = torch.nn.Conv2d(3, dim, patch, stride=patch)
    blocks = torch.nn.Sequential(*[Block() for _ in range(depth)]).eval()
    x = torch.randn(1, 3, size, size)
    cls = torch.zeros(1, 1, dim)

    @torch.no_grad()
    def vit() -> None:
        t = embed(x).flatten(2).transpose(1, 2)
        blocks(torch.cat([cls, t], dim=1))

    with FlopCounterMode(display=False) as plain:
        vit()
    hand = 2 * (size // patch) ** 2 * dim * 3 * patch * patch + depth * (attention_flops(tokens, tokens, dim, 1)
                                                                          + 2 * 2 * tokens * dim * mlp)
    zsk_count = count_flops(vit)
    return {"model": "ViT-B/16 forward at 512x512 (nn.MultiheadAttention, inference)",
            "torch_counter_gflop": plain.get_total_flops() / 1e9, "zsk_gflop": zsk_count / 1e9,
            "hand_gflop": hand / 1e9, "zsk_equals_hand": zsk_count == hand}


def fig_peaks(args: argparse.Namespace) -> dict:
    from zsk.core.bench import conv_peak, matmul_peak

    cpu = torch.device("cpu")
    rows = [{"matmul_gflops": matmul_peak(cpu, None) / 1e9, "conv_gflops": conv_peak(cpu, None) / 1e9}
            for _ in range(args.repeats)]
    return {"runs": rows, "matmul_best_gflops": max(r["matmul_gflops"] for r in rows),
            "conv_best_gflops": max(r["conv_gflops"] for r in rows),
            "conv_over_matmul": max(r["conv_gflops"] for r in rows) / max(r["matmul_gflops"] for r in rows)}


KEEP_FREED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def fig_churn(args: argparse.Namespace) -> dict:
    py = [sys.executable, str(Path(__file__).resolve()), "_churn_child"]
    base = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = {}
    for work in ("hsi_dense", "dgp_steps"):
        table = measure_children({"glibc_default": ([*py, work], base),
                                  "keep_freed_memory": ([*py, work], {**base, **KEEP_FREED})}, args.repeats)
        for row in table.values():
            row["sys_share"] = row["sys_s"] / row["cpu_s"] if row["cpu_s"] else 0.0
        out[work] = {"table": table, "speedup_cpu": ratio(table, "glibc_default", "keep_freed_memory")}
    out["allocator_setting"] = " ".join(f"{k}={v}" for k, v in KEEP_FREED.items())
    return out


def _churn_child(work: str) -> None:
    """The work `churn` times in a child process (its own allocator settings)."""
    if work == "hsi_dense":
        from zsk.tasks.hsi.evaluate import node_features
        from zsk.tasks.hsi.train import padded_cube

        net, cfg = _hsi_model("valid")
        padded = padded_cube(_scene(145, 200), cfg)
        with torch.no_grad():
            for _ in range(2):
                node_features(net, padded, cfg.eval, desc="churn")
    else:  # three train steps (full-graph epochs) of the gzsl demo recipe's DGP
        step = _gzsl_demo_step()
        for _ in range(3):
            step()


def _gzsl_demo_step() -> Callable[[], None]:
    """One Trainer step of `zsk bench`'s gzsl spec on the demo recipe (a full-graph DGP epoch)."""
    from zsk.cli import task_of
    from zsk.core.bench import trainer_step
    from zsk.core.recipe import load_recipe, parse_config

    d = task_of("gzsl")
    cfg = parse_config(d.Config, load_recipe("gzsl/demo", ["runtime.device=cpu"]))
    spec = d.bench_spec(cfg, torch.device("cpu"), None)
    return trainer_step(spec, cfg, torch.device("cpu"))[0]


def fig_gzsl_dgp(args: argparse.Namespace) -> dict:
    import zsk.tasks.gzsl.model as gm

    grouped = gm.grouped_propagation

    def written_out(alpha: torch.Tensor, support: torch.Tensor, operators: list[torch.Tensor]) -> torch.Tensor:
        return sum(alpha[k] * gm._spmm(op, support) for k, op in enumerate(operators))  # zsk before issue 19

    step = _gzsl_demo_step()

    def run(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def go() -> None:
            gm.grouped_propagation = fn
            try:
                step()
            finally:
                gm.grouped_propagation = grouped
        return go

    table, _ = measure({"grouped_buffers": run(grouped), "written_out_sum": run(written_out)}, args.repeats)
    return {"work": "one DGP train step (full-graph epoch) of the gzsl demo recipe's bench spec", "table": table,
            "speedup_cpu": ratio(table, "written_out_sum", "grouped_buffers"),
            "sys_share": {k: v["sys_s"] / v["cpu_s"] for k, v in table.items()}}


def fig_cli_help(args: argparse.Namespace) -> dict:
    zsk = [sys.executable, "-m", "zsk.cli"] if not (REPO / ".venv/bin/zsk").exists() else [str(REPO / ".venv/bin/zsk")]
    table = measure_children({"zsk --help": ([*zsk, "--help"], None), "zsk hsi --help": ([*zsk, "hsi", "--help"], None),
                              "python -c 'import torch'": ([sys.executable, "-c", "import torch"], None)},
                             max(args.repeats, 3))
    return {"table": table, "zsk_help_vs_import_torch": ratio(table, "python -c 'import torch'", "zsk --help")}


FIGURES: dict[str, Callable[[argparse.Namespace], dict]] = {
    "hsi-dense": fig_hsi_dense, "hsi-predict": fig_hsi_predict, "hsi-chunk": fig_hsi_chunk, "hsi-crf": fig_hsi_crf,
    "medseg-windows": fig_medseg_windows, "retrieval": fig_retrieval, "bench-flops": fig_bench_flops,
    "peaks": fig_peaks, "churn": fig_churn, "cli-help": fig_cli_help, "gzsl-dgp": fig_gzsl_dgp,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_churn_child"]:
        _churn_child(argv[1])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=[*FIGURES, "all"])
    p.add_argument("--full", action="store_true", help="The issue's sizes (minutes per figure).")
    p.add_argument("--repeats", type=int, default=3, help="Interleaved timed runs per variant (median).")
    p.add_argument("--loop-rows", type=int, default=8, help="hsi-dense without --full: rows the per-patch loop runs.")
    p.add_argument("--same-rows", type=int, default=1, help="hsi-dense: rows the `same`-padding loop runs.")
    p.add_argument("--patches", type=int, default=1024, help="hsi-chunk without --full: patches per variant.")
    p.add_argument("--no-official", action="store_true", help="retrieval: skip the slow numpy loop.")
    p.add_argument("--official-share", type=float, default=1.0,
                   help="retrieval: run the numpy loop on this share of the queries (whole gallery) and scale its cost.")
    p.add_argument("--out", type=Path, default=None, help="Append each figure as a JSON line to this file.")
    args = p.parse_args(argv)
    for name in FIGURES if args.figure == "all" else [args.figure]:
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        result = FIGURES[name](args)
        given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != args.figure]
        if "--out" in given:  # where the line was written is not part of the command that measured it
            i = given.index("--out")
            del given[i : i + 2]
        row = {"figure": name, "command": " ".join(["python tools/perf.py", name, *given]),
               "device": f"cpu: {cpu_model()}", "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()],
               "seconds": round(time.perf_counter() - t0, 1), **result}
        line = json.dumps(row, default=float)
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
