"""SATS, MiB and PLOP formulas against explicit loops written from the papers' equations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zsk.tasks.css.losses import (
    entropy_pseudo_labels,
    median_thresholds,
    plop_entropy,
    resize_labels,
    sats_loss,
    sats_stage_loss,
    stage_grids,
    unbiased_kd,
)


def _attn(b: int, h: int, n: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, n, m, generator=g, dtype=torch.float64).softmax(-1)


def _sats_reference(attn, attn_old, labels, official_reshape=False):  # noqa: ANN001, ANN202
    """Paper Sec. 3.3 by loops: per image, per class c (0 and 255 skipped), per head, the L2 distance of the
    mean attention rows; averaged over heads, then classes; images without a class give 0."""
    b, h, n, m = attn.shape
    total = 0.0
    for j in range(b):
        lab = labels[j].reshape(-1)
        classes = [int(c) for c in lab.unique() if int(c) not in (0, 255)]
        img = 0.0
        for c in classes:
            pos = (lab == c).nonzero().flatten().tolist()
            head_sum = 0.0
            for hh in range(h):
                if official_reshape:  # row p, head hh of the [B, N, h, M] reshape of the raw buffer
                    flat_new, flat_old = attn[j].reshape(-1, m), attn_old[j].reshape(-1, m)
                    rows_new = torch.stack([flat_new[p * h + hh] for p in pos])
                    rows_old = torch.stack([flat_old[p * h + hh] for p in pos])
                else:
                    rows_new, rows_old = attn[j, hh, pos], attn_old[j, hh, pos]
                head_sum += float(torch.sqrt(((rows_new.mean(0) - rows_old.mean(0)) ** 2).sum()))
            img += head_sum / h
        total += img / len(classes) if classes else 0.0
    return total / b


def test_sats_stage_loss_matches_the_per_class_per_head_loops() -> None:
    attn, old = _attn(3, 2, 16, 5, 0), _attn(3, 2, 16, 5, 1)
    labels = torch.tensor([[0, 1, 1, 2] * 4, [0] * 16, [255, 3, 3, 0] * 4]).reshape(3, 4, 4)
    ours = float(sats_stage_loss(attn, old, labels, "class", "per_head"))
    assert math.isclose(ours, _sats_reference(attn, old, labels), rel_tol=1e-9)
    quirk = float(sats_stage_loss(attn, old, labels, "class", "official_code"))
    assert math.isclose(quirk, _sats_reference(attn, old, labels, official_reshape=True), rel_tol=1e-9)
    assert abs(quirk - ours) > 1e-6  # two heads: the reshape mixes heads and positions


def test_head_layouts_agree_for_one_head_and_zero_for_equal_maps() -> None:
    attn, old = _attn(2, 1, 16, 4, 2), _attn(2, 1, 16, 4, 3)
    labels = torch.randint(0, 4, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    a = sats_stage_loss(attn, old, labels, "class", "per_head")
    b = sats_stage_loss(attn, old, labels, "class", "official_code")
    assert torch.allclose(a, b)
    assert float(sats_stage_loss(attn, attn.clone(), labels)) == 0.0


def test_global_and_no_pooling_ablations() -> None:
    attn, old = _attn(2, 2, 9, 3, 4), _attn(2, 2, 9, 3, 5)
    labels = torch.zeros(2, 3, 3, dtype=torch.long)
    gp = sum(float((attn[j, hh].mean(0) - old[j, hh].mean(0)).norm()) for j in range(2) for hh in range(2)) / 4
    assert math.isclose(float(sats_stage_loss(attn, old, labels, "global")), gp, rel_tol=1e-9)
    np_ = sum(float((attn[j, hh] - old[j, hh]).norm(dim=-1).mean()) for j in range(2) for hh in range(2)) / 4
    assert math.isclose(float(sats_stage_loss(attn, old, labels, "none")), np_, rel_tol=1e-9)


def test_stage_grids_and_label_resize_follow_pil_nearest() -> None:
    assert stage_grids(512, 512) == [(128, 128), (64, 64), (32, 32), (16, 16)]
    assert stage_grids(64, 96) == [(16, 24), (8, 12), (4, 6), (2, 3)]
    lab = torch.arange(16).reshape(1, 4, 4)
    # PIL NEAREST samples pixel centres: output i takes input floor((i + 0.5) * 2) = 2i + 1
    assert resize_labels(lab, (2, 2)).tolist() == [[[5, 7], [13, 15]]]


def test_sats_loss_averages_the_stages() -> None:
    labels = torch.randint(0, 3, (1, 64, 64), generator=torch.Generator().manual_seed(1))
    grids = stage_grids(64, 64)
    new = [_attn(1, h, gh * gw, 4, i) for i, ((gh, gw), h) in enumerate(zip(grids, (1, 2, 5, 8), strict=True))]
    old = [_attn(1, a.shape[1], a.shape[2], 4, 10 + i) for i, a in enumerate(new)]
    per_stage = [sats_stage_loss(a, o, resize_labels(labels, g)) for a, o, g in zip(new, old, grids, strict=True)]
    assert torch.allclose(sats_loss(new, old, labels), sum(per_stage) / 4)


def test_unbiased_kd_by_pixel_loop() -> None:
    g = torch.Generator().manual_seed(0)
    new, old = torch.randn(2, 6, 3, 3, generator=g, dtype=torch.float64), torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    ref = 0.0
    for b in range(2):
        for y in range(3):
            for x in range(3):
                p = torch.softmax(new[b, :, y, x], 0)
                q = torch.softmax(old[b, :, y, x], 0)
                bg = torch.log(p[0] + p[4] + p[5])  # background absorbs the new classes 4, 5
                ref += -(q[0] * bg + sum(q[c] * torch.log(p[c]) for c in range(1, 4))) / 4
    assert math.isclose(float(unbiased_kd(new, old)), float(ref) / 18, rel_tol=1e-9)


def test_plop_entropy_of_uniform_and_one_hot() -> None:
    c = 5
    uniform = torch.full((1, c, 1, 1), 1 / c)
    # -(1/log C) * mean_c (1/C) log(1/C) = 1/C (a mean over classes, not the normalised entropy 1)
    assert math.isclose(float(plop_entropy(uniform)), 1 / c, rel_tol=1e-6)
    onehot = F.one_hot(torch.tensor([[[2]]]), c).permute(0, 3, 1, 2).float()
    assert float(plop_entropy(onehot)) < 1e-6


def test_median_thresholds_hand_worked() -> None:
    hist = torch.zeros(3, 10)
    hist[0, 0], hist[0, 1] = 2, 2        # total 4, half 2 reached at the end of bin 0: 0 + 2/2 * 0.1 = 0.1
    hist[1, 3], hist[1, 5] = 1, 3        # half 2: bin 3 holds 1, bin 5: 0.5 + (2 - 1)/3 * 0.1
    ours = median_thresholds(hist, min_threshold=0.001)
    assert torch.allclose(ours, torch.tensor([0.1, 0.5 + 0.1 / 3, 0.001]), atol=1e-6)  # class 2: no pixel -> floor
    # PLOP's loop adds the bin index, not the count, to the running sum
    hist[2, :3] = 2                      # half 3: correct 0.1 + (3 - 2)/2 * 0.1 = 0.15; official running 0, 1 -> 0.2 + 2/2 * 0.1
    quirk = median_thresholds(hist, min_threshold=0.001, rule="official_code")
    assert math.isclose(float(median_thresholds(hist)[2]), 0.15, rel_tol=1e-6)
    assert math.isclose(float(quirk[2]), 0.3, rel_tol=1e-6)
    # class 1: the official loop never meets half (running 0, 0, 1, 3, ...), runs off the end -> -inf -> the floor
    assert math.isclose(float(quirk[1]), 0.001, rel_tol=1e-6) and math.isclose(float(quirk[0]), 0.1, rel_tol=1e-6)


def test_entropy_pseudo_labels() -> None:
    old = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 4)
    labels = torch.tensor([[[0, 0, 0, 3]]])  # class 3 is new (num_old = 3)
    thr = torch.full((4,), 0.05)
    out, background, valid = entropy_pseudo_labels(labels, old, thr, math.log(4), 3)
    assert out.tolist() == [[[0, 1, 255, 3]]]  # confident old predictions kept, uncertain -> 255, new GT kept
    assert background.tolist() == [[[True, True, True, False]]]


def test_feature_pooling_ablation_by_loops() -> None:
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 4, s, s, generator=g, dtype=torch.float64) for s in (8, 4, 2, 1)]
    old = [torch.randn(2, 4, s, s, generator=g, dtype=torch.float64) for s in (8, 4, 2, 1)]
    labels = torch.tensor([[1, 1, 0, 2] * 8, [0] * 32]).reshape(2, 1, 32).expand(2, 32, 32).contiguous()
    ref = 0.0
    for f, o in zip(feats, old, strict=True):
        lab = resize_labels(labels, f.shape[-2:])
        batch = 0.0
        for j in range(2):
            classes = [int(c) for c in lab[j].unique() if int(c) not in (0, 255)]
            per = [float((f[j][:, lab[j] == c].mean(1) - o[j][:, lab[j] == c].mean(1)).norm()) for c in classes]
            batch += sum(per) / len(per) if per else 0.0
        ref += batch / 2
    from zsk.tasks.css.losses import sats_feature_loss

    assert math.isclose(float(sats_feature_loss(feats, old, labels)), ref / 4, rel_tol=1e-9)
