"""ACNet (sbir) against the official code, leftthomas/ACNet (IEEE TCSVT 2023), fp32 on the CPU.

    python tools/parity/sbir.py --official /path/to/ACNet [--save tests/parity/sbir]

Both sides get the same seeded weights (``sbir_shims.seed_weights``; timm never downloads) and the same seeded
inputs. Compared: the generator (8 channels, 8 blocks) and the discriminator forward passes, the extractor
(timm ResNet-50 and VGG-16, global max pooling, L2-normalised) forward, pytorch-metric-learning's
NormalizedSoftmaxLoss (value and gradients) against zsk's, two full training steps (the warm-up step with
only E's last layer trainable, then a full step) through the official ``train()`` with its three Adam
optimisers against zsk's Trainer step (losses and updated weights of G, D, E, proxies), the four retrieval
metrics of ``utils.compute_metric`` (SAKE's ``metric.py``), the per-epoch evaluation ``val`` end to end on JPEGs
at 224 (reader, transform, E(G(s)), E(p), metrics) against ``evaluate_split``, and the dataset reader (``DomainDataset``: class
numbering, image lists, the TU-Berlin 400-photo rule, the evaluation transform) on files written in
ACNet's layout.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sbir_shims  # noqa: E402
from common import Report, official_commit, parser, seeded  # noqa: E402
from PIL import Image  # noqa: E402

from zsk.core.bench import BenchSpec, trainer_step  # noqa: E402
from zsk.core.recipe import load_recipe, parse_config  # noqa: E402
from zsk.metrics.ranking import ranking_metrics  # noqa: E402
from zsk.tasks.sbir.config import Config  # noqa: E402
from zsk.tasks.sbir.data import load_image, read_split, write_sample  # noqa: E402
from zsk.tasks.sbir.losses import normalized_softmax_loss  # noqa: E402
from zsk.tasks.sbir.model import ACNet, Discriminator, Extractor, Generator  # noqa: E402
from zsk.tasks.sbir.train import make_step_fn, param_groups  # noqa: E402

SIZE = 64  # image side of the compared forward passes (the paper's 224 costs minutes on a CPU)
STEP_SIZE, STEP_BATCH, STEP_CLASSES, STEP_DIM = 32, 3, 3, 16  # the training steps (small: tests/parity replays them)
KEPT_E = ("backbone.conv1.weight", "backbone.layer1.0.conv1.weight", "backbone.fc.weight", "backbone.fc.bias")


def compare_networks(rep: Report, off: dict, seed: int) -> None:
    x = seeded(2, 3, SIZE, SIZE, seed=seed).tanh()
    rep.keep("input/image", x)
    ours, theirs = Generator(8, 8), off["model"].Generator(in_channels=8, num_block=8)
    sbir_shims.seed_weights(ours, seed + 1)
    theirs.load_state_dict(ours.state_dict())
    rep.compare("generator parameter count", sum(p.numel() for p in ours.parameters()),
                sum(p.numel() for p in theirs.parameters()), tol=0)
    rep.compare("generator forward (8 ch, 8 blocks)", ours(x), theirs(x))
    ours_d, theirs_d = Discriminator(8), off["model"].Discriminator(in_channels=8)
    sbir_shims.seed_weights(ours_d, seed + 2)
    theirs_d.load_state_dict(ours_d.state_dict())
    rep.compare("discriminator patch logits", ours_d(x), theirs_d(x))
    for i, name in enumerate(("resnet50", "vgg16")):
        e_ours, e_off = Extractor(name, 512).eval(), off["model"].Extractor(name, 512).eval()
        sbir_shims.seed_weights(e_ours, seed + 3 + i, scale=0.02)
        e_off.load_state_dict(e_ours.state_dict())
        with torch.no_grad():
            rep.compare(f"extractor {name} embedding (max pool, d = 512, L2)", e_ours(x), e_off(x))
        del e_ours, e_off


def compare_loss(rep: Report, seed: int) -> None:
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

    emb = torch.nn.functional.normalize(seeded(12, 32, seed=seed + 10), dim=1).requires_grad_(True)
    labels = torch.arange(12) % 5
    theirs = NormalizedSoftmaxLoss(5, 32)  # temperature 0.05, W (32, 5)
    with torch.no_grad():
        theirs.W.copy_(seeded(32, 5, seed=seed + 11))
    rep.keep("loss/embeddings", emb)
    rep.keep("loss/W", theirs.W)
    proxies = theirs.W.detach().T.clone().requires_grad_(True)
    ours = normalized_softmax_loss(emb, labels, proxies, 0.05)
    off = theirs(emb, labels)
    rep.compare("NormalizedSoftmaxLoss value", ours, off)
    g_ours = torch.autograd.grad(ours, [emb, proxies])
    g_off = torch.autograd.grad(off, [emb, theirs.W])
    rep.compare("NormalizedSoftmaxLoss grad wrt embeddings", g_ours[0], g_off[0])
    rep.compare("NormalizedSoftmaxLoss grad wrt proxies", g_ours[1], g_off[1].T)


def compare_training_steps(rep: Report, off: dict, seed: int) -> None:
    """Two steps: epoch 1 (warm-up: E's backbone frozen but for its last Linear), then epoch 2 (all)."""
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

    tr = off["train"]
    cfg = parse_config(Config, load_recipe("sbir/sketchy21", ["model.pretrained=null", f"model.emb_dim={STEP_DIM}",
                                                             f"data.image_size={STEP_SIZE}", "runtime.device=cpu"]))
    ours = ACNet(STEP_CLASSES, "resnet50", STEP_DIM)
    sbir_shims.seed_weights(ours, seed + 20, scale=0.02)
    gen, disc = off["model"].Generator(in_channels=8, num_block=8), off["model"].Discriminator(in_channels=8)
    ext = off["model"].Extractor("resnet50", STEP_DIM)
    crit = NormalizedSoftmaxLoss(STEP_CLASSES, STEP_DIM)
    gen.load_state_dict(ours.generator.state_dict())
    disc.load_state_dict(ours.discriminator.state_dict())
    ext.load_state_dict(ours.extractor.state_dict())
    with torch.no_grad():
        crit.W.copy_(ours.proxies.T)
    tr.generator, tr.discriminator, tr.class_criterion = gen, disc, crit
    tr.adversarial_criterion, tr.identity_criterion = torch.nn.MSELoss(), torch.nn.L1Loss()
    tr.optimizer_extractor = torch.optim.Adam([{"params": ext.parameters()}, {"params": crit.parameters(), "lr": 1e-3}],
                                              lr=1e-5)
    tr.optimizer_generator = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
    tr.optimizer_discriminator = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.999))
    tr.epochs = 2
    batches = []
    for k in range(2):
        s = seeded(STEP_BATCH, 3, STEP_SIZE, STEP_SIZE, seed=seed + 30 + k).tanh()
        p = seeded(STEP_BATCH, 3, STEP_SIZE, STEP_SIZE, seed=seed + 40 + k).tanh()
        y = torch.tensor([(i + k) % STEP_CLASSES for i in range(STEP_BATCH)])
        batches.append((s, p, y))
        rep.keep(f"step{k}/sketch", s)
        rep.keep(f"step{k}/photo", p)
        rep.keep(f"step{k}/label", y)
    spec = BenchSpec(model=ours, step_fn=make_step_fn(cfg, steps_per_epoch=1), batch=None, train_cfg=cfg.train,
                     infer_step=lambda: None, train_samples=STEP_BATCH, infer_samples=1,
                     param_groups=param_groups(ours, cfg.train))
    dead = dead_biases(ours.generator)
    dead_d = dead_biases(ours.discriminator)
    pairs = [*zip(ours.extractor.parameters(), ext.parameters(), strict=True),
             *zip(ours.generator.parameters(), gen.parameters(), strict=True),
             *zip(ours.discriminator.parameters(), disc.parameters(), strict=True)]
    official_opts = (tr.optimizer_extractor, tr.optimizer_generator, tr.optimizer_discriminator)
    _, trainer = trainer_step(spec, cfg, torch.device("cpu"))  # zsk's real Trainer (its optimizer and step)
    for k, (s, p, y) in enumerate(batches):
        if k == 1:  # start the full step from zsk's state on both sides (weights and Adam moments)
            sync(trainer.optimizer, official_opts, pairs, ours.proxies, crit.W)
        tr.epoch = k + 1
        for param in list(ext.backbone.parameters())[:-2]:  # train.py's warm-up switch
            param.requires_grad = tr.epoch > 1
        e_loss, g_loss, i_loss, d_loss = tr.train(ext, [(s, p, y)])
        probe = copy.deepcopy(ours)  # zsk's gradients of this step (the Trainer clears them after its step)
        probe.train()
        spec.step_fn(probe, {"sketch": s, "photo": p, "label": y}, k)["loss"].backward()
        out = trainer.train_step({"sketch": s, "photo": p, "label": y})
        what = "warm-up step" if k == 0 else "full step"
        rep.compare(f"{what}: L_cls (mean of sketch, photo, fake)", out["class"], e_loss)
        rep.compare(f"{what}: L_G (LSGAN)", out["generator"], g_loss)
        rep.compare(f"{what}: L_id (L1)", out["identity"], i_loss)
        rep.compare(f"{what}: L_D", out["discriminator"], d_loss)
        skips = {"generator": dead, "discriminator": dead_d, "extractor": set()}
        for part, theirs in (("generator", gen), ("discriminator", disc), ("extractor", ext)):
            mine = getattr(probe, part)
            skip = skips[part]
            rep.compare(f"{what}: {part} gradients / their max", *_grads(mine, theirs, skip), tol=1e-4, keep=False)
        rep.compare(f"{what}: proxies gradient / their max", *_scaled(probe.proxies.grad.T, crit.W.grad), tol=1e-4,
                    keep=False)
        for part, theirs in (("generator", gen), ("discriminator", disc), ("extractor", ext)):
            mine = getattr(ours, part)
            skip = skips[part]
            rep.compare(f"{what}: {part} weights after Adam (gradient > 1e-3 of its max)",
                        *_settled(mine, theirs, skip), keep=False)
        rep.compare(f"{what}: proxies after Adam", ours.proxies.T, crit.W.detach().clone())  # a copy: W changes later
        # figures for tests/parity: the official weights after the step and where their gradient is settled
        theirs_e = dict(ext.named_parameters())
        for name in KEPT_E:
            q = theirs_e[name]
            rep.keep(f"step{k}/E {name} after", q.detach().clone())
            rep.keep(f"step{k}/E {name} mask", q.grad.abs() >= 1e-3 * q.grad.abs().max() if q.grad is not None
                     else torch.zeros_like(q, dtype=torch.bool))
        for part, theirs, skip in (("G", gen, dead), ("D", disc, dead_d)):
            rep.keep(f"step{k}/{part} after", _flat(theirs))
            rep.keep(f"step{k}/{part} mask", torch.cat([
                (q.grad.abs() >= 1e-3 * q.grad.abs().max()).flatten() if n not in skip and q.grad is not None
                else torch.zeros(q.numel(), dtype=torch.bool) for n, q in theirs.named_parameters()]))
    rep.note("weights whose gradient is < 1e-3 of the tensor's largest (and conv biases before InstanceNorm)",
             "not compared after Adam: Adam's first update is lr * g / (|g| + eps), +-lr after the sign of g, so "
             "gradients at float-noise level (InstanceNorm makes those biases' true gradient 0) move by +-lr on "
             "both sides; their gradients are compared above")


