"""LSEH (retrieve) against the official code, yangong23/VSEnetworksLSEH (Gong & Cosma, Pattern Recognition
2023), forks VSEpp_LSEH and VSEinfty_LSEH, fp32 on the CPU.

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

:func:`zsk_side` needs no official code: tests/parity/test_retrieve_parity.py replays it against the figures.
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


def fill(module: torch.nn.Module, seed: int) -> None:
    """Every floating parameter and buffer from one seeded generator (BatchNorm variances positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)


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
    cfg = types.SimpleNamespace(model=types.SimpleNamespace(bert_lr_mult=0.1))
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
    sys.exit(0 if rep.ok else 1)


if __name__ == "__main__":
    main()
