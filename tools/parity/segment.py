"""ZegCLIP (segment) against the official code, ZiqinZhou66/ZegCLIP (CVPR 2023), fp32 on the CPU.

    python tools/parity/segment.py --official /path/to/ZegCLIP [--save tests/parity/segment]
        [--mmseg mmsegmentation-0.24.1-py3-none-any.whl]   # pip download --no-deps mmsegmentation==0.24.1

The official modules (VPTCLIPVisionTransformer, CLIPTextEncoder, ATMSingleHeadSeg, SegLossPlus and the
ZegCLIP segmentor's label maps and slide_inference) are imported from the checkout with mmcv/mmseg stubbed
(segment_shims.py). Both sides get the same random weights: a small CLIP (width 64, 3 layers, patch 8,
64x64 input, text width 32) is built with open_clip for zsk and its state dict copied into the official
classes. Dropout is set to 0 on both sides (train mode otherwise), since the two draw their masks in a
different order. Compared: parameter count, the ViT forward with deep prompts (dense and global), the text
encoder, the relationship descriptor, every decoder layer's queries and mask logits, the head's training
and test outputs, focal / dice / total in the inductive and self-training settings (with the official label
maps), one step's gradients, the optimizer's per-parameter lr and weight decay (mmcv custom_keys rule), the
poly LR with warm-up over the 20k run, sliding-window inference and the seen/unseen metrics.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import segment_crops  # noqa: E402
import segment_shims  # noqa: E402
from common import Report, max_abs_diff, official_commit, parser  # noqa: E402

from zsk.core.trainer import lr_factor  # noqa: E402
from zsk.models.clip import CLIPTextEncoder  # noqa: E402
from zsk.models.inferers import sliding_window_inference  # noqa: E402
from zsk.tasks.segment import splits  # noqa: E402
from zsk.tasks.segment.config import Config  # noqa: E402
from zsk.tasks.segment.evaluate import segmentation_metrics  # noqa: E402
from zsk.tasks.segment.losses import NonMutuallyExclusiveLoss, transductive_pseudo_labels  # noqa: E402
from zsk.tasks.segment.model import PromptedVisionTransformer, ZegCLIP, unused_self_attention_params  # noqa: E402
from zsk.tasks.segment.train import param_groups  # noqa: E402

WIDTH, LAYERS, HEADS, PATCH, IMG, EMBED = 64, 3, 2, 8, 64, 64
TEXT_WIDTH, TEXT_HEADS, TEXT_LAYERS = 32, 2, 2
PROMPTS, DEC_LAYERS, DEC_HEADS = 4, 3, 4
ALL = list(range(6))
SEEN, UNSEEN = [0, 1, 2, 4], [3, 5]
BATCH = 2
CUSTOM_KEYS = {"backbone": {"lr_mult": 10.0}, "text_encoder": {"lr_mult": 0.0}, "norm": {"decay_mult": 0.0},
               "ln": {"decay_mult": 0.0}, "head": {"lr_mult": 10.0}}  # official configs' paramwise_cfg


def tiny_clip_cfg() -> dict:
    """The open_clip CLIP config of the compared model (the official blocks use mlp ratio 4, QuickGELU)."""
    return {"embed_dim": EMBED, "quick_gelu": True,
            "vision_cfg": {"image_size": IMG, "layers": LAYERS, "width": WIDTH, "head_width": WIDTH // HEADS,
                           "patch_size": PATCH, "mlp_ratio": 4.0},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": TEXT_WIDTH, "heads": TEXT_HEADS,
                         "layers": TEXT_LAYERS}}


def build_zsk(seed: int) -> tuple[ZegCLIP, CLIPTextEncoder]:
    """zsk's ZegCLIP on a seeded tiny open_clip CLIP (official model: class embedding added twice)."""
    from open_clip import get_tokenizer
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    clip = CLIP(**tiny_clip_cfg())
    with torch.no_grad():  # open_clip zero-inits some weights; make every frozen weight random
        for p in clip.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    visual = clip.visual
    enc = PromptedVisionTransformer(visual, PROMPTS, (IMG // PATCH,) * 2, drop_path_rate=0.0, prompt_dropout=0.0,
                                    cls_embedding_twice=True)
    text = CLIPTextEncoder(clip, get_tokenizer("ViT-B-16"))
    model = ZegCLIP(enc, None, EMBED, DEC_LAYERS, DEC_HEADS, 4, 0.0, init_std=0.2)
    return model, text


def build_official(model: ZegCLIP, text: CLIPTextEncoder, num_classes: int):
    """The official backbone, text encoder and head with zsk's weights copied in."""
    from models.backbone.img_encoder import VPTCLIPVisionTransformer
    from models.backbone.text_encoder import CLIPTextEncoder as OfficialText
    from models.decode_heads.decode_seg import ATMSingleHeadSeg
    from models.losses.atm_loss import SegLossPlus  # noqa: F401  (registers the loss)

    backbone = VPTCLIPVisionTransformer(input_resolution=IMG, patch_size=PATCH, width=WIDTH, layers=LAYERS,
                                        heads=HEADS, output_dim=EMBED, drop_path_rate=0.1, out_indices=[LAYERS - 1],
                                        get_embeddings=True, num_tokens=PROMPTS, prompt_dim=WIDTH,
                                        total_d_layer=LAYERS - 1)
    enc = model.image_encoder
    state = {k.removeprefix("visual."): v for k, v in enc.state_dict().items() if k.startswith("visual.")}
    state = {k: v for k, v in state.items() if k in backbone.state_dict()}
    for k in ("prompt_embeddings", "deep_prompt_embeddings"):
        state[k] = getattr(enc, k).data
    for k, v in enc.prompt_proj.state_dict().items():
        state[f"prompt_proj.{k}"] = v
    for k, v in enc.prompt_norm.state_dict().items():
        state[f"prompt_norm.{k}"] = v
    backbone.load_state_dict(state, strict=True)

    off_text = OfficialText(context_length=77, vocab_size=49408, transformer_width=TEXT_WIDTH,
                            transformer_heads=TEXT_HEADS, transformer_layers=TEXT_LAYERS, embed_dim=EMBED)
    tstate = {k: v for k, v in text.clip.state_dict().items() if k in off_text.state_dict()}
    off_text.load_state_dict(tstate, strict=True)

    head = ATMSingleHeadSeg(img_size=IMG, in_channels=EMBED, seen_idx=list(SEEN), all_idx=list(ALL), channels=EMBED,
                            num_classes=num_classes, num_layers=DEC_LAYERS, num_heads=DEC_HEADS, use_proj=False,
                            use_stages=1, embed_dims=EMBED,
                            loss_decode=dict(type="SegLossPlus", num_classes=num_classes, dec_layers=DEC_LAYERS,
                                             mask_weight=100.0, dice_weight=1.0, loss_weight=1.0))
    hstate = head.state_dict()
    hstate["q_proj.weight"] = model.relationship_descriptor.proj.weight.data
    hstate["q_proj.bias"] = model.relationship_descriptor.proj.bias.data
    names = {"cross_attn.": "multihead_attn.", "norm_cross.": "norm2.", "norm_ffn.": "norm3.", "linear1.": "linear1.",
             "linear2.": "linear2."}
    for k, v in model.decoder.state_dict().items():
        _, i, rest = k.split(".", 2)
        for a, b in names.items():
            if rest.startswith(a):
                hstate[f"decoder_1.layers.{i}.{b}{rest[len(a):]}"] = v
    head.load_state_dict(hstate, strict=True)
    for m in [backbone, head]:
        for mod in m.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
    return backbone, off_text, head


def official_train_losses(head, feat, labels: torch.Tensor, setting: str) -> dict:
    """The segmentor's label map then the head's forward_train (models/segmentor/zegclip.py)."""
    from models.segmentor.zegclip import ZegCLIP as OfficialZegCLIP

    seg = nn.Module()
    seg.base_class, seg.novel_class, seg.both_class = np.asarray(SEEN), np.asarray(UNSEEN), np.asarray(ALL)
    seg.self_training = setting == "transductive"
    seg.decode_head, seg.train_cfg = head, None
    with contextlib.redirect_stdout(io.StringIO()):  # the official label maps print themselves
        if seg.self_training:
            OfficialZegCLIP._visiable_mask_st(seg, SEEN, UNSEEN, ALL)
            OfficialZegCLIP._st_mask(seg, SEEN, UNSEEN, ALL)
        else:
            OfficialZegCLIP._visiable_mask(seg, SEEN, UNSEEN, ALL)
    return OfficialZegCLIP._decode_head_forward_train(seg, feat, None, labels.clone().unsqueeze(1))


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--mmseg", type=Path, default=None,
                   help="The PyPI wheel mmsegmentation==0.24.1 (or its unpacked folder), for the RandomCrop row.")
    args = p.parse_args()
    root = segment_shims.setup(args.official)
    rep = Report("segment", official_commit(root))
    torch.set_grad_enabled(True)

    model, text_enc = build_zsk(args.seed)
    backbone, off_text, head = build_official(model, text_enc, len(SEEN))
    rep.keep("weights", torch.cat([p.detach().reshape(-1) for p in model.state_dict().values()
                                   if p.dtype.is_floating_point]))

    # ---------------------------------------------------------------- parameter count
    ours_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    theirs_trainable = sum(p.numel() for n, p in backbone.named_parameters() if "prompt" in n) + \
        sum(p.numel() for p in head.parameters())
    rep.compare("params/trainable (official - unused self-attention)",
                ours_trainable, theirs_trainable - unused_self_attention_params(EMBED, DEC_LAYERS), keep=False)
    rep.compare("params/frozen image encoder", sum(p.numel() for n, p in model.image_encoder.visual.named_parameters()),
                sum(p.numel() for n, p in backbone.named_parameters() if "prompt" not in n), keep=False)

    # ---------------------------------------------------------------- text encoder
    from models.segmentor.untils import tokenize

    names = ["cat", "dog", "potted plant", "tv monitor", "sky", "wall-brick"]
    tokens = torch.cat([tokenize(f"a photo of a {c}") for c in names])
    ours_tokens = text_enc.tokenizer([f"a photo of a {c}" for c in names])
    rep.compare("text/token ids", ours_tokens, tokens, keep=False)
    with torch.no_grad():
        off_t = off_text(tokens)
        off_t = off_t / off_t.norm(dim=-1, keepdim=True)
    ours_t = text_enc.encode([f"a photo of a {c}" for c in names])
    rep.compare("text/class embeddings", ours_t, off_t)
    text_all = ours_t.detach()
    rep.keep("input/text", text_all)

    # ---------------------------------------------------------------- forward (train mode, dropout 0)
    images = torch.randn(BATCH, 3, IMG, IMG, generator=torch.Generator().manual_seed(args.seed + 1))
    rep.keep("input/images", images)
    model.train()
    backbone.train()
    head.train()
    dense, g = model.image_encoder(images)
    outs = backbone(images)
    rep.compare("vit/dense embeddings (deep prompts)", dense, outs[0][0])
    rep.compare("vit/global embedding g", g, outs[1])
    text_seen = text_all[SEEN]
    q_ours = model.relationship_descriptor(text_seen, g)
    q_off = head.q_proj(head.get_qs(text_seen, outs[1]))
    rep.compare("relationship descriptor queries", q_ours, q_off)
    memory = dense.flatten(2).transpose(1, 2)
    q = q_ours
    qs_off, attns_off = head.decoder_1(q_off.transpose(0, 1), outs[0][0].flatten(2).permute(2, 0, 1))
    for i, layer in enumerate(model.decoder.layers):
        q, m = layer(q, memory)
        rep.compare(f"decoder/layer {i} queries", q, qs_off[i].transpose(0, 1))
        rep.compare(f"decoder/layer {i} mask logits", m, attns_off[i])
    logits = model(images, text_seen)
    off_out = head([outs, text_seen])
    rep.compare("head/train output pred_masks", logits, off_out["pred_masks"])

    # ---------------------------------------------------------------- losses, inductive
    g_lab = torch.Generator().manual_seed(args.seed + 2)
    labels = torch.randint(0, len(ALL), (BATCH, IMG, IMG), generator=g_lab)
    labels[:, :5] = 255
    labels[1, 20:40, 20:40] = 3  # an unseen block
    rep.keep("input/labels", labels.to(torch.uint8))
    lut = torch.from_numpy(splits.inductive_label_lut(len(ALL), SEEN).astype(np.int64))
    crit = NonMutuallyExclusiveLoss(100.0, 1.0, 0.25, 2.0, "negative")
    ours_l = crit(logits, lut[labels])
    off_l = official_train_losses(head, [outs, text_seen], labels, "inductive")
    rep.compare("loss/inductive focal x 100", 100.0 * ours_l["loss_focal"], off_l["decode.loss_mask"])
    rep.compare("loss/inductive dice", ours_l["loss_dice"], off_l["decode.loss_dice"])
    rep.compare("loss/inductive total", ours_l["loss"], off_l["decode.loss_mask"] + off_l["decode.loss_dice"])

    # ---------------------------------------------------------------- one step's gradients
    model.zero_grad()
    backbone.zero_grad()
    head.zero_grad()
    ours_l["loss"].backward()
    (off_l["decode.loss_mask"] + off_l["decode.loss_dice"]).backward()
    grads_ours = {"prompt_embeddings": model.image_encoder.prompt_embeddings.grad,
                  "deep_prompt_embeddings": model.image_encoder.deep_prompt_embeddings.grad,
                  "prompt_proj.weight": model.image_encoder.prompt_proj.weight.grad,
                  "prompt_norm.weight": model.image_encoder.prompt_norm.weight.grad,
                  "q_proj.weight": model.relationship_descriptor.proj.weight.grad,
                  "decoder layer 0 q.weight": model.decoder.layers[0].cross_attn.q.weight.grad,
                  "decoder layer 1 linear2.weight": model.decoder.layers[1].linear2.weight.grad}
    grads_off = {"prompt_embeddings": backbone.prompt_embeddings.grad,
                 "deep_prompt_embeddings": backbone.deep_prompt_embeddings.grad,
                 "prompt_proj.weight": backbone.prompt_proj.weight.grad,
                 "prompt_norm.weight": backbone.prompt_norm.weight.grad,
                 "q_proj.weight": head.q_proj.weight.grad,
                 "decoder layer 0 q.weight": head.decoder_1.layers[0].multihead_attn.q.weight.grad,
                 "decoder layer 1 linear2.weight": head.decoder_1.layers[1].linear2.weight.grad}
    for k in grads_ours:
        rep.compare(f"grad/{k}", grads_ours[k], grads_off[k])

    # ---------------------------------------------------------------- optimizer groups (mmcv custom_keys)
    cfg, _ = _paper_train_cfg()
    groups = param_groups(model, cfg)
    ours_lr_wd = {}
    for grp in groups:
        for p in grp["params"]:
            ours_lr_wd[id(p)] = (cfg.lr * grp["lr_mult"], grp["weight_decay"])
    off_named = [(f"backbone.{n}", p) for n, p in backbone.named_parameters() if "prompt" in n] + \
        [(f"decode_head.{n}", p) for n, p in head.named_parameters()]
    off_groups = segment_shims.official_param_groups(off_named, cfg.lr, cfg.weight_decay, CUSTOM_KEYS)
    pairs = _param_pairs(model, backbone, head)
    ours_arr = np.array([ours_lr_wd[id(p)] for p, _ in pairs])
    off_arr = np.array([off_groups[n] for _, n in pairs])
    rep.compare("optimizer/lr per parameter (x10 prompts and head)", ours_arr[:, 0], off_arr[:, 0], keep=False)
    rep.compare("optimizer/weight decay per parameter (norms included)", ours_arr[:, 1], off_arr[:, 1], keep=False)

    # ---------------------------------------------------------------- LR schedule over the whole run
    total = cfg.steps
    its = np.arange(total)
    ours_lr = np.array([lr_factor(int(t), total, cfg, base_lr=cfg.lr * 10) * cfg.lr * 10 for t in its])
    off_lr = np.array([segment_shims.mmcv_poly_lr(int(t), total, cfg.lr * 10, 0.9, 1e-6, 1500, 1e-6) for t in its])
    rep.compare("schedule/poly + warm-up lr, 20k iterations (x10 groups)", ours_lr, off_lr, tol=1e-12, keep=False)
    rep.compare("schedule/lr handed to self-training (iter 10000 of 20k)", ours_lr[10000], off_lr[10000], tol=1e-12,
                keep=False)

    # ---------------------------------------------------------------- self-training (transductive) losses
    head_st = build_official(model, text_enc, len(ALL))[2].train()
    logits_all = model(images, text_all)
    pseudo = transductive_pseudo_labels(logits_all, labels, SEEN)
    ours_st = crit(logits_all, pseudo)
    off_st = official_train_losses(head_st, [outs, text_all], labels, "transductive")
    rep.compare("loss/self-training focal x 100 (pseudo-labels)", 100.0 * ours_st["loss_focal"],
                off_st["decode.loss_mask"])
    rep.compare("loss/self-training dice", ours_st["loss_dice"], off_st["decode.loss_dice"])

    # ---------------------------------------------------------------- test output, sliding window
    model.eval()
    backbone.eval()
    head_st.eval()
    head_st.training = False
    with torch.no_grad():
        offset = torch.zeros(len(ALL), 1, 1)
        offset[SEEN] = 0.1
        ours_test = model(images, text_all).sigmoid() - offset
        off_test = head_st.forward_test([backbone(images), text_all], None, None, False)
        rep.compare("head/test output (sigmoid - 0.1 on seen)", ours_test, off_test)
        big = torch.randn(1, 3, 80, 104, generator=torch.Generator().manual_seed(args.seed + 3))
        rep.keep("input/slide image", big)
        ours_slide = sliding_window_inference(big[0], (IMG, IMG), (40, 40),
                                              lambda b: model(b, text_all).sigmoid() - offset, window_batch=1,
                                              blend="mean", pad="none")
        off_slide = _official_slide(backbone, head_st, text_all, big)
    rep.compare("inference/sliding window 64, stride 40 on 80x104", ours_slide, off_slide[0])

    # ---------------------------------------------------------------- metrics on one confusion matrix
    pred = off_slide[0].argmax(0)
    gt = torch.randint(0, len(ALL), (80, 104), generator=torch.Generator().manual_seed(args.seed + 4))
    gt[:4] = 255
    rep.keep("input/metric gt", gt.to(torch.uint8))
    ours_m, off_m = _metrics(pred, gt)
    for k in ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "pAcc"):
        rep.compare(f"metric/{k}", ours_m[k], off_m[k])

    bf16_effect(rep, model, images, text_seen, lut[labels], crit)
    crops = segment_crops.measure()
    before, after = crops["remap then crop (zsk before)"], crops["crop then remap (official, zsk now)"]
    rep.note("crops/seen-pixel share, remap-then-crop -> crop-then-remap",
             f"measured: {before['seen / crop pixels']:.3f} -> {after['seen / crop pixels']:.3f} of crop pixels, "
             f"{before['seen / labelled pixels']:.3f} -> {after['seen / labelled pixels']:.3f} of labelled "
             "(synthetic VOC-like labels, zsk's resize + crop; tools/parity/segment_crops.py)")
    if args.mmseg is not None:
        worst, n, redrawn = segment_crops.compare_with_mmseg(segment_shims.mmseg_random_crop(args.mmseg))
        rep.compare(f"transforms/RandomCrop cat_max_ratio 0.75, same offsets ({n} crops, {redrawn} redrawn)",
                    worst, 0.0, keep=False)
    if args.mmseg is not None:
        rep.note("transforms (resize, flip, photometric)",
                 "not compared: they run on mmcv's image ops (imrescale, imflip, uint8 rounding), not installed "
                 "(tests/tasks/segment check the order: crop on global ids, remap after; and the min_size test resize)")
    else:
        rep.note("transforms (resize, crop, flip, photometric)",
                 "not compared: mmseg 0.24's pipeline is not in the official repository (tests/tasks/segment check "
                 "the order: crop on global ids, remap after; and the min_size test resize); --mmseg compares the crop")
    rep.note("readers (VOC / COCO-Stuff / Context layouts)",
             "not compared: mmseg's CustomDataset is not in the official repository; file lists follow the "
             "official configs' img_dir / ann_dir / split")
    rep.print()
    rep.save(args.save, {"seed": args.seed, "seen": SEEN, "unseen": UNSEEN, "clip_cfg": tiny_clip_cfg(),
                         "prompts": PROMPTS, "decoder_layers": DEC_LAYERS, "decoder_heads": DEC_HEADS})
    sys.exit(0 if rep.ok else 1)


