"""contrast (MetAug, Li et al., ICML 2022) against the official code jiangmengli/metaug, fp32 on the CPU.

    python tools/parity/contrast.py --official /path/to/metaug [--save tests/parity/contrast]

Imported from the checkout (never copied): `models/alexnet_MetAug.py` (AlexNet-half views, the fast-weight
forward, `metagen_net`), `NCE/NCEAverage_MetAug.py` (memory bank scores and update), `NCE/NCECriterion_MetAug.py`
(`CircleLoss`, the OUCL), `util.py` (`margin_injection_loss_calc`, `adjust_learning_rate`), `models/LinearModel.py`
(the conv/fc linear classifiers), `dataset.py` (`RGB2Lab`, needs scikit-image: installed into a scratch folder
put on sys.path with --site) and `train_MetAug.py`'s `train()`: one whole iteration (encoder step + second-order
meta step) on both sides from the same weights, inputs and negatives, zsk with `model.memory_update: official`.
The full iteration runs on AlexNet-half modules of reduced width (the official forward code is width-agnostic;
its constructors hard-code the paper's widths) on 64-pixel inputs; the forward passes run at full size.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contrast_shims  # noqa: E402
from common import Report, official_commit, parser  # noqa: E402

from zsk.core.bench import BenchSpec, trainer_step  # noqa: E402
from zsk.core.recipe import load_recipe, parse_config  # noqa: E402
from zsk.core.stages import stage_config  # noqa: E402
from zsk.core.trainer import lr_factor  # noqa: E402
from zsk.tasks.contrast.config import Config  # noqa: E402
from zsk.tasks.contrast.data import to_lab_tensor  # noqa: E402
from zsk.tasks.contrast.losses import contrast_scores, margin_injection_loss, oucl_loss  # noqa: E402
from zsk.tasks.contrast.model import VIEWS, MemoryBank, MultiViewEncoder  # noqa: E402
from zsk.tasks.contrast.train import MetaStep, MetAugStep, build_model, with_epoch_milestones  # noqa: E402

ENC = {"l": "l_to_ab", "ab": "ab_to_l", "ori": "ori"}
TINY = ["model.channels=[4,8,8,8,8]", "model.fc_dim=16", "model.feat_dim=8", "model.generator_hidden=16",
        "model.nce_k=5", "model.memory_update=official", "data.image_size=64", "data.root=."]
ITERATION_CASES = {"defaults": {}, "strong": {"beta": 0.5, "eta": 1.0}}  # train.loss overrides
# "strong" weights the augmented and margin terms 5e4 / 1e11 times the defaults: the second-order path then
# amplifies fp32 rounding (zsk's own fp32 and fp64 iterations differ by ~2e-2 there, see the precision row)
CASE_TOL = {"defaults": 1e-5, "strong": 1e-3}
B, N_DATA, K = 4, 16, 5


def full_encoder(seed: int) -> MultiViewEncoder:
    """zsk's full-size AlexNet-half views, seeded (the replay test rebuilds them from the seed)."""
    torch.manual_seed(seed)
    return MultiViewEncoder("alexnet", (48, 128, 192, 192, 128), 2048, 128, 224)


def forward_input(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed + 1))


def official_encoder(mods: dict, ours: MultiViewEncoder):  # noqa: ANN201
    """The official MyAlexNetCMC with zsk's weights (names: encoder.module.<view>.<layer>)."""
    net = mods["alexnet"].MyAlexNetCMC(torch.device("cpu"), 128)
    state = {f"encoder.module.{k}": v for k, v in ours.state_dict().items()}
    net.load_state_dict(state)
    return net


def compare_forward(rep: Report, mods: dict, seed: int) -> None:
    ours = full_encoder(seed)
    off = official_encoder(mods, ours)
    x = forward_input(seed)
    for train in (True, False):
        ours.train(train)
        off.train(train)
        tag = "train-mode BN" if train else "eval-mode BN"
        for layer in (5, 6, 8):
            with torch.no_grad():
                a = ours(x, layer)
                b = off(x, False, layer)
            for v, fa, fb in zip(VIEWS, a, b, strict=True):
                rep.compare(f"encoder {v} layer {layer} ({tag})", fa, fb)
    # the virtual encoder: official fast-weight forward vs torch.func.functional_call on zsk's module
    ours.train()
    g = torch.Generator().manual_seed(seed + 2)
    fast = {k: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for k, p in ours.named_parameters()}
    buffers = {k: b.clone() for k, b in ours.named_buffers()}
    with torch.no_grad():
        a = functional_call(ours, {**fast, **buffers}, (x, 8))
        b = off(x, {f"encoder.module.{k}": v for k, v in fast.items()})
    for v, fa, fb in zip(VIEWS, a, b, strict=True):
        rep.compare(f"virtual encoder {v} (fast weights)", fa, fb)


