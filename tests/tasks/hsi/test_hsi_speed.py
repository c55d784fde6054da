"""Issue 19 equalities of the fast hsi paths, without timing anything: CRF energies computed once give the
same marginals bit for bit; the measured patch chunk changes nothing but speed; the fully convolutional
(`valid`) scene features equal the per-patch forward of the same model on a scene of the real shape class."""

from __future__ import annotations

import pytest
import torch

from zsk.tasks.hsi import evaluate as hsi_eval
from zsk.tasks.hsi import train as hsi_train
from zsk.tasks.hsi.config import Config, DataConfig, EvalConfig, ModelConfig
from zsk.tasks.hsi.model import CRFGrid, PairwiseHead, mean_field


def _net(padding: str, patch: int, chunk: int | str = 7, cache_mb: float = 0.0):
    channels = [3, 4, 4] if padding == "valid" else [3, 4]
    cfg = Config(
        data=DataConfig(),
        model=ModelConfig(name="crf", patch=patch, band_groups=2, branch_channels=channels,
                          branch_spectral_kernels=[3] * len(channels), branch_padding=padding, feature_dim=6,
                          pairwise_hidden=5, refine=True, refine_reduced_dim=2, refine_widths=[4, 4]),
        eval=EvalConfig(chunk_pixels=chunk, tile_pixels=20, crf_cache_mb=cache_mb),
    )
    torch.manual_seed(0)
    net = hsi_train.build_model(cfg, 6, 4)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval(), cfg


@pytest.mark.parametrize("update", ["full", "outgoing"])
def test_crf_energies_computed_once_give_the_same_marginals_bit_for_bit(update):
    torch.manual_seed(3)
    k, d, h, w = 4, 6, 7, 9
    head = PairwiseHead(d, k, hidden=5)
    features = torch.randn(h, w, d)
    unary = torch.randn(h, w, k)
    with torch.no_grad():
        again = CRFGrid(head, features, 1, chunk_pixels=2 * w, update=update, cache_bytes=0)
        once = CRFGrid(head, features, 1, chunk_pixels=2 * w, update=update, cache_bytes=2**30)
        part = CRFGrid(head, features, 1, chunk_pixels=2 * w, update=update, cache_bytes=3 * 2 * w * k * k * 4)
        ref = mean_field(unary, again.message, 5)
        assert torch.equal(mean_field(unary, once.message, 5), ref)
        assert torch.equal(mean_field(unary, part.message, 5), ref)
    chunks = again.computed // 5  # energy chunks per iteration
    assert once.computed == chunks  # each V_pq once per run, not once per iteration
    assert 0 < len(part.cached) < chunks and part.computed == chunks + 4 * (chunks - len(part.cached))


def test_crf_cache_in_scene_probabilities_changes_nothing():
    net, cfg = _net("same", 3, cache_mb=0.0)
    cube = torch.rand(6, 10, 10)
    padded = hsi_train.padded_cube(cube, cfg)
    ref = hsi_eval.scene_probabilities(net, padded, cfg)
    cfg.eval.crf_cache_mb = 64.0
    out = hsi_eval.scene_probabilities(net, padded, cfg)
    for key in ("cnn", "crf", "refined"):
        assert torch.equal(out[key], ref[key]), key


def test_measured_chunk_picks_the_fastest_and_computes_every_patch_once(monkeypatch):
    calls: list[tuple[int, int]] = []
    ticks = iter(range(1000))
    # a fake clock: every reading advances 1; run() below advances it by the chunk's cost
    now = {"t": 0.0}
    cost = {8: 8.0, 16: 8.0, 32: 4.0, 64: 32.0}  # seconds per chunk: 32 is the fastest per patch

    def run(s: int, e: int) -> None:
        calls.append((s, e))
        now["t"] += cost.get(e - s, 0.0)

    monkeypatch.setattr(hsi_eval, "CHUNK_CANDIDATES", {"cpu": (8, 16, 32, 64)})
    monkeypatch.setattr(hsi_eval, "_clock", lambda device: lambda: now["t"] + 0 * next(ticks))
    monkeypatch.setattr(hsi_eval, "_measured_chunks", {})
    chunk, done = hsi_eval.measured_chunk(run, 1000, torch.device("cpu"), ("k",))
    assert chunk == 32
    # warm-up on the first 8 patches, then each candidate on the next ones: contiguous, no patch twice
    assert calls == [(0, 8), (8, 16), (16, 32), (32, 64), (64, 128)] and done == 128
    assert hsi_eval.measured_chunk(run, 1000, torch.device("cpu"), ("k",)) == (32, 0)  # remembered
    # candidates that do not fit a small scene four times over are skipped
    monkeypatch.setattr(hsi_eval, "_measured_chunks", {})
    calls.clear()
    assert hsi_eval.measured_chunk(run, 100, torch.device("cpu"), ("k",))[0] in (8, 16)