def bf16_effect(rep: Report, model: ZegCLIP, images: torch.Tensor, text: torch.Tensor, labels: torch.Tensor,
                crit) -> None:
    """The training step of the compared model in fp32 and under CPU bf16 autocast (emulating a bf16 run):
    max abs diff of the mask logits (train mode) and the losses, cosine of the prompt gradients."""
    model.train()
    runs = []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images, text)
        losses = crit(logits.float(), labels)
        losses["loss"].backward()
        enc = model.image_encoder
        runs.append({"logits": logits.detach().float(), "losses": {k: float(v) for k, v in losses.items()},
                     "grad": torch.cat([enc.prompt_embeddings.grad.flatten(),
                                        enc.deep_prompt_embeddings.grad.flatten()]).clone()})
    model.zero_grad()
    fp32, bf16 = runs
    d = max_abs_diff(bf16["logits"], fp32["logits"])
    scale = float(fp32["logits"].abs().max())
    rep.rows.append(("precision: bf16 autocast, mask logits", d,
                     f"measured: {d / scale:.1%} of fp32's max |logit| {scale:.3g}; paper recipes are fp32"))
    for k, name in (("loss_focal", "focal (before x 100)"), ("loss_dice", "dice"), ("loss", "total")):
        d = abs(bf16["losses"][k] - fp32["losses"][k])
        rep.rows.append((f"precision: bf16 autocast, loss {name}", d,
                         f"measured: {d / abs(fp32['losses'][k]):.2g} of fp32's {fp32['losses'][k]:.4g} (relative)"))
    cos = float(torch.nn.functional.cosine_similarity(bf16["grad"], fp32["grad"], dim=0))
    d = max_abs_diff(bf16["grad"], fp32["grad"])
    rep.rows.append(("precision: bf16 autocast, prompt gradients", d,
                     f"measured: cosine {cos:.6f} with fp32, norm ratio "
                     f"{float(bf16['grad'].norm() / fp32['grad'].norm()):.4f} (prompt_embeddings, deep_prompt_embeddings)"))


