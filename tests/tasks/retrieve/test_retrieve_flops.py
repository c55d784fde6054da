"""`zsk bench` FLOPs of retrieve's networks against hand counts (issue 19).

Convention (torch's flop counter, which zsk's ``count_flops`` extends): a matrix product or convolution counts
2 x its multiply-adds (Linear: 2 * rows * in * out; 1x1 Conv1d: 2 * N * C_out * C_in * L; bmm / matmul:
2 * batch * n * k * m); elementwise ops, norms (L2, BatchNorm), softmax, sigmoid, pooling, embedding look-ups
and sorting count 0. A GRU runs, per sequence element, layer and direction, its 3 gates' input and hidden
products: 2 * (3H * I + 3H * H) FLOPs (packed sequences only step through each caption's real words).
The hand counts below are written from the recipe's dimensions, not read from zsk code or a counter.
"""

from __future__ import annotations

import pytest
import torch

from zsk.core.bench import count_flops
from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.retrieve.config import Config
from zsk.tasks.retrieve.hooks import bench_spec

CPU = torch.device("cpu")


def _cfg(*sets: str) -> Config:
    """retrieve/demo (the recipe `zsk demo` and the CPU bench use), with overrides."""
    return parse_config(Config, load_recipe("retrieve/demo", ["data.root=/nowhere", *sets]))


def linear(rows: int, d_in: int, d_out: int) -> int:
    return 2 * rows * d_in * d_out


def gru(elements: int, d_in: int, hidden: int) -> int:
    """One GRU layer and direction over ``elements`` sequence elements: 3 gates of input and hidden products."""
    return 2 * elements * (3 * hidden * d_in + 3 * hidden * hidden)


def bmm(batch: int, n: int, k: int, m: int) -> int:
    return 2 * batch * n * k * m


def _batch_sizes(spec_batch: dict) -> tuple[int, int, int]:
    """(images, captions, words of all captions) of the bench's synthetic batch."""
    return spec_batch["image"].shape[0], spec_batch["tokens"].shape[0], int(spec_batch["cap_lengths"].sum())


def test_vsepp_bench_inference_flops_equal_a_hand_count() -> None:
    """The demo's VSE++ (the model `zsk bench --recipe retrieve/demo` times), its bench ``infer_step`` at the
    recipe's batch: the flattened-region Linear of every image plus the GRU over every caption word."""
    cfg = _cfg()
    spec = bench_spec(cfg, CPU, None)
    m = cfg.model
    n_img, _, words = _batch_sizes(spec.batch)
    assert n_img == cfg.train.batch_size
    hand = linear(n_img, m.num_regions * m.img_dim, m.embed_size) + gru(words, m.word_dim, m.embed_size)
    assert count_flops(spec.infer_step) == hand


def test_vsrn_bench_inference_flops_equal_a_hand_count() -> None:
    """VSRN on the demo's dimensions, its bench ``infer_step``: per image the region Linear, four residual
    GCNs (g, theta, phi and W 1x1 convs of width D, the affinity theta^T phi and R g, two R x R x D products)
    and the GSR GRU over the regions; per caption the GRU over its words (the captioner runs only in training)."""
    cfg = _cfg("model.base=vsrn")
    spec = bench_spec(cfg, CPU, None)
    m = cfg.model
    n_img, _, words = _batch_sizes(spec.batch)
    d, r = m.embed_size, m.num_regions
    conv1x1 = 2 * n_img * d * d * r  # Conv1d(D, D, 1) over the R regions (inter channels = D in VSRN)
    gcn_layer = 4 * conv1x1 + bmm(n_img, r, d, r) + bmm(n_img, r, r, d)
    hand = (linear(n_img * r, m.img_dim, d) + m.gcn_steps * gcn_layer + gru(n_img * r, d, d)
            + gru(words, m.word_dim, d))
    assert count_flops(spec.infer_step) == hand


def _visual_sa(n_img: int, regions: int, d: int) -> int:
    """VisualSA: local Linear(D, D) per region, global Linear(D, D) per image, Linear(D, 1) per region."""
    return linear(n_img * regions, d, d) + linear(n_img, d, d) + linear(n_img * regions, d, 1)


def _text_sa(k: int, n: int, d: int) -> int:
    """TextSA over ``k`` captions of ``n`` words: as VisualSA with words for regions."""
    return linear(k * n, d, d) + linear(k, d, d) + linear(k * n, d, 1)


def _pairs(base: str, p: int, n: int, regions: int, d: int, s: int, steps: int) -> int:
    """Scoring ``p`` (image, caption) pairs with ``n`` words: SCAN attention (regions x words scores, then the
    attended context), local (per word) and global similarity Linear(D, S), then SGR (``steps`` rounds of
    query/key/update Linear(S, S) over the n + 1 nodes, Q K^T and edges @ nodes) or SAF (a Linear(S, 1) gate
    per node and the gated sum of the nodes), and the Linear(S, 1) score."""
    nodes = n + 1
    flops = bmm(p, regions, d, n) + bmm(p, n, regions, d) + linear(p * n, d, s) + linear(p, d, s)
    if base == "sgr":
        flops += steps * (3 * linear(p * nodes, s, s) + bmm(p, nodes, s, nodes) + bmm(p, nodes, nodes, s))
    else:
        flops += linear(p * nodes, s, 1) + bmm(p, 1, nodes, s)
    return flops + linear(p, s, 1)