def compare_losses(rep: Report, mods: dict, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 3)
    scores = [torch.rand(5, 9, 1, generator=g) * 2 - 1 for _ in range(6)]
    rep.keep("in/scores", torch.stack(scores))
    for name, over in (("defaults", {}), ("margins m=0.25", {"delta_enable_gh": "yes"}),
                       ("alpha yes (a no-op there)", {"alpha_enable_gh": "yes"}), ("gamma 8", {"gama_gh": 8})):
        crit = mods["criterion"].CircleLoss(contrast_shims.options(**over))
        b = crit(*scores)
        a = oucl_loss([s.squeeze(2) for s in scores], gamma=float(over.get("gama_gh", 16)),
                      margins=over.get("delta_enable_gh") == "yes")
        rep.compare(f"OUCL ({name})", a, b)
    aug = [torch.rand(5, 9, 1, generator=g) * 2 - 1 for _ in range(12)]
    rep.keep("in/aug_scores", torch.stack(aug))
    # util's argument order: the 12 augmented sets (mtl x4, mtab x4, mtori x4), then the 6 original directions
    for mode in ("large", "small", "mean"):
        b = mods["util"].margin_injection_loss_calc(*aug, *scores, mode, None)
        a = margin_injection_loss([s.squeeze(2) for s in aug], [s.squeeze(2) for s in scores], mode, 1e-4)
        rep.compare(f"margin injection L_MI ({mode})", a, b)


def compare_memory(rep: Report, mods: dict, seed: int) -> None:
    torch.manual_seed(seed + 4)
    bank = MemoryBank(N_DATA, 8, 0.5)
    nce = mods["nce"].NCEAverage(8, N_DATA, K, 0.07, 0.5)
    for v in VIEWS:
        getattr(nce, f"memory_{v}").copy_(bank.bank(v))
    g = torch.Generator().manual_seed(seed + 5)
    feats = [torch.nn.functional.normalize(torch.randn(B, 8, generator=g), dim=1) for _ in VIEWS]
    y = torch.tensor([1, 4, 9, 15])
    idx = torch.randint(0, N_DATA, (B, K + 1), generator=g)
    idx[:, 0] = y
    rep.keep("in/memory_idx", idx)
    a = contrast_scores({v: bank.bank(v) for v in VIEWS}, dict(zip(VIEWS, feats, strict=True)), idx)
    b = nce(*feats, y, idx.clone())
    for d, sa, sb in zip(("ab2l", "l2ab", "ori2l", "l2ori", "ab2ori", "ori2ab"), a, b, strict=True):
        rep.compare(f"memory-bank scores {d}", sa, sb.squeeze(2))
    bank.update(feats, y)
    for v in VIEWS:
        rep.compare(f"memory update {v} (momentum 0.5, renormalised)", bank.bank(v), getattr(nce, f"memory_{v}"))


def tiny_config(loss: dict) -> Config:
    return parse_config(Config, load_recipe("contrast/demo", TINY + [f"train.loss.{k}={v}" for k, v in loss.items()]))


def iteration_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The batch (x, y, index) and the 15 negative draws (5 score calls x 3 passes) of one iteration."""
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(B, 3, 64, 64, generator=g)
    draws = [torch.randint(0, N_DATA, (B * (K + 1),), generator=g) for _ in range(15)]
    return x, torch.tensor([0, 1, 2, 0]), torch.tensor([2, 7, 11, 13]), draws


def tiny_net(cfg: Config, seed: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed + 6)
    return build_model(cfg, N_DATA, 3).to(dtype)


def zsk_iteration(cfg: Config, seed: int, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                  draws: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.nn.Module]:
    """zsk's iteration: the Trainer's real step (recipe SGD) then the meta step callback, negatives from `draws`.
    Returns the encoder-step loss and the network after the iteration."""
    net = tiny_net(cfg, seed, dtype)
    tcfg = with_epoch_milestones(stage_config(cfg.train, "pretrain"), 1)
    step = MetAugStep(net, cfg, tcfg)
    queue = [d.clone() for d in draws]

    def draw(i: torch.Tensor) -> torch.Tensor:
        d = queue.pop(0).view(B, K + 1).clone()
        d[:, 0] = i
        return d

    step.draw = draw  # type: ignore[method-assign]
    batch = (x.clone().to(dtype), y, index)
    spec = BenchSpec(model=net, step_fn=step, batch=batch, train_cfg=tcfg, infer_step=lambda: None,
                     train_samples=B, infer_samples=B, param_groups=[{"params": net.encoder_parameters()}])
    _, trainer = trainer_step(spec, cfg, torch.device("cpu"))
    out = trainer.train_step(batch)
    MetaStep(step, tcfg).meta_update(*step.last)
    return out["loss"].detach(), net


def precision_spread(cfg: Config, seed: int) -> float:
    """How far zsk's own fp32 iteration lies from its fp64 one (generator weights): the scale of fp32 noise."""
    x, y, index, draws = iteration_inputs(seed)
    a = zsk_iteration(cfg, seed, x, y, index, draws)[1].state_dict()
    b = zsk_iteration(cfg, seed, x, y, index, draws, torch.float64)[1].state_dict()
    return max(float((a[k].double() - b[k]).abs().max()) for k in a if k.startswith("generators"))