def _paper_train_cfg():
    from zsk.core.run import load_config

    cfg, raw = load_config("segment", Config, "segment/voc", None)
    return cfg.train, raw


def _param_pairs(model: ZegCLIP, backbone, head) -> list[tuple[nn.Parameter, str]]:
    """(zsk parameter, official name) for every trainable parameter."""
    enc = model.image_encoder
    pairs = [(enc.prompt_embeddings, "backbone.prompt_embeddings"),
             (enc.deep_prompt_embeddings, "backbone.deep_prompt_embeddings")]
    pairs += [(p, f"backbone.prompt_proj.{n}") for n, p in enc.prompt_proj.named_parameters()]
    pairs += [(p, f"backbone.prompt_norm.{n}") for n, p in enc.prompt_norm.named_parameters()]
    pairs += [(p, f"decode_head.q_proj.{n}") for n, p in model.relationship_descriptor.proj.named_parameters()]
    names = {"cross_attn.": "multihead_attn.", "norm_cross.": "norm2.", "norm_ffn.": "norm3."}
    for n, p in model.decoder.named_parameters():
        _, i, rest = n.split(".", 2)
        for a, b in names.items():
            if rest.startswith(a):
                rest = b + rest[len(a):]
        pairs.append((p, f"decode_head.decoder_1.layers.{i}.{rest}"))
    return pairs