def dead_biases(generator: torch.nn.Module) -> set[str]:
    """Names of the conv biases that an InstanceNorm follows (no effect on the output), in G or D."""
    names, mods = set(), list(generator.named_modules())
    for (name, m), (_, nxt) in zip(mods, mods[1:], strict=False):
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and isinstance(nxt, torch.nn.InstanceNorm2d):
            names.add(f"{name}.bias")
    return names


def _grads(mine: torch.nn.Module, theirs: torch.nn.Module, skip: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides' gradients, flattened, divided by the official gradients' largest magnitude (so the row
    reads as a relative difference); parameters without a gradient on both sides are left out."""
    a, b = [], []
    t = dict(theirs.named_parameters())
    for name, p in mine.named_parameters():
        q = t[name]
        if name in skip or (p.grad is None and q.grad is None):
            continue
        a.append(p.grad.flatten() if p.grad is not None else torch.full((q.numel(),), float("nan")))
        b.append(q.grad.flatten() if q.grad is not None else torch.full((p.numel(),), float("nan")))
    a_t, b_t = torch.cat(a), torch.cat(b)
    scale = float(b_t.abs().max()) or 1.0
    return a_t / scale, b_t / scale


def sync(zsk_opt: torch.optim.Optimizer, official_opts: tuple, pairs: list, proxies: torch.Tensor,
         w: torch.Tensor) -> None:
    """Copy zsk's weights and Adam moments into the official modules and optimisers (the proxies transposed)."""
    state = zsk_opt.state
    with torch.no_grad():
        for mine, theirs in pairs:
            theirs.copy_(mine)
            for opt in official_opts:
                if any(theirs is q for g in opt.param_groups for q in g["params"]) and mine in state:
                    opt.state[theirs] = {k: v.clone() for k, v in state[mine].items()}
        w.copy_(proxies.T)
        official_opts[0].state[w] = {k: (v.T.clone() if v.dim() == 2 else v.clone()) for k, v in state[proxies].items()}


def _scaled(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = float(b.abs().max()) or 1.0
    return a / scale, b / scale


def _settled(mine: torch.nn.Module, theirs: torch.nn.Module, skip: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights after the step, where the official gradient is at least 1e-3 of its tensor's largest."""
    a, b = [], []
    t = dict(theirs.named_parameters())
    for name, p in mine.named_parameters():
        q = t[name]
        if name in skip or q.grad is None:
            continue
        keep = q.grad.abs() >= 1e-3 * q.grad.abs().max()
        a.append(p.detach()[keep])
        b.append(q.detach()[keep])
    return torch.cat(a), torch.cat(b)


def _flat(module: torch.nn.Module, skip: set[str] = frozenset()) -> torch.Tensor:  # type: ignore[assignment]
    return torch.cat([p.detach().flatten() for n, p in module.named_parameters() if n not in skip])


def compare_metrics(rep: Report, off: dict, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 50)
    centres = torch.randn(6, 16, generator=g)
    gl = torch.arange(300) % 6
    ql = torch.arange(80) % 6
    gallery = centres[gl] + 1.2 * torch.randn(300, 16, generator=g)
    queries = centres[ql] + 1.2 * torch.randn(80, 16, generator=g)
    rep.keep("metrics/gallery", gallery)
    rep.keep("metrics/queries", queries)
    vectors = torch.cat([gallery, queries])
    domains = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(80, dtype=torch.long)])
    acc = off["utils"].compute_metric(vectors, domains, torch.cat([gl, ql]))
    ours = ranking_metrics(queries, ql, gallery, gl)
    for key in ("mAP@all", "mAP@200", "P@100", "P@200"):
        rep.compare(f"metric {key} (SAKE protocol)", ours[key], acc[key], tol=1e-9)


def compare_val(rep: Report, off: dict, seed: int) -> None:
    """The official per-epoch evaluation (``train.py val``: JPEGs through DomainDataset at 224, photos through E,
    sketches through E(G(.)), ``compute_metric``) against zsk's ``evaluate_split`` with the same weights."""
    from torch.utils.data import DataLoader

    from zsk.tasks.sbir.evaluate import evaluate_split

    tr = off["train"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_sample(root / "sketchy", sketches=3, photos=6, size=40, seed=seed)
        cfg = parse_config(Config, load_recipe("sbir/sketchy21", [f"data.root={root / 'sketchy'}", "model.pretrained=null",
                                                                 "runtime.workers=0", "eval.batch_size=8"]))
        ours = ACNet(6, "resnet50", 512)
        sbir_shims.seed_weights(ours, seed + 60, scale=0.02)
        ext, gen = off["model"].Extractor("resnet50", 512), off["model"].Generator(in_channels=8, num_block=8)
        ext.load_state_dict(ours.extractor.state_dict())
        gen.load_state_dict(ours.generator.state_dict())
        tr.results = {k: [] for k in ("P@100", "P@200", "mAP@200", "mAP@all")}
        tr.epoch, tr.epochs = 1, 1
        loader = DataLoader(off["utils"].DomainDataset(str(root), "sketchy", split="val"), batch_size=8, shuffle=False)
        precise, _ = tr.val(ext, gen, loader)
        mine = evaluate_split(ours, cfg, read_split(cfg.data, "val"), torch.device("cpu"))
        for key in ("P@100", "P@200", "mAP@200", "mAP@all"):
            rep.compare(f"evaluation on JPEGs at 224 (val): {key}", mine[key], tr.results[key][-1] / 100, tol=1e-6,
                        keep=False)
        rep.compare("evaluation on JPEGs at 224 (val): checkpoint-selection mean", mine["precise"], precise, tol=1e-6,
                    keep=False)


def compare_reader(rep: Report, off: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_sample(root / "sketchy", sketches=3, photos=4, size=40)
        # class names whose sorted-path order differs from their sorted-name order, as TU-Berlin's
        for split in ("train",):
            for name in ("alarm", "alarm clock"):
                for domain in ("sketch", "photo"):
                    write_dir = root / "sketchy" / split / domain / name
                    write_dir.mkdir(parents=True)
                    for i in range(2):
                        Image.new("RGB", (30, 20), (10 * i, 90, 200)).save(write_dir / f"{i}.jpg")
        cfg = parse_config(Config, load_recipe("sbir/demo", [f"data.root={root / 'sketchy'}", "data.image_size=224"]))
        for split in ("train", "val"):
            ds = off["utils"].DomainDataset(str(root), "sketchy", split=split)
            mine = read_split(cfg.data, split)
            theirs = sorted(ds.classes, key=ds.classes.get)
            rep.compare(f"reader {split}: class numbering", float(theirs != mine.classes), 0.0, tol=0, keep=False)
            ours_items = sorted([str(p) for p, _ in mine.sketches] + ([str(p) for p, _ in mine.photos] if split == "val" else []))
            rep.compare(f"reader {split}: image list", float(ours_items != ds.images), 0.0, tol=0, keep=False)
            labels = {str(p): c for p, c in mine.sketches + mine.photos}
            rep.compare(f"reader {split}: labels", float([labels[p] for p in ds.images] != ds.labels), 0.0, tol=0, keep=False)
        ds = off["utils"].DomainDataset(str(root), "sketchy", split="val")
        img, _, _ = ds[0]
        rep.compare("evaluation transform (Resize 224 bilinear, Normalize 0.5)", load_image(Path(ds.images[0]), 224), img,
                    keep=False)
        # TU-Berlin: unseen classes with < 400 photos are left out
        for name, n in (("big", 400), ("small", 399)):
            for domain, count in (("sketch", 1), ("photo", n)):
                d = root / "tuberlin" / "val" / domain / name
                d.mkdir(parents=True)
                for i in range(count):
                    Image.new("RGB", (4, 4)).save(d / f"{i}.jpg")
        ds = off["utils"].DomainDataset(str(root), "tuberlin", split="val")
        cfg = parse_config(Config, load_recipe("sbir/tuberlin", [f"data.root={root / 'tuberlin'}", "model.pretrained=null"]))
        mine = read_split(cfg.data, "val")
        rep.compare("reader tuberlin val: >= 400-photo rule", float(sorted(ds.classes) != mine.classes), 0.0, tol=0,
                    keep=False)


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    off = sbir_shims.setup(args.official)
    rep = Report("sbir", official_commit(args.official))
    compare_networks(rep, off, args.seed)
    compare_loss(rep, args.seed)
    compare_training_steps(rep, off, args.seed)
    compare_metrics(rep, off, args.seed)
    compare_val(rep, off, args.seed)
    compare_reader(rep, off)
    rep.note("training flip / photo pairing randomness", "not compared: both draw from their own RNG streams "
             "(torchvision RandomHorizontalFlip + random.choice vs torch.rand + torch.randint); the deterministic "
             "part (resize, normalise) is compared")
    rep.print()
    rep.save(args.save, {"seed": args.seed, "size": SIZE, "step_size": STEP_SIZE, "step_batch": STEP_BATCH,
                         "step_classes": STEP_CLASSES,
                         "step_dim": STEP_DIM, "kept_extractor": list(KEPT_E)})
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