def compare_iteration(rep: Report, mods: dict, seed: int, case: str, loss: dict) -> None:
    """One train_MetAug.py iteration against zsk's Trainer step + MetaStep, same weights, inputs and negatives."""
    cfg = tiny_config(loss)
    net = tiny_net(cfg, seed)
    x, y, index, draws = iteration_inputs(seed)
    rep.keep(f"in/{case}/x_sum", x.double().sum())  # x is regenerated from the seed (iteration_inputs)
    rep.keep(f"in/{case}/draws", torch.stack(draws))

    # the official side: MyAlexNetCMC / MyMetaGenNet with zsk's modules (same names and structure) and weights
    off = mods["alexnet"].MyAlexNetCMC(torch.device("cpu"), 8)
    for v in VIEWS:
        enc = off.encoder.module.__getattr__(ENC[v])
        for name, _ in list(enc.named_children()):
            if name != "l2norm":
                setattr(enc, name, copy.deepcopy(getattr(net.encoder.view(v), name)))
    gens = {}
    for v in VIEWS:
        gen = mods["alexnet"].MyMetaGenNet(torch.device("cpu"), 8)
        for name in ("fc1", "fc2", "fc3"):
            setattr(gen.encoder.module, name, copy.deepcopy(getattr(net.generators[v], name)))
        gens[v] = gen
    opt = contrast_shims.options(mt_loss_hp=loss.get("beta", 1e-5), mj_loss_hp=loss.get("eta", 1e-11))
    nce = mods["nce"].NCEAverage(8, N_DATA, K, 0.07, 0.5)
    for v in VIEWS:
        getattr(nce, f"memory_{v}").copy_(net.memory.bank(v))
    queue = [d.clone() for d in draws]
    nce.multinomial.draw = lambda n: queue.pop(0).clone()
    crit = mods["criterion"].CircleLoss(opt)
    sgd = torch.optim.SGD(off.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    gen_ops = [torch.optim.SGD(gens[v].parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4) for v in VIEWS]
    loss_off = mods["train"].train(1, [(x.clone(), y, index)], off, nce, crit, sgd, gens["l"], gen_ops[0],
                                   gens["ab"], gen_ops[1], gens["ori"], gen_ops[2], opt)

    out, net = zsk_iteration(cfg, seed, x, y, index, draws)
    tol = CASE_TOL[case]

    rep.compare(f"iteration [{case}]: encoder-step loss", out, torch.tensor(loss_off), tol=1e-5)
    ours_state = net.state_dict()
    for v in VIEWS:
        off_enc = off.encoder.module.__getattr__(ENC[v]).state_dict()
        err = max(float((ours_state[f"encoder.{ENC[v]}.{k}"].float() - t.float()).abs().max()) for k, t in off_enc.items())
        rep.compare(f"iteration [{case}]: encoder {v} weights + BN stats after the step", err, 0.0, tol, keep=False)
        for k, t in off_enc.items():
            rep.keep(f"out/{case}/encoder.{ENC[v]}.{k}", t)
        off_gen = gens[v].encoder.module.state_dict()
        err = max(float((ours_state[f"generators.{v}.{k}"].float() - t.float()).abs().max()) for k, t in off_gen.items())
        rep.compare(f"iteration [{case}]: generator {v} after the meta step", err, 0.0, tol, keep=False)
        for k, t in off_gen.items():
            rep.keep(f"out/{case}/generators.{v}.{k}", t)
        rep.compare(f"iteration [{case}]: memory bank {v} (3 official updates)", net.memory.bank(v),
                    getattr(nce, f"memory_{v}"), tol, keep=False)
        rep.keep(f"out/{case}/memory.memory_{v}", getattr(nce, f"memory_{v}"))


def compare_schedule(rep: Report, mods: dict) -> None:
    cfg = tiny_config({})
    spe = 7
    tcfg = with_epoch_milestones(stage_config(cfg.train, "pretrain"), spe)
    tcfg = type(tcfg)(**{**tcfg.__dict__, "milestone_epochs": [120, 160, 200], "stages": {}})
    tcfg = with_epoch_milestones(tcfg, spe)
    ours, theirs = [], []
    for epoch in range(1, 301):
        sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.03)
        mods["util"].adjust_learning_rate(epoch, contrast_shims.options(), sgd)
        theirs.append(sgd.param_groups[0]["lr"])
        ours.append(0.03 * lr_factor((epoch - 1) * spe, 300 * spe, tcfg))
    rep.compare("lr schedule (300 epochs, x0.1 after 120/160/200)", np.array(ours), np.array(theirs), tol=1e-12)
    lin = parse_config(Config, load_recipe("contrast/demo", TINY + ["train.stages.linear.milestone_epochs=[30,40,50]"]))
    lcfg = with_epoch_milestones(stage_config(lin.train, "linear"), spe)
    ours, theirs = [], []
    for epoch in range(1, 61):
        sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        mods["util"].adjust_learning_rate(epoch, contrast_shims.options(learning_rate=0.1, lr_decay_rate=0.2,
                                                                        lr_decay_epochs=[30, 40, 50]), sgd)
        theirs.append(sgd.param_groups[0]["lr"])
        ours.append(lcfg.lr * lr_factor((epoch - 1) * spe, 60 * spe, lcfg))
    rep.compare("linear-probe lr schedule (60 epochs, x0.2 after 30/40/50)", np.array(ours), np.array(theirs), tol=1e-12)


