"""LSEH (retrieve) against the official code, yangong23/VSEnetworksLSEH (Gong & Cosma, Pattern Recognition
2023), forks VSEpp_LSEH, VSEinfty_LSEH, VSRN_LSEH and SGRAF_LSEH, fp32 on the CPU.

    python tools/parity/retrieve.py --official /path/to/VSEnetworksLSEH [--save tests/parity/retrieve]

Both sides get the same weights (every parameter and BatchNorm statistic filled from a seeded generator,
then the state dict copied across with the names mapped) and the same seeded inputs. Compared: parameter
counts and the forward of the VSE++ precomp image encoder and GRU text encoder, VSE infinity's image encoder
(fc + MLP + GPO, train and eval mode) and BERT + GPO text encoder; the L_LSEH caption/image terms and total
of both forks, L_MH and L_SH; the IAPRTC12 copy's loss (one caption per image) against
``train.loss.lseh.mask_ids: caption_index_div5``; one Adam step of VSE++ (gradients and updated weights, grad
clip 2); one AdamW step of VSE infinity's VSEModel optimizer on the same seeded gradients; the LR
schedules over the whole run; i2t/t2i R@1/5/10, medr, meanr of the official evaluation functions (5
captions per image, COCO 1K folds, IAPR 1:1); vocab.py's vocabulary and the loader's token ids on the same
captions; the precomp reader (features, LSA rows, the dev cut) on files in the official layout. Measured
(zsk alone): the VSE++ L_LSEH loss and gradients under CPU bf16 autocast against fp32.

VSRN_LSEH and SGRAF_LSEH (second table, figures ``retrieve_nets.*``): VSRN's image encoder (fc + four Rs_GCN +
GRU, both the F30K BatchNorm branch and the COCO l2norm branch, train and eval mode), its GRU text encoder, its
L_LSEH (a, b) and L_MH, its caption loss (S2VTAttModel + LanguageModelCriterion) and the PrecompDataset's caption
labels/masks; SGRAF's local encoders, the SGR and SAF pair scores (eval, and training BatchNorm with dropout off),
L_LSEH on the pair scores, the blocked scoring against ``shard_attn_scores``, its i2t/t2i functions and one
SGR/SAF training step (the lines of ``SGRAF.train_emb``: gradients after clip 2, Adam-updated weights); two VSRN
training steps with the optimizer ``VSRN.__init__`` builds (its list holds the captioner twice) against zsk's
Trainer with ``train.captioner_params: twice`` (gradients after clip 2, weights, Adam step counts), and the gap
of zsk's default (``once``).

:func:`zsk_side` and :func:`nets_zsk_side` need no official code: tests/parity/test_retrieve_parity.py replays it against the figures.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Report, add_official, cpu_shims, official_commit, parser  # noqa: E402

from zsk.core.trainer import build_optimizer, lr_factor  # noqa: E402
from zsk.metrics.retrieval import coco_1k, evaluate_embeddings  # noqa: E402
from zsk.tasks.retrieve.config import TrainConfig  # noqa: E402
from zsk.tasks.retrieve.data import Vocabulary, collate_pairs  # noqa: E402
from zsk.tasks.retrieve.losses import LossConfig, caption_div5_mask, hinge_costs, semantic_margin  # noqa: E402
from zsk.tasks.retrieve.model import (  # noqa: E402
    AggrGPOImageEncoder,
    BertGPOTextEncoder,
    GRUTextEncoder,
    PrecompLinearImageEncoder,
    RankingLoss,
)
from zsk.tasks.retrieve.train import _with_lr_update  # noqa: E402

B, EMB, VOCAB, WORD = 6, 16, 40, 8
REGIONS, FEAT = 36, 2048  # the official VSE++ precomp encoder hard-codes 36 x 2048
INF_DIM, INF_REGIONS = 12, 10
IDS = [0, 1, 5, 6, 7, 12]  # caption indices of the batch: images 0, 0, 1, 1, 1, 2 (same-image pairs)
CAP_LENS = [9, 8, 8, 6, 5, 3]  # sorted, as the official collate_fn sorts the batch
IMG_LENS = [10, 7, 10, 4, 9, 6]  # VSE infinity region counts after the size augmentation
STEPS_PER_EPOCH = 7
CAPTIONS = {
    "train": ["A man's dog, running on the beach.", "Two kids don't play with a white-walled house.",
              "a dog runs on the beach", "A black dog runs by the sea.", "Kids play near a house!",
              "a man and a dog", "the dog's ball is red", "two men on a boat", "a white-walled house",
              "dogs can't swim"] * 2,
    "dev": ["a red boat on the sea", "a man's boat, red and white.", "kids on the beach", "a dog",
            "the white-walled house is big"],
}


def fill(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Every floating parameter and buffer from one seeded generator (BatchNorm variances positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * scale)


def inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.zeros(B, max(CAP_LENS), dtype=torch.long)
    for i, n in enumerate(CAP_LENS):
        tokens[i, :n] = torch.randint(4, VOCAB, (n,), generator=g)
    inf_images = torch.zeros(B, INF_REGIONS, INF_DIM)
    for i, n in enumerate(IMG_LENS):
        inf_images[i, :n] = torch.randn(n, INF_DIM, generator=g)
    return {
        "images": torch.rand(B, REGIONS, FEAT, generator=g),
        "tokens": tokens, "cap_lens": torch.tensor(CAP_LENS), "lsa": torch.randn(B, 5, generator=g),
        "img_ids": torch.tensor(IDS) // 5, "inf_images": inf_images, "img_lens": torch.tensor(IMG_LENS),
        "metric_img": torch.nn.functional.normalize(torch.randn(20, 6, generator=g), dim=1),
        "metric_cap": torch.nn.functional.normalize(torch.randn(100, 6, generator=g), dim=1),
    }


def vsepp_pair(seed: int) -> tuple[PrecompLinearImageEncoder, GRUTextEncoder]:
    img = PrecompLinearImageEncoder(FEAT, REGIONS, EMB, "flatten")
    txt = GRUTextEncoder(VOCAB, WORD, EMB, 1)
    fill(img, seed)
    fill(txt, seed + 2)
    return img, txt


def vseinf_pair(seed: int) -> tuple[AggrGPOImageEncoder, BertGPOTextEncoder]:
    from retrieve_shims import tiny_bert

    img = AggrGPOImageEncoder(INF_DIM, EMB, 32)
    txt = BertGPOTextEncoder(tiny_bert(VOCAB), EMB, 32)
    fill(img, seed + 3)
    fill(txt, seed + 4)
    return img, txt


def loss_terms(scores: torch.Tensor, margin, same: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """(total, caption side, image side) with the hardest negative, as the official losses return them."""
    cost_c, cost_i = hinge_costs(scores, margin)
    s, i = cost_c.amax(dim=1).sum(), cost_i.amax(dim=0).sum()
    return s + i, s, i


def metric_rows(m: dict) -> np.ndarray:
    return np.array([m[d][k] for d in ("i2t", "t2i") for k in ("r1", "r5", "r10", "medr", "meanr")])


def schedules() -> dict[str, tuple[float, int, int, list[int] | None]]:
    """name -> (lr, lr_update, epochs, official milestones of VSE infinity or None for VSE++'s every-k rule)."""
    return {"vsepp_f30k": (2e-3, 2, 30, None), "vsepp_iapr": (8e-4, 8, 30, None),
            "vseinf": (8e-4, 10, 30, [10, 20])}


KEEP = 20_000  # entries of the step vectors (1.2M values, mostly the 73,728-input linear layer) kept as figures
GRAD_FLOOR = 1e-4  # Adam's first step is lr * g / (|g| + eps): where |g| is at fp32 noise level its sign may flip


def kept(n: int, seed: int) -> np.ndarray:
    """The fixed subset of a step vector kept in the figures."""
    return np.sort(np.random.default_rng(seed + 7).choice(n, size=min(KEEP, n), replace=False))


def zsk_side(seed: int = 0, grads: list[torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Every zsk number the official code is compared with (no official code needed). ``grads``: the
    official step's gradients, used for the Adam update instead of zsk's own (the live comparison of the
    update; the replayed figures mask entries with |g| < GRAD_FLOOR instead)."""
    x = inputs(seed)
    out: dict[str, np.ndarray] = {}
    img, txt = vsepp_pair(seed)
    out["vsepp/param_count"] = np.array(sum(p.numel() for p in [*img.parameters(), *txt.parameters()]))
    ie, ce = img(x["images"]), txt(x["tokens"], x["cap_lens"])
    out["vsepp/img_emb"], out["vsepp/cap_emb"] = ie.detach().numpy(), ce.detach().numpy()
    scores = ie @ ce.T
    margin = semantic_margin(x["lsa"], x["img_ids"])
    out["vsepp/lseh_margin"] = margin.numpy()
    for name, value in zip(("total", "caption", "image"), loss_terms(scores, margin), strict=True):
        out[f"vsepp/lseh_{name}"] = value.detach().numpy()
    out["vsepp/lmh"] = loss_terms(scores, 0.2)[0].detach().numpy()
    cost_c, cost_i = hinge_costs(scores, 0.2)
    out["vsepp/lsh"] = (cost_c.sum() + cost_i.sum()).detach().numpy()
    # IAPR TC-12 (one caption per image: image index = caption index), train.loss.lseh.mask_ids: caption_index_div5
    ids = torch.tensor(IDS)
    iapr_margin = semantic_margin(x["lsa"], ids, same=caption_div5_mask(ids, ids))
    for name, value in zip(("total", "caption", "image"), loss_terms(scores, iapr_margin), strict=True):
        out[f"iapr/lseh_div5_{name}"] = value.detach().numpy()
    out["iapr/lseh_image_mask_total"] = loss_terms(scores, semantic_margin(x["lsa"], ids))[0].detach().numpy()
    # one optimizer step: Adam lr 2e-3, grad clip 2 (VSEpp_LSEH train.py defaults)
    tcfg = TrainConfig(optimizer="adam", lr=2e-3, clip_grad_norm=2.0)
    params = [*txt.parameters(), *img.parameters()]
    opt = build_optimizer([{"params": params}], tcfg)
    opt.zero_grad()
    loss = RankingLoss(LossConfig(kind="lseh"))(img(x["images"]), txt(x["tokens"], x["cap_lens"]), x["img_ids"], x["lsa"])
    loss.backward()
    out["vsepp/step_grad"] = torch.cat([p.grad.flatten() for p in params]).numpy()
    if grads is not None:
        for p, g in zip(params, grads, strict=True):
            p.grad.copy_(g)
    torch.nn.utils.clip_grad_norm_(params, tcfg.clip_grad_norm)
    opt.step()
    out["vsepp/step_weights"] = torch.cat([p.detach().flatten() for p in params]).numpy()
    # VSE infinity
    iimg, itxt = vseinf_pair(seed)
    out["vseinf/param_count"] = np.array(sum(p.numel() for p in [*iimg.parameters(), *itxt.parameters()]))
    for mode in ("eval", "train"):
        iimg.train(mode == "train")
        out[f"vseinf/img_emb_{mode}"] = iimg(x["inf_images"], x["img_lens"]).detach().numpy()
    itxt.eval()
    tokens = x["tokens"].clone()
    out["vseinf/cap_emb"] = itxt(tokens, x["cap_lens"]).detach().numpy()
    step = vseinf_adamw_step(seed)
    out["vseinf/adamw_step_weights"] = torch.cat([step[k].flatten() for k in sorted(step)]).numpy()
    iimg.eval()
    scores = iimg(x["inf_images"], x["img_lens"]) @ itxt(tokens, x["cap_lens"]).T
    for name, value in zip(("total", "caption", "image"), loss_terms(scores, semantic_margin(x["lsa"], x["img_ids"])),
                           strict=True):
        out[f"vseinf/lseh_{name}"] = value.detach().numpy()
    # LR schedules over the whole run (lr at every optimizer step)
    for name, (lr, every, epochs, _) in schedules().items():
        cfg = _with_lr_update(TrainConfig(lr=lr, lr_update=every, epochs=epochs, gamma=0.1), STEPS_PER_EPOCH)
        total = epochs * STEPS_PER_EPOCH
        out[f"schedule/{name}"] = np.array([lr * lr_factor(t, total, cfg) for t in range(total)])
    # metrics on the same embeddings
    mi, mc = x["metric_img"], x["metric_cap"]
    out["metrics/5cap"] = metric_rows(evaluate_embeddings(mi, mc, 5))
    out["metrics/coco1k_folds"] = metric_rows(coco_1k(mi, mc, 5, folds=5))
    out["metrics/iapr_1to1"] = metric_rows(evaluate_embeddings(mi, mc[:20], 1))
    # vocabulary and token ids (official layout, NLTK tokenizer, train + dev captions, threshold 4)
    vocab = Vocabulary.build(CAPTIONS["train"] + CAPTIONS["dev"], 4, "nltk")
    out["vocab/size"] = np.array(len(vocab))
    ids = [vocab.encode(c) for c in CAPTIONS["train"][:10]]
    out["vocab/token_ids"] = np.array([t + [-1] * (20 - len(t)) for t in ids])
    return out


def inf_name(name: str) -> str:
    """A zsk VSE infinity parameter name as the official encoders spell it."""
    return name.replace("mlp.norms.", "mlp.bns.").replace("gpo.score.", "gpool.linear.").replace("gpo.", "gpool.")


def vseinf_adamw_step(seed: int = 0) -> dict[str, torch.Tensor]:
    """One AdamW step of VSE infinity with zsk's optimizer (recipe settings: lr 8e-4, BERT at x 0.1, weight
    decay 1e-4, clip 2) on seeded gradients; the updated weights by official parameter name."""
    import types

    from zsk.tasks.retrieve.train import param_groups

    iimg, itxt = vseinf_pair(seed)
    model = torch.nn.Module()
    model.image_encoder, model.text_encoder = iimg, itxt
    cfg = types.SimpleNamespace(model=types.SimpleNamespace(bert_lr_mult=0.1),
                                train=types.SimpleNamespace(captioner_params="once"))
    tcfg = TrainConfig(optimizer="adamw", lr=8e-4, weight_decay=1e-4, clip_grad_norm=2.0)
    opt = build_optimizer(param_groups(model, cfg), tcfg)  # type: ignore[arg-type]
    named = {**{f"txt.{inf_name(k)}": v for k, v in itxt.named_parameters()},
             **{f"img.{inf_name(k)}": v for k, v in iimg.named_parameters()}}
    grads = adamw_grads(named, seed)
    for k, p in named.items():
        p.grad = grads[k].clone()
    torch.nn.utils.clip_grad_norm_(list(named.values()), tcfg.clip_grad_norm)
    opt.step()
    return {k: p.detach().clone() for k, p in named.items()}


def adamw_grads(named: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 11)
    return {k: torch.randn(p.shape, generator=g) * 0.01 for k, p in sorted(named.items())}


def bf16_effect(seed: int = 0) -> dict[str, float]:
    """The VSE++ L_LSEH loss and its gradients under CPU bf16 autocast against fp32 (zsk alone, same weights
    and inputs as the table): |loss difference|, max |gradient difference| and the gradients' cosine."""
    x = inputs(seed)
    loss_fn = RankingLoss(LossConfig(kind="lseh"))
    out = []
    for amp in (False, True):
        img, txt = vsepp_pair(seed)
        params = [*txt.parameters(), *img.parameters()]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(img(x["images"]), txt(x["tokens"], x["cap_lens"]), x["img_ids"], x["lsa"])
        loss.backward()
        out.append((loss.detach().double(), torch.cat([p.grad.flatten() for p in params]).double()))
    (l32, g32), (l16, g16) = out
    return {"loss_abs_diff": float((l16 - l32).abs()), "loss_fp32": float(l32),
            "grad_max_abs_diff": float((g16 - g32).abs().max()), "grad_max_abs_fp32": float(g32.abs().max()),
            "grad_cosine": float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))}


