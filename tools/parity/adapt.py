"""Parity of zsk adapt (STAL) against the official code, licongguan/ILM-ASSL (formerly STAL).

    python tools/parity/adapt.py --official /path/to/ILM-ASSL [--save tests/parity/adapt]

Imports the official modules from the checkout (core/models, core/utils, core/active_learning, eval.py),
builds both sides with the same seeded weights and inputs, and prints ``component | max abs diff | verdict``.
``--save`` writes the inputs and the official outputs that tests/parity/test_adapt_parity.py replays without
the official code. The network is the official DeepLabv3+ with a shortened deep-stem ResNet (blocks 1, 1, 2, 3:
every module type, OS8 and the multi-grid of ResNet-101 at a CPU-friendly size).
"""

from __future__ import annotations

import importlib.util
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import Report, add_official, official_commit, parser  # noqa: E402

LAYERS = (1, 1, 2, 3)
NUM_CLASSES = 19


def seeded_state(model: torch.nn.Module, seed: int) -> None:
    """Fill every float tensor of the state dict reproducibly (both sides get the same numbers): BN scales
    near 1, variances in [0.5, 1.5), everything else N(0, 0.05^2)."""
    state = model.state_dict()
    for i, (name, t) in enumerate(state.items()):
        if not t.dtype.is_floating_point:
            continue
        g = torch.Generator().manual_seed(seed * 10_007 + i)
        if name.endswith("running_var"):
            value = torch.rand(t.shape, generator=g) + 0.5
        elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight")) or ".1.weight" in name and t.dim() == 1:
            value = 1 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            value = 0.05 * torch.randn(t.shape, generator=g)
        state[name] = value
    model.load_state_dict(state)


def zsk_net():
    from zsk.tasks.adapt.model import DeepLabV3Plus

    return DeepLabV3Plus(NUM_CLASSES, LAYERS)


def official_net():
    from core.models.model_helper import ModelBuilder

    cfg = {"num_classes": NUM_CLASSES, "sync_bn": False, "aux_loss": {"aux_plane": 1024, "loss_weight": 0.4},
           "encoder": {"type": "core.models.resnet.ResNet",
                       "kwargs": {"multi_grid": True, "zero_init_residual": True, "fpn": True,
                                  "replace_stride_with_dilation": [False, True, True]}},
           "decoder": {"type": "core.models.decoder.dec_deeplabv3_plus",
                       "kwargs": {"inner_planes": 256, "dilations": [12, 24, 36]}}}
    from core.models.resnet import Bottleneck

    cfg["encoder"]["kwargs"].update(block=Bottleneck, layers=list(LAYERS))
    return ModelBuilder(cfg)