def compare_probe(rep: Report, mods: dict, seed: int) -> None:
    torch.manual_seed(seed + 8)
    for layer, name in ((5, "conv5"), (6, "fc6")):
        clf = mods["linear"].LinearClassifierAlexNet(layer=layer, n_label=10)
        g = torch.Generator().manual_seed(seed + 9)
        shape = (2, 384, 6, 6) if layer == 5 else (2, 6144)
        feats = torch.randn(*shape, generator=g)
        from zsk.tasks.contrast.model import LinearProbe, _flat

        probe = LinearProbe(clf.classifier.LinearClassifier.in_features, 10)
        probe.classifier.load_state_dict(clf.classifier.LinearClassifier.state_dict())
        views = feats.split(feats.shape[1] // 3, dim=1)  # official: the views concatenated on channels
        ours = probe(torch.cat([_flat(v) for v in views], 1))
        rep.compare(f"linear classifier on {name} features", ours, clf(feats))


def compare_lab(rep: Report, mods: dict, seed: int) -> None:
    try:
        from dataset import RGB2Lab
    except ImportError as e:
        rep.note("RGB -> Lab (dataset.RGB2Lab)", f"not compared: {e} (pass --site with scikit-image)")
        return
    from torchvision import transforms

    from zsk.data.colorspace import LAB_MEAN, LAB_STD

    rgb = np.random.default_rng(seed).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    rep.keep("in/lab_rgb", rgb)
    official = transforms.Compose([RGB2Lab(), transforms.ToTensor(), transforms.Normalize(LAB_MEAN, LAB_STD)])
    rep.compare("RGB -> normalised Lab (skimage rgb2lab)", to_lab_tensor(rgb), official(rgb).float())


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--site", type=Path, default=None, help="Folder with scikit-image (pip install --target).")
    args = p.parse_args()
    if args.site is not None:
        sys.path.insert(0, str(args.site))
    from common import add_official

    root = add_official(args.official)
    contrast_shims.install()
    mods = contrast_shims.modules()
    rep = Report("contrast", official_commit(root))
    compare_forward(rep, mods, args.seed)
    compare_losses(rep, mods, args.seed)
    compare_memory(rep, mods, args.seed)
    for case, loss in ITERATION_CASES.items():
        compare_iteration(rep, mods, args.seed, case, loss)
        spread = precision_spread(tiny_config(loss), args.seed)
        rep.note(f"iteration [{case}]: zsk fp32 vs zsk fp64 (generators)", f"{spread:.3g}: the fp32 noise scale")
    compare_schedule(rep, mods)
    compare_probe(rep, mods, args.seed)
    compare_lab(rep, mods, args.seed)
    rep.note("linear probe on generator features (LinearProbing_MetAug.py)",
             "not compared: the official script feeds 2048-d fc features to generators built for 128-d inputs "
             "(a new random Linear per call) and passes a positional argument twice; zsk's eval.features option "
             "feeds the embeddings instead")
    rep.note("ResNet backbones", "not compared: train_MetAug.py builds only alexnet")
    rep.print()
    rep.save(args.save, {"seed": args.seed, "tiny": TINY, "cases": ITERATION_CASES, "batch": B, "n_data": N_DATA,
                         "k": K})
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