@pytest.mark.parametrize("padding,patch", [("same", 5), ("valid", 7)])
def test_auto_chunk_features_equal_fixed_chunk_features(padding, patch, monkeypatch):
    monkeypatch.setattr(hsi_eval, "_measured_chunks", {})
    net, cfg = _net(padding, patch, chunk="auto")
    cube = torch.randn(6, 23, 17, generator=torch.Generator().manual_seed(1))
    padded = hsi_train.padded_cube(cube, cfg)
    auto = hsi_eval.node_features(net, padded, cfg.eval)
    buffer = torch.full_like(auto, float("nan"))
    fixed = hsi_eval.node_features(net, padded, EvalConfig(chunk_pixels=23 * 17), out=buffer)
    assert fixed.data_ptr() == buffer.data_ptr()  # the preallocated output is filled in place
    torch.testing.assert_close(auto, fixed, atol=1e-6, rtol=1e-5)


def test_dense_valid_features_equal_per_patch_forward_on_every_pixel():
    # the spec's three valid 3-D layers (7x7 patch) on a multi-tile scene, tiles not dividing it
    net, cfg = _net("valid", 7)
    feats = net.potentials.features
    cube = torch.randn(6, 13, 12, generator=torch.Generator().manual_seed(4))
    padded = hsi_train.padded_cube(cube, cfg)
    dense = hsi_eval.node_features(net, padded, EvalConfig(tile_pixels=3 * 12))  # bands of 3 rows
    with torch.no_grad():
        ys, xs = torch.meshgrid(torch.arange(13), torch.arange(12), indexing="ij")
        from zsk.tasks.hsi.data import extract_patches

        per_patch = feats(extract_patches(padded, ys.reshape(-1), xs.reshape(-1), 7)).view(13, 12, -1)
    torch.testing.assert_close(dense, per_patch, atol=1e-5, rtol=1e-5)
    assert per_patch.std(dim=(0, 1)).max() > 1e-3  # features vary over the scene: the check is not vacuous


def test_bench_flops_of_the_patch_cnn_equal_a_hand_count():
    """`zsk bench`/`info` FLOPs of the per-patch forward equal a hand count of its Conv3d and Linear layers."""
    from zsk.core.bench import count_flops

    net, cfg = _net("same", 5)
    n, bands, w = 3, 6, 5
    patches = torch.randn(n, bands, w, w)
    hand = 0
    for a, b in net.potentials.features.groups:  # each branch sees its own b - a bands, same padding keeps sizes
        c_in = 1
        for c_out, k in zip(cfg.model.branch_channels, cfg.model.branch_spectral_kernels, strict=True):
            hand += 2 * n * c_out * c_in * k * 3 * 3 * (b - a) * w * w
            c_in = c_out
    width = sum(cfg.model.branch_channels[-1] for _ in net.potentials.features.groups)
    hand += 2 * n * width * cfg.model.feature_dim + 2 * n * cfg.model.feature_dim * 4  # fuse Linear, unary Linear
    with torch.no_grad():
        assert count_flops(lambda: net(patches)) == hand


def test_scene_probabilities_reuse_the_feature_buffer_across_scenes():
    """predict and bench keep one node-feature buffer across scenes of the same size: same probabilities,
    no new allocation; a scene of another size gets its own buffer."""
    net, cfg = _net("valid", 7)
    cubes = [torch.randn(6, 13, 12, generator=torch.Generator().manual_seed(s)) for s in (5, 6)]
    buffers: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        first = hsi_eval.scene_probabilities(net, hsi_train.padded_cube(cubes[0], cfg), cfg, buffers=buffers)
        ptr = buffers["features"].data_ptr()
        second = hsi_eval.scene_probabilities(net, hsi_train.padded_cube(cubes[1], cfg), cfg, buffers=buffers)
        assert buffers["features"].data_ptr() == ptr
        fresh = hsi_eval.scene_probabilities(net, hsi_train.padded_cube(cubes[1], cfg), cfg)
        torch.testing.assert_close(second["final"], fresh["final"], rtol=0, atol=0)
        assert not torch.equal(first["final"], second["final"])
        other = torch.randn(6, 9, 10, generator=torch.Generator().manual_seed(7))
        hsi_eval.scene_probabilities(net, hsi_train.padded_cube(other, cfg), cfg, buffers=buffers)
        assert buffers["features"].shape[:2] == (9, 10)