@pytest.mark.parametrize("base", ["sgr", "saf"])
def test_sgraf_bench_inference_flops_equal_a_hand_count(base: str) -> None:
    """SGR / SAF on the demo's dimensions, the bench ``infer_step``: local encoders (region Linear, BiGRU:
    both directions over every word), then every image of the batch scored against every caption."""
    cfg = _cfg(f"model.base={base}")
    spec = bench_spec(cfg, CPU, None)
    m = cfg.model
    n_img, n_cap, words = _batch_sizes(spec.batch)
    lengths = set(spec.batch["cap_lengths"].tolist())
    assert len(lengths) == 1  # one caption length: one group of pair scores
    n = lengths.pop()
    d = m.embed_size
    encoders = linear(n_img * m.num_regions, m.img_dim, d) + 2 * gru(words, m.word_dim, d)
    similarity = (_visual_sa(n_img, m.num_regions, d) + _text_sa(n_cap, n, d)
                  + _pairs(base, n_img * n_cap, n, m.num_regions, d, m.sim_dim, m.sgr_steps))
    assert count_flops(spec.infer_step) == encoders + similarity


@pytest.mark.parametrize("base", ["sgr", "saf"])
def test_sgraf_block_scoring_flops_equal_a_hand_count(base: str) -> None:
    """The pair scoring of SGR / SAF evaluation (``score_blocks``, which the bench's ``extra`` times): 5 images
    x 4 captions of lengths 3, 5, 5, 7 in blocks of 3 (4 blocks); each block recomputes the images' VisualSA,
    groups its captions by length (TextSA and pair costs per group)."""
    from zsk.tasks.retrieve.model_sgraf import LocalCaptions, score_blocks
    from zsk.tasks.retrieve.train import build_model

    cfg = _cfg(f"model.base={base}", "model.sim_dim=48", "model.embed_size=32")
    m = cfg.model
    d, shard, n_img, lengths = m.embed_size, 3, 5, [3, 5, 5, 7]
    model = build_model(cfg, 50, load_pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    img = torch.rand(n_img, m.num_regions, d, generator=g)
    caps = LocalCaptions([torch.rand(n, d, generator=g) for n in lengths])
    hand = 0
    for c0 in range(0, len(lengths), shard):
        block_lengths = lengths[c0 : c0 + shard]
        for i0 in range(0, n_img, shard):
            b_img = min(shard, n_img - i0)
            hand += _visual_sa(b_img, m.num_regions, d)
            for n in set(block_lengths):
                k = block_lengths.count(n)
                hand += _text_sa(k, n, d) + _pairs(base, k * b_img, n, m.num_regions, d, m.sim_dim, m.sgr_steps)
    assert count_flops(lambda: score_blocks(model, img, caps, shard, CPU)) == hand


def test_the_cuda_gru_kernel_is_counted() -> None:
    """On CUDA nn.GRU runs one fused cuDNN op (``aten._cudnn_rnn``: every layer, direction and time step)
    instead of the CPU's per-step addmm: called here on meta tensors as the demo's GRU text encoder calls it on
    packed captions (the bench's 32 captions of 12 words), its count must be the GRU's hand count. torch's
    counter has no formula for this op; zsk's must add one (`zsk bench` on a GPU would count no GRU FLOPs)."""
    cfg = _cfg()
    m = cfg.model
    caps, words = cfg.train.batch_size, 12
    meta = torch.device("meta")
    rnn = torch.nn.GRU(m.word_dim, m.embed_size, 1, batch_first=True, device=meta)
    packed = torch.empty(caps * words, m.word_dim, device=meta)  # packed: (sum of lengths, word_dim)
    hx = torch.empty(1, caps, m.embed_size, device=meta)

    def cudnn_gru() -> None:
        torch.ops.aten._cudnn_rnn(packed, rnn._flat_weights, 4, None, hx, None, 3, m.embed_size, 0, 1, False, 0.0,
                                  False, False, [caps] * words, None)  # mode 3: cuDNN's GRU

    assert count_flops(cudnn_gru) == gru(caps * words, m.word_dim, m.embed_size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vsepp_bench_inference_flops_on_cuda_equal_the_hand_count() -> None:
    """The VSE++ bench ``infer_step`` on a GPU (cuDNN GRU) has the CPU's hand count."""
    cfg = _cfg()
    spec = bench_spec(cfg, torch.device("cuda"), None)
    m = cfg.model
    n_img, _, words = _batch_sizes(spec.batch)
    hand = linear(n_img, m.num_regions * m.img_dim, m.embed_size) + gru(words, m.word_dim, m.embed_size)
    assert count_flops(spec.infer_step) == hand