BF16_ROW = "VSE++ L_LSEH under CPU bf16 autocast vs fp32 (loss; gradients)"


def run_official(root: Path, seed: int, rep: Report, ours: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import retrieve_shims as sh

    sh.import_stubs()
    punkt = sh.punkt_free_nltk()
    x = inputs(seed)
    off: dict[str, np.ndarray] = {}
    pp = root / "VSEpp_LSEH"
    sys.path.insert(0, str(pp))
    model = sh.load_file("vsepp_model", pp / "model.py")
    # ---- VSE++ encoders with zsk's weights
    zimg, ztxt = vsepp_pair(seed)
    oimg = model.EncoderImagePrecomp(REGIONS * FEAT, EMB)
    otxt = model.EncoderText(VOCAB, WORD, EMB, 1)
    oimg.load_state_dict(zimg.state_dict())
    otxt.load_state_dict(ztxt.state_dict())
    off["vsepp/param_count"] = np.array(sum(p.numel() for p in [*oimg.parameters(), *otxt.parameters()]))
    ie, ce = oimg(x["images"]), otxt(x["tokens"], x["cap_lens"].tolist())
    off["vsepp/img_emb"], off["vsepp/cap_emb"] = ie.detach().numpy(), ce.detach().numpy()
    with sh.cuda_branch():
        sims = model.torch_cosine_sim(x["lsa"], x["lsa"])
        same = torch.tensor([[1.0 if i // 5 == j // 5 else 0.0 for j in IDS] for i in IDS])
        off["vsepp/lseh_margin"] = ((sims * 0.025 + 0.185) * (1 - same)).numpy()
        lseh = model.ContrastiveLossLSEH(margin=0.185, max_violation=True)
        res = lseh(ie, ce, IDS, x["img_ids"].tolist(), x["lsa"])
        for name, value in zip(("total", "caption", "image"), res, strict=True):
            off[f"vsepp/lseh_{name}"] = value.detach().numpy()
        off["vsepp/lmh"] = model.ContrastiveLoss(margin=0.2, max_violation=True)(ie, ce)[0].detach().numpy()
        off["vsepp/lsh"] = model.ContrastiveLoss(margin=0.2, max_violation=False)(ie, ce)[0].detach().numpy()
        # one step as VSE.train_emb runs it
        params = [*otxt.parameters(), *oimg.fc.parameters()]
        optimizer = torch.optim.Adam(params, lr=0.002)
        optimizer.zero_grad()
        loss = lseh(oimg(x["images"]), otxt(x["tokens"], x["cap_lens"].tolist()), IDS, x["img_ids"].tolist(),
                    x["lsa"])[0]
    loss.backward()
    off["vsepp/step_grad"] = torch.cat([p.grad.flatten() for p in params]).numpy()
    off["_grads"] = [p.grad.detach().clone() for p in params]  # type: ignore[assignment]
    torch.nn.utils.clip_grad_norm_(params, 2.0)
    optimizer.step()
    off["vsepp/step_weights"] = torch.cat([p.detach().flatten() for p in params]).numpy()
    # ---- the IAPRTC12 copy's loss, one caption per image (img_ids = caption indices)
    iapr_model = sh.load_file("iapr_model", pp / "IAPRTC12" / "model.py")
    with sh.cuda_branch():
        res = iapr_model.ContrastiveLossLSEH(margin=0.185, max_violation=True)(ie, ce, IDS, IDS, x["lsa"])
    for name, value in zip(("total", "caption", "image"), res, strict=True):
        off[f"iapr/lseh_div5_{name}"] = value.detach().numpy()
    # ---- VSE infinity encoders and loss
    inf = root / "VSEinfty_LSEH"
    sys.path.insert(0, str(inf))
    import lib.encoders as enc  # noqa: PLC0415 - from the checkout

    zimg2, ztxt2 = vseinf_pair(seed)
    oimg2 = enc.EncoderImageAggr(INF_DIM, EMB, "basic")
    state = {}
    for k, v in zimg2.state_dict().items():
        k = k.replace("mlp.norms.", "mlp.bns.").replace("gpo.score.", "gpool.linear.").replace("gpo.", "gpool.")
        state[k] = v
    own = oimg2.state_dict()
    unused = [k for k in own if k not in state]
    for k in unused:  # the official MLP's last BatchNorm exists but is never applied
        state[k] = own[k]
    oimg2.load_state_dict(state)
    enc.BertModel = type("BertStub", (), {"from_pretrained": staticmethod(lambda *a, **k: copy.deepcopy(ztxt2.bert))})
    otxt2 = enc.EncoderText(EMB)
    tstate = {k.replace("gpo.score.", "gpool.linear.").replace("gpo.", "gpool."): v for k, v in ztxt2.state_dict().items()}
    otxt2.load_state_dict(tstate)
    off["vseinf/param_count"] = np.array(sum(p.numel() for p in [*oimg2.parameters(), *otxt2.parameters()]))
    for mode in ("eval", "train"):
        oimg2.train(mode == "train")
        off[f"vseinf/img_emb_{mode}"] = oimg2(x["inf_images"], x["img_lens"].float()).detach().numpy()
    otxt2.eval()
    off["vseinf/cap_emb"] = otxt2(x["tokens"], x["cap_lens"].float()).detach().numpy()
    oimg2.eval()
    lossmod = sh.vseinf_loss_module(root, B)
    with sh.cuda_branch():
        res = lossmod.ContrastiveLossLSEH(None, margin=0.185, max_violation=True)(
            oimg2(x["inf_images"], x["img_lens"].float()), otxt2(x["tokens"], x["cap_lens"].float()), IDS,
            x["img_ids"].tolist(), x["lsa"])
    for name, value in zip(("total", "caption", "image"), res, strict=True):
        off[f"vseinf/lseh_{name}"] = value.detach().numpy()
    # ---- one AdamW step of the official VSEModel (its optimizer and clip) on the same seeded gradients
    import types

    vse_mod = sh.load_file("vseinf_vse", inf / "lib" / "vse.py")
    vopt = types.SimpleNamespace(grad_clip=2.0, data_name="f30k_precomp", img_dim=INF_DIM, embed_size=EMB,
                                 precomp_enc_type="basic", backbone_source=None, backbone_path=None, no_imgnorm=False,
                                 no_txtnorm=False, margin=0.2, max_violation=True, optim="adam", learning_rate=8e-4)
    vse = vse_mod.VSEModel(vopt)
    vse.img_enc.load_state_dict(state)
    vse.txt_enc.load_state_dict(tstate)
    named = {**{f"txt.{k}": v for k, v in vse.txt_enc.named_parameters()},
             **{f"img.{k}": v for k, v in vse.img_enc.named_parameters()}}
    ours_names = set(vseinf_adamw_step(seed))
    extra = sorted(set(named) - ours_names)  # the never-applied BatchNorm: no gradient, as in training
    grads = adamw_grads({k: v for k, v in named.items() if k in ours_names}, seed)
    for k, p in named.items():
        p.grad = grads[k].clone() if k in grads else None
    torch.nn.utils.clip_grad_norm_(vse.params, vse.grad_clip)
    vse.optimizer.step()
    off["vseinf/adamw_step_weights"] = torch.cat([named[k].detach().flatten() for k in sorted(ours_names)]).numpy()
    off["_adamw_extra"] = extra  # type: ignore[assignment]
    # ---- LR schedules: VSE++ adjust_learning_rate (every lr_update epochs), VSE infinity (at lr_update, lr_update2)
    train_pp = sh.load_file("vsepp_train", pp / "train.py")
    inf_train = sh.load_file("vseinf_train", inf / "train.py")
    for name, (lr, every, epochs, milestones) in schedules().items():
        p = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.Adam([p], lr=lr)
        opt = type("Opt", (), {"learning_rate": lr, "lr_update": every})()
        lrs = []
        for epoch in range(epochs):
            if milestones is None:
                train_pp.adjust_learning_rate(opt, optimizer, epoch)
            else:
                inf_train.adjust_learning_rate(opt, optimizer, epoch, milestones)
            lrs += [optimizer.param_groups[0]["lr"]] * STEPS_PER_EPOCH
        off[f"schedule/{name}"] = np.array(lrs)
    # ---- metrics: official evaluation functions on the same embeddings / similarity matrix
    ev = sh.load_file("vsepp_evaluation", pp / "evaluation.py")
    mi, mc = x["metric_img"].double().numpy(), x["metric_cap"].double().numpy()
    rep5 = np.repeat(mi, 5, axis=0)
    off["metrics/5cap"] = np.array([*ev.i2t(rep5, mc), *ev.t2i(rep5, mc)])
    folds = []
    for f in range(5):
        im, cap = rep5[f * 20:(f + 1) * 20], mc[f * 20:(f + 1) * 20]
        folds.append([*ev.i2t(im, cap), *ev.t2i(im, cap)])
    off["metrics/coco1k_folds"] = np.mean(np.array(folds), axis=0)
    inf_eval = sh.load_file("vseinf_evaluation_fns", inf / "lib" / "evaluation.py")
    sims = inf_eval.compute_sim(mi, mc)
    rows = np.array([*inf_eval.i2t(20, sims), *inf_eval.t2i(20, sims)])
    rep.compare("metrics/5cap (VSE infinity i2t/t2i on sims)", ours["metrics/5cap"], rows, keep=False)
    iapr = sh.load_file("iapr_evaluation", pp / "IAPRTC12" / "evaluationIAPRTC12.py")
    off["metrics/iapr_1to1"] = np.array([*iapr.i2t(mi, mc[:20]), *iapr.t2i(mi, mc[:20])])
    # ---- vocabulary, tokens and the precomp reader on files in the official layout
    vocab_mod = sh.load_file("vocab", pp / "vocab.py")
    data_mod = sh.load_file("vsepp_data", pp / "data.py")
    iapr_data = sh.load_file("iapr_data", pp / "IAPRTC12" / "data.py")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "f30k_precomp"
        folder.mkdir()
        for split, caps in CAPTIONS.items():
            (folder / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
        ov = vocab_mod.build_vocab(tmp, "f30k_precomp", vocab_mod.annotations, 4)
        off["vocab/size"] = np.array(len(ov))
        zv = Vocabulary.build(CAPTIONS["train"] + CAPTIONS["dev"], 4, "nltk")
        same_words = [ov.idx2word[i] for i in range(len(ov))] == zv.words
        rep.note("vocab/words (vocab.py build_vocab)", "equal" if same_words else "DIFFERENT")
        n_img = len(CAPTIONS["train"]) // 5
        feats = np.random.default_rng(seed).random((n_img, 3, 4)).astype(np.float32)
        np.save(folder / "train_ims.npy", feats)
        lsa = np.random.default_rng(seed + 1).standard_normal((len(CAPTIONS["train"]), 5))
        np.savetxt(folder / "train_svd.txt", lsa, delimiter=",")
        dset = data_mod.PrecompDataset(str(folder), "train", ov)
        toks = [dset[k][1].long().tolist() for k in range(10)]
        off["vocab/token_ids"] = np.array([t + [-1] * (20 - len(t)) for t in toks])
        from zsk.data.captions import read_lsa_matrix, read_precomp
        from zsk.tasks.retrieve.data import PrecompPairs, subset_split

        split = read_precomp(folder, "train", 5)
        pairs = PrecompPairs(split, zv, read_lsa_matrix(folder / "train_svd.txt", len(split.captions)))
        items = [pairs[k] for k in range(len(pairs))]
        rep.compare("reader/features per caption", torch.stack([it["image"] for it in items]),
                    torch.stack([dset[k][0] for k in range(len(dset))]), keep=False)
        rep.compare("reader/LSA rows (train_svd.txt)", torch.stack([it["lsa"] for it in items]),
                    torch.stack([dset[k][4] for k in range(len(dset))]), keep=False)
        batch = collate_pairs(items[:6])
        rep.compare("reader/img_index (ids // 5)", batch["img_index"], np.array([dset[k][3] for k in range(6)]),
                    keep=False)
        # dev: the official loaders cut it to 5,000 captions (VSE++ / VSE infinity) or 1,000 (IAPR copy)
        dev_imgs = 1100
        np.save(folder / "dev_ims.npy", np.zeros((dev_imgs, 1, 2), np.float32))
        (folder / "dev_caps.txt").write_text("\n".join(f"caption {i}" for i in range(dev_imgs * 5)) + "\n")
        dev = subset_split(read_precomp(folder, "dev", 5), 1000)
        rep.compare("reader/dev captions validated", dev.num_captions, len(data_mod.PrecompDataset(str(folder), "dev", ov)),
                    keep=False)
        np.save(folder / "dev_ims.npy", np.zeros((dev_imgs * 5, 1, 2), np.float32))
        dev1 = subset_split(read_precomp(folder, "dev", 1), 1000)
        rep.compare("reader/dev captions validated (IAPR, 1 per image)", dev1.num_captions,
                    len(iapr_data.PrecompDataset(str(folder), "dev", ov)), keep=False)
    # the official vocabulary pickles through zsk's restricted unpickler
    import pickle

    from zsk.tasks.retrieve.data import read_vocab_file

    diffs = []
    main_mod = sys.modules["__main__"]
    had = main_mod.__dict__.get("Vocabulary")
    main_mod.Vocabulary = vocab_mod.Vocabulary  # type: ignore[attr-defined]  # pickled as __main__.Vocabulary
    theirs_all = {}
    for pkl in sorted((pp / "vocab").glob("*.pkl")):
        with open(pkl, "rb") as f:
            theirs_all[pkl] = pickle.load(f)
    if had is not None:
        main_mod.Vocabulary = had  # type: ignore[attr-defined]
    for pkl, theirs in theirs_all.items():
        ours_words = read_vocab_file(pkl).words
        diffs.append(ours_words == [theirs.idx2word[i] for i in range(len(theirs))])
    rep.note(f"vocab/official .pkl files read ({len(diffs)})", "equal" if all(diffs) else "DIFFERENT")
    rep.note("tokenizer sentence split", f"nltk word_tokenize; {punkt}")
    return off


ROW_NAMES = {
    "vsepp/param_count": "VSE++ parameter count",
    "vsepp/img_emb": "VSE++ image encoder (precomp, 36x2048 flattened)",
    "vsepp/cap_emb": "VSE++ GRU text encoder",
    "vsepp/lseh_margin": "LSEH margin matrix M (torch_cosine_sim)",
    "vsepp/lseh_caption": "VSE++ L_LSEH caption side (LeS)",
    "vsepp/lseh_image": "VSE++ L_LSEH image side (LeIm)",
    "vsepp/lseh_total": "VSE++ L_LSEH total",
    "vsepp/lmh": "L_MH (ContrastiveLoss, max_violation)",
    "vsepp/lsh": "L_SH (ContrastiveLoss, sum)",
    "iapr/lseh_div5_caption": "IAPR L_LSEH caption side, mask_ids=caption_index_div5 (IAPRTC12/model.py)",
    "iapr/lseh_div5_image": "IAPR L_LSEH image side, mask_ids=caption_index_div5",
    "iapr/lseh_div5_total": "IAPR L_LSEH total, mask_ids=caption_index_div5",
    "vsepp/step_grad": "VSE++ one Adam step: gradients",
    "vsepp/step_weights": "VSE++ one Adam step: weights (clip 2)",
    "vseinf/adamw_step_weights": "VSE inf one AdamW step (lr 8e-4, BERT x0.1, wd 1e-4, clip 2): weights",
    "vseinf/img_emb_eval": "VSE inf image encoder fc+MLP+GPO (eval)",
    "vseinf/img_emb_train": "VSE inf image encoder fc+MLP+GPO (train BN)",
    "vseinf/cap_emb": "VSE inf BERT + GPO text encoder",
    "vseinf/lseh_caption": "VSE inf L_LSEH caption side",
    "vseinf/lseh_image": "VSE inf L_LSEH image side",
    "vseinf/lseh_total": "VSE inf L_LSEH total",
    "schedule/vsepp_f30k": "LR schedule VSE++ F30K/COCO (2e-3, /10 every 2 ep, 30 ep)",
    "schedule/vsepp_iapr": "LR schedule VSE++ IAPR (8e-4, every 8 ep)",
    "schedule/vseinf": "LR schedule VSE inf (8e-4, /10 at ep 10 and 20)",
    "metrics/5cap": "i2t/t2i R@1,5,10 medr meanr (VSE++ evaluation)",
    "metrics/coco1k_folds": "COCO 1K five folds averaged",
    "metrics/iapr_1to1": "IAPR 1:1 i2t/t2i (evaluationIAPRTC12)",
    "vocab/size": "vocabulary size (vocab.py, train+dev, threshold 4)",
    "vocab/token_ids": "caption token ids (PrecompDataset)",
}


# ============================================================================ VSRN_LSEH and SGRAF_LSEH
# The other networks of the LSEH paper, figures saved separately as tests/parity/retrieve/retrieve_nets.*

N_B, N_REG, N_FEAT, N_VOCAB, N_WORD = 5, 36, 20, 30, 8
N_IDS = [0, 1, 5, 10, 11]  # caption indices: images 0, 0, 1, 2, 2
N_CAP_LENS = [9, 8, 6, 6, 3]  # sorted, as both official collate_fns sort the batch
VSRN_EMB, VSRN_HID, VSRN_CWORD, VSRN_MAXLEN = 24, 10, 6, 8  # max_len 8 < the longest caption: the cut is compared
SG_EMB, SG_SIM, SG_SHARD = 16, 12, 2
BLOCK_IMGS, BLOCK_CAPS = 5, 7  # score_blocks / shard_attn_scores gallery (shard 2: ragged edge blocks)


def nets_inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 21)
    tokens = torch.zeros(N_B, max(N_CAP_LENS), dtype=torch.long)
    for i, n in enumerate(N_CAP_LENS):
        tokens[i, :n] = torch.randint(4, N_VOCAB, (n,), generator=g)
        tokens[i, 0], tokens[i, n - 1] = 1, 2  # <start> ... <end>
    block_lens = [7, 5, 5, 4, 3, 3, 2]
    block_caps = torch.zeros(BLOCK_CAPS, max(block_lens), SG_EMB)
    for i, n in enumerate(block_lens):
        block_caps[i, :n] = torch.nn.functional.normalize(torch.randn(n, SG_EMB, generator=g), dim=1)
    return {"images": torch.rand(N_B, N_REG, N_FEAT, generator=g), "tokens": tokens,
            "cap_lens": torch.tensor(N_CAP_LENS), "lsa": torch.randn(N_B, 7, generator=g),
            "img_ids": torch.tensor(N_IDS) // 5,
            "block_imgs": torch.nn.functional.normalize(torch.randn(BLOCK_IMGS, N_REG, SG_EMB, generator=g), dim=2),
            "block_caps": block_caps, "block_lens": torch.tensor(block_lens),
            "sims": torch.rand(6, 30, generator=g)}


def vsrn_parts(seed: int, batch_norm: bool):
    from zsk.tasks.retrieve.model_vsrn import CaptionGenerator, VSRNImageEncoder

    img = VSRNImageEncoder(N_FEAT, VSRN_EMB, 4, batch_norm)
    txt = GRUTextEncoder(N_VOCAB, N_WORD, VSRN_EMB, 1)
    cap = CaptionGenerator(N_VOCAB, VSRN_EMB, VSRN_HID, VSRN_CWORD, VSRN_MAXLEN, 0.2)
    for k, m in enumerate((img, txt, cap)):
        fill(m, seed + 30 + k)
    return img, txt, cap


def sgraf_parts(seed: int, module: str):
    from zsk.tasks.retrieve.model_sgraf import LocalImageEncoder, LocalTextEncoder, SimilarityNetwork

    img = LocalImageEncoder(N_FEAT, SG_EMB)
    txt = LocalTextEncoder(N_VOCAB, N_WORD, SG_EMB, 1, 0.4)
    sim = SimilarityNetwork(SG_EMB, SG_SIM, module, 3, N_REG, 0.4, 9.0)
    for k, m in enumerate((img, txt, sim)):
        fill(m, seed + 40 + k, scale=0.5)  # large enough that the sigmoid scores spread well beyond the tolerance
    return img, txt, sim


def no_dropout_train(*modules: torch.nn.Module) -> None:
    """Training mode (BatchNorm on batch statistics) with dropout off, so both sides are deterministic."""
    for m in modules:
        m.train()
        for sub in m.modules():
            if isinstance(sub, torch.nn.Dropout):
                sub.eval()


def vsrn_name(name: str) -> str:
    """A zsk VSRN image encoder parameter name as VSRN_LSEH's EncoderImagePrecompAttn spells it."""
    if name.startswith("gcn."):
        k, rest = name[4:].split(".", 1)
        return f"Rs_GCN_{int(k) + 1}.{rest}"
    return name.replace("gsr.", "img_rnn.")


CAPTIONER_NAMES = {"vid2hid.": "encoder.vid2hid.", "encoder_rnn.": "encoder.rnn.", "embedding.": "decoder.embedding.",
                   "attention.": "decoder.attention.", "decoder_rnn.": "decoder.rnn.", "out.": "decoder.out."}


def captioner_name(name: str) -> str:
    for ours, theirs in CAPTIONER_NAMES.items():
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise KeyError(name)


def vsrn_label_captions() -> list[str]:
    return CAPTIONS["train"][:10]


def nets_zsk_side(seed: int = 0) -> dict[str, np.ndarray]:
    """zsk's numbers for VSRN_LSEH and SGRAF_LSEH (no official code needed)."""
    from zsk.metrics.retrieval import retrieval_metrics
    from zsk.tasks.retrieve.model_sgraf import LocalCaptions, score_blocks
    from zsk.tasks.retrieve.model_vsrn import caption_targets

    x = nets_inputs(seed)
    out: dict[str, np.ndarray] = {}
    margin = semantic_margin(x["lsa"], x["img_ids"])
    loss_fn = RankingLoss(LossConfig(kind="lseh"))
    for tag, bn in (("f30k", True), ("coco", False)):
        img, txt, cap = vsrn_parts(seed, bn)
        out[f"vsrn_{tag}/param_count"] = np.array(sum(p.numel() for p in img.parameters()))
        for mode in ("eval", "train"):
            img.train(mode == "train")
            emb, regions = img.reason(x["images"])
            out[f"vsrn_{tag}/img_emb_{mode}"] = emb.detach().numpy()
            out[f"vsrn_{tag}/regions_{mode}"] = regions.detach().numpy()
        img.eval()
        ie, regions = img.reason(x["images"])
        ce = txt(x["tokens"], x["cap_lens"])
        if tag == "f30k":
            out["vsrn/cap_emb"] = ce.detach().numpy()
        scores = ie @ ce.T
        out[f"vsrn_{tag}/lseh_total"] = loss_fn.from_scores(scores, x["img_ids"], x["lsa"]).detach().numpy()
        out[f"vsrn_{tag}/lmh"] = loss_terms(scores, 0.2)[0].detach().numpy()
        cap.eval()
        labels, masks = caption_targets(x["tokens"], x["cap_lens"], VSRN_MAXLEN, 2)
        out[f"vsrn_{tag}/caption_loss"] = cap.loss(regions, labels, masks).detach().numpy()
    # the caption labels and masks of the official PrecompDataset (max_len 8: long captions are cut)
    vocab = Vocabulary.build(CAPTIONS["train"] + CAPTIONS["dev"], 4, "nltk")
    ids = [vocab.encode(c) for c in vsrn_label_captions()]
    lens = torch.tensor([len(t) for t in ids])
    toks = torch.zeros(len(ids), int(lens.max()), dtype=torch.long)
    for j, t in enumerate(ids):
        toks[j, : len(t)] = torch.tensor(t)
    labels, masks = caption_targets(toks, lens, VSRN_MAXLEN, vocab.index["<end>"])
    out["vsrn/caption_labels"], out["vsrn/caption_masks"] = labels.numpy(), masks.numpy()
    # SGRAF
    for module in ("SGR", "SAF"):
        key = module.lower()
        img, txt, sim = sgraf_parts(seed, module)
        out[f"{key}/param_count"] = np.array(sum(p.numel() for m in (img, txt, sim) for p in m.parameters()))
        for m in (img, txt, sim):
            m.eval()
        il, cl = img(x["images"]), txt(x["tokens"], x["cap_lens"])
        if module == "SGR":
            out["sgraf/img_local"], out["sgraf/cap_local"] = il.detach().numpy(), cl.detach().numpy()
        out[f"{key}/sims_eval"] = sim(il, cl, N_CAP_LENS).detach().numpy()
        no_dropout_train(img, txt, sim)
        sims = sim(img(x["images"]), txt(x["tokens"], x["cap_lens"]), N_CAP_LENS)
        out[f"{key}/sims_train"] = sims.detach().numpy()
        for name, value in zip(("total", "caption", "image"), loss_terms(sims, margin), strict=True):
            out[f"{key}/lseh_{name}"] = value.detach().numpy()
        out[f"{key}/lseh_loss_module"] = loss_fn.from_scores(sims, x["img_ids"], x["lsa"]).detach().numpy()
        sim.eval()
        model = type("M", (), {"similarity": lambda self, a, b, c, s=sim: s(a, b, c)})()
        caps = LocalCaptions([x["block_caps"][j, :n] for j, n in enumerate(x["block_lens"].tolist())])
        out[f"{key}/score_blocks"] = score_blocks(model, x["block_imgs"], caps, SG_SHARD).numpy()  # type: ignore[arg-type]
    out["sgraf/metrics"] = metric_rows(retrieval_metrics(x["sims"], 5))
    out["vsrn_f30k/train_grad"] = vsrn_train_grads(seed)
    for module in ("SGR", "SAF"):
        grads, weights = sgraf_step(seed, module)
        out[f"{module.lower()}/step_grad"], out[f"{module.lower()}/step_weights"] = grads, weights
    out.update(vsrn_quirk_steps(seed, "twice"))
    out.update(vsrn_quirk_steps(seed, "once"))
    return out


def vsrn_named(img: torch.nn.Module, txt: torch.nn.Module, cap: torch.nn.Module) -> dict[str, torch.Tensor]:
    """VSRN parameters under the official names: ``img.<EncoderImagePrecompAttn>``, ``txt.``, ``cap.<S2VTAttModel>``."""
    return {**{f"img.{vsrn_name(k)}": p for k, p in img.named_parameters()},
            **{f"txt.{k}": p for k, p in txt.named_parameters()},
            **{f"cap.{captioner_name(k)}": p for k, p in cap.named_parameters()}}


def vsrn_official_named(img: torch.nn.Module, txt: torch.nn.Module, cap: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**{f"img.{k}": p for k, p in img.named_parameters()}, **{f"txt.{k}": p for k, p in txt.named_parameters()},
            **{f"cap.{k}": p for k, p in cap.named_parameters()}}


def vsrn_train_grads(seed: int) -> np.ndarray:
    """Gradients of VSRN's training loss (L_LSEH + caption loss, F30K branch, training BatchNorm, dropout off)
    through zsk's step function, by official parameter name."""
    from zsk.tasks.retrieve.model_vsrn import VSRNModel
    from zsk.tasks.retrieve.train import make_step_fn

    x = nets_inputs(seed)
    img, txt, cap = vsrn_parts(seed, True)
    model = VSRNModel(img, txt, cap, end_id=2)
    no_dropout_train(model)
    batch = {"image": x["images"], "img_lengths": None, "tokens": x["tokens"], "cap_lengths": x["cap_lens"],
             "img_index": x["img_ids"], "index": torch.tensor(N_IDS), "lsa": x["lsa"]}
    make_step_fn(RankingLoss(LossConfig(kind="lseh")), 10)(model, batch, 0)["loss"].backward()
    named = vsrn_named(img, txt, cap)
    return torch.cat([named[k].grad.flatten() for k in sorted(named)]).numpy()


def sgraf_flat(parts: dict[str, torch.nn.Module], attr: str) -> np.ndarray:
    """Parameters (``attr`` "data") or gradients ("grad") of img/txt/sim modules, flattened in name order."""
    named = {f"{tag}.{k}": p for tag, m in parts.items() for k, p in m.named_parameters()}
    return torch.cat([getattr(named[k], attr).detach().flatten() for k in sorted(named)]).numpy()


def sgraf_step(seed: int, module: str) -> tuple[np.ndarray, np.ndarray]:
    """One zsk training step of SGR/SAF (step function, L_LSEH, clip 2, Adam lr 4e-4: SGRAF_LSEH opts.py), dropout
    off: (gradients after clipping, updated weights)."""
    from zsk.tasks.retrieve.model_sgraf import SGRAFModel
    from zsk.tasks.retrieve.train import make_step_fn

    x = nets_inputs(seed)
    img, txt, sim = sgraf_parts(seed, module)
    model = SGRAFModel(img, txt, sim)
    no_dropout_train(model)
    tcfg = TrainConfig(optimizer="adam", lr=4e-4, clip_grad_norm=2.0)
    opt = build_optimizer([{"params": list(model.parameters())}], tcfg)
    batch = {"image": x["images"], "img_lengths": None, "tokens": x["tokens"], "cap_lengths": x["cap_lens"],
             "img_index": x["img_ids"], "index": torch.tensor(N_IDS), "lsa": x["lsa"]}
    out = make_step_fn(RankingLoss(LossConfig(kind="lseh")), 10)(model, batch, 0)
    opt.zero_grad()
    out["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.clip_grad_norm)  # as the Trainer does
    parts = {"img": img, "txt": txt, "sim": sim}
    grads = sgraf_flat(parts, "grad")
    opt.step()
    return grads, sgraf_flat(parts, "data")


VSRN_STEPS = 2  # two iterations: the second shows Adam's state after the doubled captioner steps


def vsrn_batch(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"image": x["images"], "img_lengths": None, "tokens": x["tokens"], "cap_lengths": x["cap_lens"],
            "img_index": x["img_ids"], "index": torch.tensor(N_IDS), "lsa": x["lsa"]}


def vsrn_quirk_steps(seed: int, captioner_params: str = "twice") -> dict[str, np.ndarray]:
    """``VSRN_STEPS`` zsk training steps of VSRN (F30K branch, L_LSEH + caption loss, training BatchNorm, dropout
    off) through the Trainer with ``train.captioner_params`` (Adam 4e-4, clip 2: VSRN_LSEH train.py). Per step,
    by official parameter name: the gradients the optimizer sees (after the clip), the weights after the step;
    and Adam's step count of every parameter at the end."""
    from zsk.core.run import start_run
    from zsk.core.trainer import Trainer
    from zsk.tasks.retrieve.config import Config
    from zsk.tasks.retrieve.model_vsrn import VSRNModel
    from zsk.tasks.retrieve.train import make_step_fn, param_groups

    x = nets_inputs(seed)
    img, txt, cap = vsrn_parts(seed, True)
    model = VSRNModel(img, txt, cap, end_id=2)
    named = vsrn_named(img, txt, cap)
    names = sorted(named)
    out: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = start_run("retrieve", Config, None, [
            "model.base=vsrn", "train.optimizer=adam", "train.lr=4e-4", "train.clip_grad_norm=2.0",
            f"train.steps={VSRN_STEPS}", f"train.captioner_params={captioner_params}"], out=Path(tmp) / "run",
            device="cpu")
        trainer = Trainer(ctx, model, ctx.cfg.train, make_step_fn(RankingLoss(LossConfig(kind="lseh")), 10),
                          lambda epoch, start: [], 1, param_groups=param_groups(model, ctx.cfg))
        seen: list[np.ndarray] = []

        def record(opt, args, kwargs) -> None:  # noqa: ANN001 - the first optimizer.step() of a training step
            if len(seen) < trainer.step + 1:
                seen.append(torch.cat([named[k].grad.flatten() for k in names]).numpy().copy())

        trainer.optimizer.register_step_pre_hook(record)
        no_dropout_train(model)
        for k in range(VSRN_STEPS):
            trainer.train_step(vsrn_batch(x))
            tag = "" if k == 0 else str(k + 1)
            out[f"vsrn_{captioner_params}/step{tag}_grad"] = seen[k]
            out[f"vsrn_{captioner_params}/step{tag}_weights"] = torch.cat(
                [named[n].detach().flatten() for n in names]).numpy().copy()
        out[f"vsrn_{captioner_params}/adam_steps"] = np.array(
            [int(trainer.optimizer.state[named[n]]["step"]) for n in names])
    return out


def vsrn_weights_mask(seed: int = 0) -> np.ndarray:
    """Which of VSRN's flattened parameters (official names, sorted) the updated-weight rows compare: all but the
    biases of the GCN convolutions ``Rs_GCN_k.W.0``. A training-mode BatchNorm follows them, so their exact
    gradient is 0; both sides give fp32 noise (|g| < 2e-6) there, and Adam's sign-like steps on it differ."""
    named = vsrn_named(*vsrn_parts(seed, True))
    return np.concatenate([np.full(named[k].numel(), not (k.startswith("img.Rs_GCN_") and k.endswith(".W.0.bias")))
                           for k in sorted(named)])


def run_official_nets(root: Path, seed: int, rep: Report) -> dict[str, np.ndarray]:
    """The official VSRN_LSEH and SGRAF_LSEH modules on the same weights and inputs."""
    import types

    import retrieve_shims as sh

    x = nets_inputs(seed)
    off: dict[str, np.ndarray] = {}
    vr = root / "VSRN_LSEH"
    sh.vsrn_stubs()
    with sh.official_path(vr, ("models", "misc", "GCN_lib")):
        vmodel = sh.load_file("vsrn_model", vr / "model.py")
        import misc.utils as vutils  # noqa: PLC0415 - from the checkout
        from models import DecoderRNN, EncoderRNN, S2VTAttModel  # noqa: PLC0415
        vdata = sh.load_file("vsrn_data", vr / "data.py")
    crit = vutils.LanguageModelCriterion()
    for tag, bn in (("f30k", True), ("coco", False)):
        zimg, ztxt, zcap = vsrn_parts(seed, bn)
        oimg = vmodel.EncoderImagePrecompAttn(N_FEAT, VSRN_EMB, "f30k_precomp" if bn else "coco_precomp")
        torch.nn.Module.load_state_dict(oimg, {vsrn_name(k): v for k, v in zimg.state_dict().items()})
        otxt = vmodel.EncoderText(N_VOCAB, N_WORD, VSRN_EMB, 1)
        otxt.load_state_dict(ztxt.state_dict())
        enc = EncoderRNN(VSRN_EMB, VSRN_HID, bidirectional=0, input_dropout_p=0.2, rnn_cell="gru", rnn_dropout_p=0.5)
        dec = DecoderRNN(N_VOCAB, VSRN_MAXLEN, VSRN_HID, VSRN_CWORD, input_dropout_p=0.2, rnn_cell="gru",
                         rnn_dropout_p=0.5, bidirectional=0)
        capm = S2VTAttModel(enc, dec)
        capm.load_state_dict({captioner_name(k): v for k, v in zcap.state_dict().items()})
        off[f"vsrn_{tag}/param_count"] = np.array(sum(p.numel() for p in oimg.parameters()))
        for mode in ("eval", "train"):
            oimg.train(mode == "train")
            emb, regions = oimg(x["images"])
            off[f"vsrn_{tag}/img_emb_{mode}"] = emb.detach().numpy()
            off[f"vsrn_{tag}/regions_{mode}"] = regions.detach().numpy()
        oimg.eval()
        ie, regions = oimg(x["images"])
        ce = otxt(x["tokens"], x["cap_lens"].tolist())
        if tag == "f30k":
            off["vsrn/cap_emb"] = ce.detach().numpy()
        with sh.cuda_branch():
            lseh = vmodel.ContrastiveLossLSEH(margin=0.2, a=0.185, b=0.025, max_violation=True)
            total = lseh(ie, ce, x["lsa"], N_IDS, x["img_ids"].tolist())
            lmh = vmodel.ContrastiveLoss(margin=0.2, max_violation=True)(ie, ce)
        off[f"vsrn_{tag}/lseh_total"] = total.detach().numpy()
        off[f"vsrn_{tag}/lmh"] = lmh.detach().numpy()
        capm.eval()
        from zsk.tasks.retrieve.model_vsrn import caption_targets

        labels, masks = caption_targets(x["tokens"], x["cap_lens"], VSRN_MAXLEN, 2)
        seq_probs, _ = capm(regions, labels, "train")
        off[f"vsrn_{tag}/caption_loss"] = crit(seq_probs, labels[:, 1:], masks[:, 1:]).detach().numpy()
    # VSRN.train_emb's loss (retrieval + caption) and its gradients, before the optimizer (whose duplicated
    # captioner parameters are the documented difference), F30K branch, training BatchNorm, dropout off
    from zsk.tasks.retrieve.model_vsrn import caption_targets

    zimg, ztxt, zcap = vsrn_parts(seed, True)
    oimg = vmodel.EncoderImagePrecompAttn(N_FEAT, VSRN_EMB, "f30k_precomp")
    torch.nn.Module.load_state_dict(oimg, {vsrn_name(k): v for k, v in zimg.state_dict().items()})
    otxt = vmodel.EncoderText(N_VOCAB, N_WORD, VSRN_EMB, 1)
    otxt.load_state_dict(ztxt.state_dict())
    capm = S2VTAttModel(EncoderRNN(VSRN_EMB, VSRN_HID, bidirectional=0, input_dropout_p=0.2, rnn_cell="gru",
                                   rnn_dropout_p=0.5),
                        DecoderRNN(N_VOCAB, VSRN_MAXLEN, VSRN_HID, VSRN_CWORD, input_dropout_p=0.2, rnn_cell="gru",
                                   rnn_dropout_p=0.5, bidirectional=0))
    capm.load_state_dict({captioner_name(k): v for k, v in zcap.state_dict().items()})
    no_dropout_train(oimg, otxt, capm)
    cap_emb = otxt(x["tokens"], x["cap_lens"].tolist())
    img_emb, regions = oimg(x["images"])
    labels, masks = caption_targets(x["tokens"], x["cap_lens"], VSRN_MAXLEN, 2)  # = the PrecompDataset's (below)
    seq_probs, _ = capm(regions, labels, "train")
    caption_loss = crit(seq_probs, labels[:, 1:], masks[:, 1:])
    with sh.cuda_branch():
        retrieval_loss = vmodel.ContrastiveLossLSEH(margin=0.2, a=0.185, b=0.025, max_violation=True)(
            img_emb, cap_emb, x["lsa"], N_IDS, x["img_ids"].tolist())
    (retrieval_loss + caption_loss).backward()
    named = vsrn_official_named(oimg, otxt, capm)
    off["vsrn_f30k/train_grad"] = torch.cat([named[k].grad.flatten() for k in sorted(named)]).numpy()
    off.update(vsrn_official_steps(vmodel, seed))
    # the official PrecompDataset's caption labels / masks on files in the official layout
    vocab_mod = sys.modules["vocab"] if "vocab" in sys.modules else sh.load_file("vocab", root / "VSEpp_LSEH" / "vocab.py")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "f30k_precomp"
        folder.mkdir()
        for split, caps in CAPTIONS.items():
            (folder / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
        ov = vocab_mod.build_vocab(tmp, "f30k_precomp", vocab_mod.annotations, 4)
        np.save(folder / "train_ims.npy", np.zeros((len(CAPTIONS["train"]) // 5, 2, 3), np.float32))
        np.savetxt(folder / "train_svd.txt", np.zeros((len(CAPTIONS["train"]), 3)), delimiter=",")
        dset = vdata.PrecompDataset(str(folder), "train", ov, types.SimpleNamespace(max_len=VSRN_MAXLEN))
        items = [dset[k] for k in range(len(vsrn_label_captions()))]
        off["vsrn/caption_labels"] = torch.stack([it[4] for it in items]).numpy()
        off["vsrn/caption_masks"] = torch.stack([it[5] for it in items]).numpy()
    # ---- SGRAF_LSEH
    sg = root / "SGRAF_LSEH"
    saved = {k: sys.modules.pop(k) for k in ("vocab", "data", "model") if k in sys.modules}
    try:
        with sh.official_path(sg, ()):
            smodel = sh.load_file("model", sg / "model.py")
            sh.load_file("vocab", sg / "vocab.py")
            sh.load_file("data", sg / "data.py")
            seval = sh.load_file("sgraf_evaluation", sg / "evaluation.py")
    finally:
        for k in ("vocab", "data", "model"):
            sys.modules.pop(k, None)
        sys.modules.update(saved)
    for module in ("SGR", "SAF"):
        key = module.lower()
        zimg, ztxt, zsim = sgraf_parts(seed, module)
        oimg = smodel.EncoderImage(N_FEAT, SG_EMB)
        otxt = smodel.EncoderText(N_VOCAB, N_WORD, SG_EMB, 1, use_bi_gru=True)
        osim = smodel.EncoderSimilarity(SG_EMB, SG_SIM, module, 3)
        oimg.load_state_dict(zimg.state_dict())
        otxt.load_state_dict(ztxt.state_dict())
        osim.load_state_dict(zsim.state_dict())
        off[f"{key}/param_count"] = np.array(sum(p.numel() for m in (oimg, otxt, osim) for p in m.parameters()))
        for m in (oimg, otxt, osim):
            m.eval()
        il, cl = oimg(x["images"]), otxt(x["tokens"], N_CAP_LENS)
        if module == "SGR":
            off["sgraf/img_local"], off["sgraf/cap_local"] = il.detach().numpy(), cl.detach().numpy()
        off[f"{key}/sims_eval"] = osim(il, cl, N_CAP_LENS).detach().numpy()
        no_dropout_train(oimg, otxt, osim)
        sims = osim(oimg(x["images"]), otxt(x["tokens"], N_CAP_LENS), N_CAP_LENS)
        off[f"{key}/sims_train"] = sims.detach().numpy()
        with sh.cuda_branch():
            res = smodel.ContrastiveLossLSEH(margin=0.185, max_violation=True)(sims, N_IDS, x["img_ids"].tolist(),
                                                                                x["lsa"])
        for name, value in zip(("total", "caption", "image"), res, strict=True):
            off[f"{key}/lseh_{name}"] = value.detach().numpy()
        off[f"{key}/lseh_loss_module"] = res[0].detach().numpy()
        osim.eval()
        wrapper = types.SimpleNamespace(forward_sim=lambda im, ca, lens, s=osim: s(im, ca, lens))
        off[f"{key}/score_blocks"] = seval.shard_attn_scores(
            wrapper, x["block_imgs"].double().numpy(), x["block_caps"].double().numpy(), x["block_lens"].tolist(),
            None, shard_size=SG_SHARD)
    for module in ("SGR", "SAF"):  # one SGRAF.train_emb step (LSEH loss, clip 2, Adam 4e-4), dropout off
        zimg, ztxt, zsim = sgraf_parts(seed, module)
        sopt = types.SimpleNamespace(grad_clip=2.0, img_dim=N_FEAT, embed_size=SG_EMB, no_imgnorm=False,
                                     vocab_size=N_VOCAB, word_dim=N_WORD, num_layers=1, bi_gru=True, no_txtnorm=False,
                                     sim_dim=SG_SIM, module_name=module, sgr_step=3, margin=0.185,
                                     max_violation=True, learning_rate=4e-4)
        net = smodel.SGRAF(sopt)
        net.img_enc.load_state_dict(zimg.state_dict())
        net.txt_enc.load_state_dict(ztxt.state_dict())
        net.sim_enc.load_state_dict(zsim.state_dict())
        net.train_start()
        no_dropout_train(net.img_enc, net.txt_enc, net.sim_enc)
        net.logger = types.SimpleNamespace(update=lambda *a, **k: None)
        # SGRAF.train_emb's lines, with only the loss under the CUDA branch (its masks; Adam must see the CPU)
        img_embs, cap_embs, cap_lens = net.forward_emb(x["images"], x["tokens"], N_CAP_LENS)
        sims = net.forward_sim(img_embs, cap_embs, cap_lens)
        net.optimizer.zero_grad()
        with sh.cuda_branch():
            loss = net.forward_loss(sims, N_IDS, x["img_ids"].tolist(), x["lsa"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.params, net.grad_clip)
        grads_before_step = {id(p): p.grad.clone() for p in net.params}
        net.optimizer.step()
        assert all(torch.equal(p.grad, grads_before_step[id(p)]) for p in net.params)
        parts = {"img": net.img_enc, "txt": net.txt_enc, "sim": net.sim_enc}
        off[f"{module.lower()}/step_grad"] = sgraf_flat(parts, "grad")
        off[f"{module.lower()}/step_weights"] = sgraf_flat(parts, "data")
    sims = x["sims"].double().numpy()
    off["sgraf/metrics"] = np.array([*seval.i2t(np.zeros((6, 1)), None, None, sims),
                                     *seval.t2i(np.zeros((6, 1)), None, None, sims)])
    return off


def vsrn_official_steps(vmodel, seed: int) -> dict[str, np.ndarray]:  # noqa: ANN001 - VSRN_LSEH's model.py
    """``VSRN_STEPS`` official training steps: the optimizer as ``VSRN.__init__`` builds it (``torch.optim.Adam``
    over txt_enc + img_enc + decoder + encoder + caption_model, the captioner's parameters listed twice) and
    the lines of ``VSRN.train_emb`` (forward_emb, calcualte_caption_loss, forward_loss, backward,
    ``clip_grad_norm_(self.params, 2)``, ``optimizer.step()``), F30K branch, training BatchNorm, dropout off.
    Current torch accepts the duplicated list with a warning and on the CPU steps it with its single-tensor
    for-loop, which updates a parameter once per list entry, as torch 1.7.1's Adam did."""
    import types
    import warnings

    import retrieve_shims as sh

    from zsk.tasks.retrieve.model_vsrn import caption_targets

    x = nets_inputs(seed)
    zimg, ztxt, zcap = vsrn_parts(seed, True)
    opt = types.SimpleNamespace(
        data_name="f30k_precomp", img_dim=N_FEAT, embed_size=VSRN_EMB, finetune=False, cnn_type="vgg19",
        use_abs=False, no_imgnorm=False, vocab_size=N_VOCAB, word_dim=N_WORD, num_layers=1, dim_vid=VSRN_EMB,
        dim_hidden=VSRN_HID, bidirectional=0, input_dropout_p=0.2, rnn_type="gru", rnn_dropout_p=0.5,
        max_len=VSRN_MAXLEN, dim_word=VSRN_CWORD, margin=0.2, a=0.185, b=0.025, measure="cosine",
        max_violation=True, learning_rate=4e-4, grad_clip=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimizer contains a parameter group with duplicate parameters"
        net = vmodel.VSRN(opt)
    listed = {id(p) for p in net.params}
    assert len(net.params) > len(listed)  # the official list holds parameters twice ...
    assert net.optimizer.defaults.get("foreach") is None and all(p.device.type == "cpu" for p in net.params)
    # ... and on CPU tensors Adam's default is the single-tensor for-loop (foreach only for CUDA tensors)
    torch.nn.Module.load_state_dict(net.img_enc, {vsrn_name(k): v for k, v in zimg.state_dict().items()})
    net.txt_enc.load_state_dict(ztxt.state_dict())
    net.caption_model.load_state_dict({captioner_name(k): v for k, v in zcap.state_dict().items()})
    net.train_start()
    no_dropout_train(net.img_enc, net.txt_enc, net.caption_model)
    net.logger = types.SimpleNamespace(update=lambda *a, **k: None)
    named = vsrn_official_named(net.img_enc, net.txt_enc, net.caption_model)
    names = sorted(named)
    labels, masks = caption_targets(x["tokens"], x["cap_lens"], VSRN_MAXLEN, 2)  # = the PrecompDataset's
    out: dict[str, np.ndarray] = {}
    for k in range(VSRN_STEPS):
        img_emb, cap_emb, gcn_img_emd = net.forward_emb(x["images"], x["tokens"], x["cap_lens"].tolist())
        net.optimizer.zero_grad()
        with sh.no_cuda_sync():
            caption_loss = net.calcualte_caption_loss(gcn_img_emd, labels, masks)
        net.optimizer.zero_grad()
        with sh.cuda_branch():  # the loss builds its masks under torch.cuda.is_available(); Adam must see the CPU
            retrieval_loss = net.forward_loss(img_emb, cap_emb, x["lsa"], N_IDS, x["img_ids"].tolist())
        (retrieval_loss + caption_loss).backward()
        if net.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.params, net.grad_clip)
        tag = "" if k == 0 else str(k + 1)
        out[f"vsrn_twice/step{tag}_grad"] = torch.cat([named[n].grad.flatten() for n in names]).numpy().copy()
        net.optimizer.step()
        out[f"vsrn_twice/step{tag}_weights"] = torch.cat([named[n].detach().flatten() for n in names]).numpy().copy()
    out["vsrn_twice/adam_steps"] = np.array([int(net.optimizer.state[named[n]]["step"]) for n in names])
    return out


NETS_ROW_NAMES = {
    "vsrn_f30k/param_count": "VSRN image encoder parameter count (F30K branch: BatchNorm)",
    "vsrn_f30k/img_emb_eval": "VSRN image encoder fc+4 GCN+GRU+BN (F30K branch, eval)",
    "vsrn_f30k/img_emb_train": "VSRN image encoder (F30K branch, train BN)",
    "vsrn_f30k/regions_eval": "VSRN reasoned regions for the captioner (F30K, eval)",
    "vsrn_f30k/regions_train": "VSRN reasoned regions (F30K, train BN)",
    "vsrn_coco/param_count": "VSRN image encoder parameter count (COCO branch)",
    "vsrn_coco/img_emb_eval": "VSRN image encoder (COCO branch: l2norm after fc, eval)",
    "vsrn_coco/img_emb_train": "VSRN image encoder (COCO branch, train BN)",
    "vsrn_coco/regions_eval": "VSRN reasoned regions (COCO, eval)",
    "vsrn_coco/regions_train": "VSRN reasoned regions (COCO, train BN)",
    "vsrn/cap_emb": "VSRN GRU text encoder",
    "vsrn_f30k/lseh_total": "VSRN L_LSEH (ContrastiveLossLSEH a=0.185 b=0.025), F30K weights",
    "vsrn_coco/lseh_total": "VSRN L_LSEH, COCO weights",
    "vsrn_f30k/lmh": "VSRN L_MH (ContrastiveLoss, max_violation)",
    "vsrn_coco/lmh": "VSRN L_MH, COCO weights",
    "vsrn_f30k/caption_loss": "VSRN caption loss (S2VTAttModel + LanguageModelCriterion)",
    "vsrn_coco/caption_loss": "VSRN caption loss, COCO weights",
    "vsrn_f30k/train_grad": "VSRN training loss (L_LSEH + caption loss) gradients / max|g|, train BN, dropout off",
    "vsrn/caption_labels": "VSRN caption labels (PrecompDataset, max_len 8 cut)",
    "vsrn/caption_masks": "VSRN caption masks (PrecompDataset)",
    "sgr/param_count": "SGR parameter count (encoders + similarity network)",
    "saf/param_count": "SAF parameter count",
    "sgraf/img_local": "SGRAF image encoder (local regions)",
    "sgraf/cap_local": "SGRAF BiGRU text encoder (local words)",
    "sgr/sims_eval": "SGR pair scores (eval)",
    "sgr/sims_train": "SGR pair scores (train BN, dropout off)",
    "saf/sims_eval": "SAF pair scores (eval)",
    "saf/sims_train": "SAF pair scores (train BN per caption, dropout off)",
    "sgr/lseh_total": "SGR L_LSEH total (SGRAF ContrastiveLossLSEH margin 0.185)",
    "sgr/lseh_caption": "SGR L_LSEH caption side",
    "sgr/lseh_image": "SGR L_LSEH image side",
    "sgr/lseh_loss_module": "SGR L_LSEH through zsk's RankingLoss.from_scores",
    "saf/lseh_total": "SAF L_LSEH total",
    "saf/lseh_caption": "SAF L_LSEH caption side",
    "saf/lseh_image": "SAF L_LSEH image side",
    "saf/lseh_loss_module": "SAF L_LSEH through zsk's RankingLoss.from_scores",
    "sgr/score_blocks": "SGR score_blocks vs shard_attn_scores (shard 2, 5 x 7 gallery)",
    "saf/score_blocks": "SAF score_blocks vs shard_attn_scores (shard 2)",
    "sgraf/metrics": "SGRAF i2t/t2i R@1,5,10 medr meanr on a score matrix (evaluation.py)",
    "sgr/step_grad": "SGR one training step (SGRAF.train_emb): gradients after clip 2",
    "sgr/step_weights": "SGR one Adam step (lr 4e-4): weights",
    "saf/step_grad": "SAF one training step: gradients after clip 2",
    "saf/step_weights": "SAF one Adam step: weights",
    "vsrn_twice/step_grad": "VSRN step 1, official optimizer (captioner listed twice) vs captioner_params twice: "
                            "gradients after clip 2",
    "vsrn_twice/step_weights": "VSRN step 1, captioner listed twice: Adam-updated weights",
    "vsrn_twice/step2_grad": "VSRN step 2, captioner listed twice: gradients after clip 2",
    "vsrn_twice/step2_weights": "VSRN step 2, captioner listed twice: Adam-updated weights",
    "vsrn_twice/adam_steps": "VSRN captioner listed twice: Adam step count per parameter after 2 steps",
}
VSRN_ONCE_ROW = "VSRN step 1 weights, zsk default captioner_params once vs the official list"
VSRN_ONCE_GRAD_ROW = "VSRN step 1 gradients after clip 2, zsk default captioner_params once vs the official list"


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    root = add_official(args.official)
    cpu_shims()
    torch.manual_seed(args.seed)
    rep = Report("retrieve", official_commit(root))
    ours = zsk_side(args.seed)
    off = run_official(root, args.seed, rep, ours)
    same_grads = zsk_side(args.seed, grads=off.pop("_grads"))  # type: ignore[arg-type]
    idx = kept(ours["vsepp/step_grad"].size, args.seed)
    for key, label in ROW_NAMES.items():
        if key == "vseinf/param_count":
            continue
        if key == "vsepp/step_weights":
            rep.compare(key, same_grads[key], off[key])
            rep.rows[-1] = (label + ", same gradients", *rep.rows[-1][1:])
            big = np.abs(off["vsepp/step_grad"]) >= GRAD_FLOOR
            rep.compare("step_weights_own_grads", ours[key][big], off[key][big], keep=False)
            rep.rows[-1] = (f"{label}, own gradients, |g| >= {GRAD_FLOOR:g}", *rep.rows[-1][1:])
        else:
            rep.compare(key, ours[key], off[key])
            rep.rows[-1] = (label, *rep.rows[-1][1:])
        if key.startswith("vsepp/step_"):
            rep.figures[key] = rep.figures[key][idx]
        if key == "vseinf/adamw_step_weights":
            rep.figures[key] = rep.figures[key][kept(ours[key].size, args.seed)]
    gap = float(abs(ours["iapr/lseh_image_mask_total"] - off["iapr/lseh_div5_total"]))
    rep.rows.append(("IAPR L_LSEH total, zsk default mask_ids=image vs official", gap,
                     "differs by design: the official mask zeroes unrelated pairs (i == j // 5)"))
    bf = bf16_effect(args.seed)
    rep.rows.append((BF16_ROW, bf["loss_abs_diff"],
                     f"measured: loss {bf['loss_fp32']:.4f} off by {bf['loss_abs_diff']:.2g}; gradients max abs diff "
                     f"{bf['grad_max_abs_diff']:.2g} (max |g| {bf['grad_max_abs_fp32']:.2g}), cosine {bf['grad_cosine']:.6f}"))
    diff = int(off["vseinf/param_count"]) - int(ours["vseinf/param_count"])
    rep.note("VSE inf parameter count",
             f"official +{diff}: its MLP builds a BatchNorm for the output layer that forward never applies")
    extra = off.pop("_adamw_extra")
    rep.note("VSE inf AdamW step: official-only parameters",
             f"{len(extra)} tensors ({', '.join(extra)}): the unused BatchNorm, no gradient, not updated")
    rep.note("VSE inf token augmentation / raw-image paths",
             "not compared (see docs/fidelity.md)")
    rep.print()
    rep.save(args.save, {"seed": args.seed, "bf16": bf})
    # ---- VSRN_LSEH and SGRAF_LSEH
    nets = Report("retrieve_nets", rep.commit)
    ours_nets = nets_zsk_side(args.seed)
    off_nets = run_official_nets(root, args.seed, nets)
    for key, label in NETS_ROW_NAMES.items():
        if key == "vsrn_f30k/train_grad":  # relative to the largest gradient (8.5 here): the GCN convolutions'
            # biases feed a training-mode BatchNorm, so their exact gradient is 0 and both sides give fp32 noise
            scale = float(np.abs(off_nets[key]).max())
            nets.compare(key, ours_nets[key] / scale, off_nets[key] / scale, keep=False)
            nets.figures[key] = off_nets[key]
        elif key.startswith("vsrn_twice/") and key.endswith("_weights"):  # all but the GCN biases before BatchNorm
            keep = vsrn_weights_mask(args.seed)
            nets.compare(key, ours_nets[key][keep], off_nets[key][keep], keep=False)
            nets.figures[key] = off_nets[key]
            label = f"{label} (all but the {int((~keep).sum())} GCN biases before BatchNorm, exact gradient 0)"
        elif key.endswith("/step_weights"):  # Adam's first step is sign-like where |g| is at fp32 noise level
            big = np.abs(off_nets[key.replace("weights", "grad")]) >= GRAD_FLOOR
            nets.compare(key, ours_nets[key][big], off_nets[key][big], keep=False)
            nets.figures[key] = off_nets[key]
            label = f"{label}, |g| >= {GRAD_FLOOR:g}"
        else:
            nets.compare(key, ours_nets[key], off_nets[key])
        nets.rows[-1] = (label, *nets.rows[-1][1:])
    keep = vsrn_weights_mask(args.seed)
    gap = float(np.abs(ours_nets["vsrn_once/step_weights"][keep] - off_nets["vsrn_twice/step_weights"][keep]).max())
    nets.rows.append((VSRN_ONCE_ROW, gap, "differs by design: zsk steps the captioner once and counts it once in "
                      "the clip (train.captioner_params: twice restores the official list)"))
    gap = float(np.abs(ours_nets["vsrn_once/step_grad"] - off_nets["vsrn_twice/step_grad"]).max())
    nets.rows.append((VSRN_ONCE_GRAD_ROW, gap, "differs by design: the official clip norm counts the captioner's "
                      "gradients twice and scales them twice"))
    nets.note("SGR/SAF dropout (word embeddings, self-attention)", "compared with dropout off in training mode "
              "(random masks differ between implementations); p = 0.4 as the official modules")
    nets.print()
    nets.save(args.save, {"seed": args.seed})
    sys.exit(0 if rep.ok and nets.ok else 1)


if __name__ == "__main__":
    main()
