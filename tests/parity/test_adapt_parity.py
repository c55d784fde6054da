"""STAL (adapt) replayed against the official figures of licongguan/ILM-ASSL (tools/parity/adapt.py --save):
the same seeded weights and inputs through zsk alone; every output equal to the official code's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from adapt import LAYERS, NUM_CLASSES, seeded_state  # noqa: E402  (tools/parity, see conftest.py)
from common import assert_close as close  # noqa: E402
from common import load_figures  # noqa: E402

from zsk.tasks.adapt import losses as zl
from zsk.tasks.adapt import mixing as zm
from zsk.tasks.adapt import selection as zs
from zsk.tasks.adapt.config import Config, ConsConfig, ContraConfig
from zsk.tasks.adapt.data import LABELID_TO_TRAINID, SYNTHIA_TO_16, lut
from zsk.tasks.adapt.evaluate import segment_logits
from zsk.tasks.adapt.model import DeepLabV3Plus

OFFICIAL_COMMIT = "d10fd0f17a39d86e67d04234fdc150aabd54c9cc"  # licongguan/ILM-ASSL
FIG = Path(__file__).parent / "adapt"


@pytest.fixture(scope="module")
def figures():
    return load_figures(FIG, "adapt")


def t(f: dict, k: str) -> torch.Tensor:
    return torch.from_numpy(np.array(f[k]))


def test_figures_name_the_official_commit(figures):
    _, meta = figures
    assert meta["official_commit"] == OFFICIAL_COMMIT and meta["layers"] == list(LAYERS)
    assert all(r["verdict"] != "DIFFERENT" for r in meta["rows"])


def test_network_and_sliding_window(figures):
    f, meta = figures
    net = DeepLabV3Plus(NUM_CLASSES, LAYERS)
    seeded_state(net, meta["seed"])
    x = t(f, "net/input")
    net.eval()
    with torch.no_grad():
        out = net(x)
    for k in ("pred", "rep", "aux"):
        close(out[k], f[f"network eval {k}"])
    net.train()
    torch.manual_seed(meta["seed"] + 2)
    with torch.no_grad():
        out = net(x)
    for k in ("pred", "rep", "aux"):
        close(out[k], f[f"network train (BN batch stats, dropout) {k}"])
    cfg = Config()
    cfg.eval.window = (48, 48)
    net.eval()
    close(segment_logits(net, t(f, "eval/image"), cfg), f["sliding-window logits 48 / stride 32 (scale_crop_process)"],
          tol=1e-4)


def test_losses(figures):
    f, meta = figures
    seed = meta["seed"]
    main, aux, target = t(f, "sup/main"), t(f, "sup/aux"), t(f, "sup/target")
    for min_kept in (50, 100000):
        close(zl.supervised_loss(main, aux, target, 0.4, 0.7, min_kept), f[f"L_sup OHEM min_kept={min_kept}"])
    for sample in (False, True):
        torch.manual_seed(seed + 4)
        z = zl.consistency_loss(main, t(f, "cons/conf"), t(f, "cons/pseudo"), ConsConfig(gamma=2.0, sample=sample),
                                t(f, "cons/class_conf"))
        close(z, f[f"L_cons sample={sample}"])
    c = 5
    oh_l = zl.label_onehot(t(f, "contra/lab"), c).long()
    oh_u = zl.label_onehot(t(f, "contra/pu"), c).long()
    bank0 = t(f, "contra/bank")
    for indexing in ("official_code", "by_class"):
        bank = zl.MemoryBank(c, 30000, 30000)
        bank.queues = [b.clone() for b in bank0]
        torch.manual_seed(seed + 6)
        z = zl.contrastive_loss(t(f, "contra/reps"), oh_l, oh_u, t(f, "contra/prob_l"), t(f, "contra/prob_u"),
                                t(f, "contra/low"), t(f, "contra/high"),
                                ContraConfig(low_rank=1, high_rank=4, num_queries=16, num_negatives=4, negatives="official_code",
                                             indexing=indexing), bank, t(f, "contra/reps_t"))
        if indexing == "official_code":
            close(z, f["L_contra indexing=official_code"])
            close(torch.cat(bank.queues), f["L_contra memory bank after push"])
        else:
            close(z, f["contra/by_class"])
            assert abs(float(z) - float(f["L_contra indexing=official_code"])) > 1e-3


def test_mixing_and_selection(figures):
    f, _ = figures
    s_logits, gt = t(f, "mix/s_logits"), t(f, "mix/gt")
    close(zm.category_confidence(s_logits, gt, NUM_CLASSES), f["class confidence (cal_category_confidence)"])
    zi, zlab = zm.copy_paste(t(f, "mix/imgs"), gt, t(f, "mix/pimgs"), t(f, "mix/plab"), [3, 5, 13])
    close(zi, f["ACP image (dynamic_copy_paste)"])
    close(zlab, f["ACP label (dynamic_copy_paste)"])
    bank = torch.zeros(NUM_CLASSES, 5)
    zm.update_bank(bank, t(f, "mix/t_logits"), [1, 3], 0.01)
    close(bank, f["cutmix bank (update_cutmix_bank)"])
    boxes = {zm.cutmix_box(f["mix/pred"], 7, 0.005, np.random.default_rng(s)) for s in range(20)}
    assert tuple(int(v) for v in f["ACM box (generate_cutmix_mask, no_pad/no_slim)"]) in boxes
    close(float(zs.pixel_entropy(t(f, "al/logit")).mean()), f["image uncertainty U(x) (prediction_uncertainty)"])
    cities = list(zs.CITYSCAPES_TRAIN_CITIES)
    first = Counter(cities[int(i)] for i in f["al/first_cities"])
    for k in (35, 120):
        q = zs.city_quotas(k, dict(zs.CITYSCAPES_TRAIN_CITIES), first)
        close(np.array([q[c] for c in cities]), f[f"city quotas K={k} (every_city_num)"], tol=0)
    ids = np.arange(256)
    close(lut(LABELID_TO_TRAINID)[ids], f["GTAV labelId -> trainId"], tol=0)
    close(lut(SYNTHIA_TO_16)[ids], f["SYNTHIA id -> 16-class id (official_code map)"], tol=0)


def test_poly_learning_rate(figures):
    f, _ = figures
    from zsk.core.trainer import lr_factor
    from zsk.tasks.adapt.config import TrainConfig

    tcfg = TrainConfig(epochs=4)
    ours = [[0.0025 * lr_factor(i, 20, tcfg, 0.0025), 0.025 * lr_factor(i, 20, tcfg, 0.025)] for i in range(20)]
    close(np.array(ours), f["poly LR of the training optimizer (lr_helper)"], tol=1e-12)