def _official_slide(backbone, head, text, img: torch.Tensor) -> torch.Tensor:
    """ZegCLIP.slide_inference (models/segmentor/zegclip.py) around the official backbone and head."""
    from models.segmentor.zegclip import ZegCLIP as OfficialZegCLIP

    class Cfg(dict):
        __getattr__ = dict.__getitem__

    seg = nn.Module()
    seg.test_cfg = Cfg(stride=(40, 40), crop_size=(IMG, IMG))
    seg.both_class = np.asarray(ALL)
    seg.align_corners = False

    def encode_decode(crop, meta):
        out = head.forward_test([backbone(crop), text], meta, None, False)
        return torch.nn.functional.interpolate(out, size=crop.shape[2:], mode="bilinear", align_corners=False)

    seg.encode_decode = encode_decode
    return OfficialZegCLIP.slide_inference(seg, img, [{"ori_shape": img.shape[2:]}], False)


def _metrics(pred: torch.Tensor, gt: torch.Tensor) -> tuple[dict, dict]:
    """zsk's metrics from its confusion matrix; the official per-class IoU (mmseg intersect_and_union rule)
    split by seen / unseen with nanmean as the official dataset's evaluate does, hIoU from those."""
    from zsk.metrics.confusion import ConfusionMatrix

    cm = ConfusionMatrix(len(ALL), ignore_index=255)
    cm.update(pred, gt)
    ours = segmentation_metrics(cm.matrix.cpu(), [str(i) for i in ALL], SEEN, UNSEEN)
    mask = gt != 255
    p, t = pred[mask], gt[mask]
    inter = torch.histc(p[p == t].float(), bins=len(ALL), min=0, max=len(ALL) - 1)
    area_p = torch.histc(p.float(), bins=len(ALL), min=0, max=len(ALL) - 1)
    area_t = torch.histc(t.float(), bins=len(ALL), min=0, max=len(ALL) - 1)
    iou = (inter / (area_p + area_t - inter)).numpy()
    s, u = float(np.nanmean(iou[SEEN])), float(np.nanmean(iou[UNSEEN]))
    off = {"mIoU": float(np.nanmean(iou)), "mIoU_seen": s, "mIoU_unseen": u, "hIoU": 2 * s * u / (s + u),
           "pAcc": float(inter.sum() / area_t.sum())}
    return ours, off


if __name__ == "__main__":
    main()