def load_script(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(root: Path, seed: int) -> Report:
    import adapt_shims

    adapt_shims.install(root)
    from core.utils import loss_helper, utils

    from zsk.tasks.adapt import data as zdata
    from zsk.tasks.adapt import losses as zl
    from zsk.tasks.adapt import mixing as zm
    from zsk.tasks.adapt import selection as zs
    from zsk.tasks.adapt.config import Config, ConsConfig, ContraConfig
    from zsk.tasks.adapt.evaluate import segment_logits

    rep = Report("adapt", official_commit(root))
    rep.keep("seed", np.array(seed))

    # ---- network: eval and train mode (dropout masks from the same seed)
    off, ours = official_net(), zsk_net()
    seeded_state(off, seed)
    seeded_state(ours, seed)
    x = torch.randn(2, 3, 49, 49, generator=torch.Generator().manual_seed(seed + 1))
    rep.keep("net/input", x)
    off.eval(), ours.eval()
    with torch.no_grad():
        a, b = off(x), ours(x)
    for k in ("pred", "rep", "aux"):
        rep.compare(f"network eval {k}", b[k], a[k])
    off.train(), ours.train()
    with torch.no_grad():
        torch.manual_seed(seed + 2)
        a = off(x)
        torch.manual_seed(seed + 2)
        b = ours(x)
    for k in ("pred", "rep", "aux"):
        rep.compare(f"network train (BN batch stats, dropout) {k}", b[k], a[k])

    # ---- L_sup: OHEM on main + 0.4 aux
    g = torch.Generator().manual_seed(seed + 3)
    main, aux = torch.randn(2, 5, 12, 12, generator=g) * 2, torch.randn(2, 5, 12, 12, generator=g) * 2
    target = torch.randint(0, 5, (2, 12, 12), generator=g)
    target[:, :2] = 255
    rep.keep("sup/main", main), rep.keep("sup/aux", aux), rep.keep("sup/target", target)
    for min_kept in (50, 100000):
        crit = loss_helper.CriterionOhem(0.4, thresh=0.7, min_kept=min_kept)
        rep.compare(f"L_sup OHEM min_kept={min_kept}", zl.supervised_loss(main, aux, target, 0.4, 0.7, min_kept),
                    crit([main, aux], target.clone()))

    # ---- L_cons: confidence weights, class-sampling mask (the same global RNG draws)
    conf = torch.rand(2, 12, 12, generator=g)
    pseudo = torch.randint(0, 5, (2, 12, 12), generator=g)
    pseudo[0, 0] = 255
    class_conf = torch.rand(5, generator=g)
    rep.keep("cons/conf", conf), rep.keep("cons/pseudo", pseudo), rep.keep("cons/class_conf", class_conf)
    for sample in (False, True):
        crit = loss_helper.Criterion_cons(2, sample=sample)
        torch.manual_seed(seed + 4)
        o = crit(main, conf, pseudo.clone(), class_conf.clone())
        torch.manual_seed(seed + 4)
        z = zl.consistency_loss(main, conf, pseudo, ConsConfig(gamma=2.0, sample=sample), class_conf)
        rep.compare(f"L_cons sample={sample}", z, o)

    # ---- L_contra: U2PL memory-bank InfoNCE (one labelled + one unlabelled image, 5 classes)
    c, dim, hs = 5, 8, 6
    gc = torch.Generator().manual_seed(seed + 5)
    reps, reps_t = torch.randn(2, dim, hs, hs, generator=gc), torch.randn(2, dim, hs, hs, generator=gc)
    lab = torch.randint(0, c, (1, hs, hs), generator=gc)
    lab[0, 0, 0] = 255
    pu = torch.randint(0, c, (1, hs, hs), generator=gc)
    lab[lab == 1], pu[pu == 1] = 0, 0  # class 1 is absent: the official indexing pairs class 2's anchors with bank 1
    prob_l = torch.softmax(torch.randn(1, c, hs, hs, generator=gc) * 3, 1)
    prob_u = torch.softmax(torch.randn(1, c, hs, hs, generator=gc) * 3, 1)
    low = (torch.rand(2, 1, hs, hs, generator=gc) > 0.3).float()
    high = (torch.rand(2, 1, hs, hs, generator=gc) > 0.3).float()
    bank0 = [torch.randn(7, dim, generator=gc) for _ in range(c)]
    for k, v in {"reps": reps, "reps_t": reps_t, "lab": lab, "pu": pu, "prob_l": prob_l, "prob_u": prob_u,
                 "low": low, "high": high, "bank": torch.stack(bank0)}.items():
        rep.keep(f"contra/{k}", v)
    oh_l = utils.label_onehot(lab, c).long()
    oh_u = utils.label_onehot(pu, c).long()
    cfg_off = {"current_class_threshold": 0.3, "current_class_negative_threshold": 1, "low_rank": 1, "high_rank": 4,
               "temperature": 0.5, "num_queries": 16, "num_negatives": 4}
    for indexing in ("official_code", "by_class"):
        memobank = [[t.clone()] for t in bank0]
        ptr = [torch.zeros(1, dtype=torch.long) for _ in range(c)]
        torch.manual_seed(seed + 6)
        _, o = loss_helper.compute_contra_memobank_loss(reps, oh_l, oh_u, prob_l, prob_u, low, high, cfg_off, memobank,
                                                        ptr, [30000] * c, reps_t)
        bank = zl.MemoryBank(c, 30000, 30000)
        bank.queues = [t.clone() for t in bank0]
        zcfg = ContraConfig(low_rank=1, high_rank=4, num_queries=16, num_negatives=4, negatives="official_code", indexing=indexing)
        torch.manual_seed(seed + 6)
        z = zl.contrastive_loss(reps, oh_l, oh_u, prob_l, prob_u, low, high, zcfg, bank, reps_t)
        name = f"L_contra indexing={indexing}"
        if indexing == "official_code":
            rep.compare(name, z, o)
            rep.compare("L_contra memory bank after push", torch.cat(bank.queues), torch.cat([m[0] for m in memobank]))
        else:
            diff = float(abs(z - o))
            rep.keep("contra/by_class", z)
            rep.note(name, f"differs by {diff:.3g} (zsk fix: anchors of class c meet negatives of class c; "
                           "class 1 is absent from the batch)")

    # ---- class confidence, ACP, cutmix bank, ACM box
    gm = torch.Generator().manual_seed(seed + 7)
    s_logits = torch.randn(2, NUM_CLASSES, 10, 10, generator=gm)
    gt = torch.randint(0, NUM_CLASSES, (2, 10, 10), generator=gm)
    gt[:, 0] = 255
    rep.keep("mix/s_logits", s_logits), rep.keep("mix/gt", gt)
    rep.compare("class confidence (cal_category_confidence)", zm.category_confidence(s_logits, gt, NUM_CLASSES),
                utils.cal_category_confidence(s_logits, s_logits, gt, None, NUM_CLASSES))
    imgs, pimgs = torch.randn(2, 3, 10, 10, generator=gm), torch.randn(2, 3, 10, 10, generator=gm)
    plab = torch.randint(0, NUM_CLASSES, (2, 10, 10), generator=gm)
    plab[1] = 0
    rep.keep("mix/imgs", imgs), rep.keep("mix/pimgs", pimgs), rep.keep("mix/plab", plab)
    oi, ol = utils.dynamic_copy_paste(torch.cat([imgs, pimgs], 1), torch.stack([gt, plab], 1), [3, 5, 13])
    zi, zlab = zm.copy_paste(imgs, gt, pimgs, plab, [3, 5, 13])
    rep.compare("ACP image (dynamic_copy_paste)", zi, oi)
    rep.compare("ACP label (dynamic_copy_paste)", zlab, ol)
    t_logits = torch.randn(2, NUM_CLASSES, 16, 16, generator=gm)
    t_logits[1, 7, :4] += 6.0
    rep.keep("mix/t_logits", t_logits)
    ob = utils.update_cutmix_bank(torch.zeros(NUM_CLASSES, 5), t_logits, 1, 3, 0.01)
    zb = torch.zeros(NUM_CLASSES, 5)
    zm.update_bank(zb, t_logits, [1, 3], 0.01)
    rep.compare("cutmix bank (update_cutmix_bank)", zb, ob)
    pred = np.zeros((32, 32), dtype=np.int64)
    pred[3:9, 4:20] = 7
    pred[20:30, 2:5] = 7
    rep.keep("mix/pred", pred)
    random.seed(seed)
    om = utils.generate_cutmix_mask(pred, 7, 0.005, no_pad=True, no_slim=True)
    # the official draw shuffles the regions with Python's random; zsk draws with its own generator, so the box
    # is compared for the region the official draw picked (both regions qualify)
    ys, xs = np.nonzero(om.numpy())
    box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    cands = [zm.cutmix_box(pred, 7, 0.005, np.random.default_rng(s)) for s in range(20)]
    rep.compare("ACM box (generate_cutmix_mask, no_pad/no_slim)", np.array(box), np.array(min(
        cands, key=lambda b: sum(abs(int(u) - int(v)) for u, v in zip(b, box, strict=True)))))

    # ---- active-learning selection
    al_mod = load_script(root / "core" / "active_learning" / "Semi-sup_active_pu.py", "stal_semi_sup_active_pu")
    logit = torch.randn(1, NUM_CLASSES, 8, 8, generator=gm) * 2
    rep.keep("al/logit", logit)
    scores: dict[str, float] = {}
    al_mod.prediction_uncertainty(logit.clone(), "img", scores)
    rep.compare("image uncertainty U(x) (prediction_uncertainty)", float(zs.pixel_entropy(logit).mean()), scores["img"])
    sel = load_script(root / "core" / "active_learning" / "img_select_based_entropy.py", "stal_img_select")
    rng = np.random.default_rng(seed)
    cities = list(zs.CITYSCAPES_TRAIN_CITIES)
    first = [cities[int(i)] for i in rng.integers(0, len(cities), 30)]
    rep.keep("al/first_cities", np.array([cities.index(c) for c in first]))
    from collections import Counter

    with tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp) / "first.txt"
        lst.write_text("".join(f"leftImg8bit/train/{c}/{c}_000000_000019_leftImg8bit.png\n" for c in first))
        sel.first_labeled_txt = str(lst)
        for k in (35, 120):
            sel.sec_num = k
            off_q = sel.every_city_num()
            ours_q = zs.city_quotas(k, dict(zs.CITYSCAPES_TRAIN_CITIES), Counter(first))
            rep.compare(f"city quotas K={k} (every_city_num)", np.array([ours_q[c] for c in cities]),
                        np.array([off_q[c] for c in cities]))

    # ---- evaluation: sliding windows (scale_crop_process) with the shortened network
    ev = load_script(root / "eval.py", "stal_eval")
    ours.eval(), off.eval()
    image = torch.randn(3, 40, 150, generator=gm)
    rep.keep("eval/image", image)
    with torch.no_grad():
        o = ev.scale_crop_process(off, image[None], NUM_CLASSES, 48, 48, 40, 150)
    cfg = Config()
    cfg.eval.window = (48, 48)
    rep.compare("sliding-window logits 48 / stride 32 (scale_crop_process)", segment_logits(ours, image, cfg), o,
                tol=1e-4)

    # ---- label maps of the dataset
    line = "leftImg8bit/train/gta5/gta5_00042_000019_leftImg8bit.png"
    with tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp) / "cityscapes_val.txt"
        lst.write_text(line + "\n")
        from core.dataset.cityscapes_semi_cp import city_dset

        dset = city_dset(tmp, str(lst), None, 0, 1, split="val")
        ours_rel = zdata.cityscapes_label_path(Path(tmp), line).relative_to(tmp).as_posix()
    same = ours_rel == dset.list_sample[0][1]
    rep.compare("label path of a list line", float(not same), 0.0)
    ids = np.arange(256)
    # a GTAV frame in STAL's renamed layout through the official dataset (2048 x 1024 Lanczos resize, nearest
    # label resize, labelId map, normalisation) and zsk's reader
    from core.dataset import augmentation as aug

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        roots = zdata.write_sample(t / "s", num_source=1, num_train=1, num_val=1, size=(40, 60), seed=seed)
        img_dir, lab_dir = t / "leftImg8bit" / "train" / "gta5", t / "gtFine" / "train" / "gta5"
        img_dir.mkdir(parents=True)
        lab_dir.mkdir(parents=True)
        (img_dir / "gta5_00001_000019_leftImg8bit.png").write_bytes((roots["gtav"] / "images" / "00001.png").read_bytes())
        (lab_dir / "gta5_00001_000019_gtFine_labelTrainIds.png").write_bytes(
            (roots["gtav"] / "labels" / "00001.png").read_bytes())
        lst = t / "cityscapes_train.txt"
        lst.write_text("leftImg8bit/train/gta5/gta5_00001_000019_leftImg8bit.png\n")
        trs = aug.Compose([aug.ToTensor(), aug.Normalize(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])])
        o_img, o_lab = city_dset(tmp, str(lst), trs, 0, 1, split="val")[0]
        dcfg = zdata.DataConfig(root=tmp)
        z_img, z_lab = zdata.load_sample(zdata.resolve_line(lst.read_text().strip(), dcfg, t, "list"), dcfg)
    rep.compare("GTAV frame read, resized, mapped, normalised (city_dset)", z_img[0], o_img, tol=1e-4, keep=False)
    rep.compare("GTAV label read, resized, mapped (city_dset)", z_lab[0, 0], o_lab, keep=False)
    rep.compare("GTAV labelId -> trainId", zdata.lut(zdata.LABELID_TO_TRAINID)[ids],
                np.array([dset.id_to_trainid.get(int(i), 255) for i in ids]))
    rep.compare("SYNTHIA id -> 16-class id (official_code map)", zdata.lut(zdata.SYNTHIA_TO_16)[ids],
                np.array([dset.id_to_trainid_synthia.get(int(i), 255) for i in ids]))
    # ---- poly LR: the scheduler steps `optimizer_start`, whose param groups are the training optimizer's
    # dicts (torch keeps the dicts it is given), so the training LR does decay (U2PL issue #56 asks)
    from core.utils.lr_helper import get_optimizer, get_scheduler

    from zsk.core.trainer import lr_factor
    from zsk.tasks.adapt.config import TrainConfig

    mods = [torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]
    params_list = [dict(params=mods[0].parameters(), lr=0.0025), dict(params=mods[1].parameters(), lr=0.025)]
    optim_cfg = {"type": "SGD", "kwargs": {"lr": 0.0025, "momentum": 0.9, "weight_decay": 0.0001}}
    optimizer = get_optimizer(params_list, optim_cfg)
    optimizer_start = get_optimizer(params_list, optim_cfg)
    sched = get_scheduler({"epochs": 4, "lr_scheduler": {"mode": "poly", "kwargs": {"power": 0.9}}}, 5,
                          optimizer_start)
    used = []
    for _ in range(20):
        sched.step()
        used.append([g["lr"] for g in optimizer.param_groups])
    tcfg = TrainConfig(epochs=4)
    ours_lr = [[0.0025 * lr_factor(i, 20, tcfg, 0.0025), 0.025 * lr_factor(i, 20, tcfg, 0.025)] for i in range(20)]
    rep.compare("poly LR of the training optimizer (lr_helper)", np.array(ours_lr), np.array(used), tol=1e-12)
    rep.note("EMA teacher decay", "tested against the formula min(1 - 1/(i+1), 0.99) (tests/tasks/adapt)")
    rep.note("sample_from_bank / query-class draws", "distribution only: the official code draws with NumPy's "
             "global RNG, zsk with a per-step generator (tests/tasks/adapt checks the softmax probabilities)")
    return rep


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    root = add_official(args.official)
    rep = run(root, args.seed)
    rep.print()
    rep.save(args.save, {"seed": args.seed, "layers": list(LAYERS)})
    sys.exit(0 if rep.ok else 1)


if __name__ == "__main__":
    main()
