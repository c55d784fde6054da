"""refer (AlignFormer) against the official code of its later version, LGFormer (ZhichaoWei/LGFormer, mirror
mqchen1993/LGFormer), fp64 on the CPU (the official MSDeformAttn through its pure-PyTorch fallback). Needs ``requests`` for the
bundled BERT tokenizer: ``pip install --target /tmp/parity_site_refer requests`` (put on the path here).

    python tools/parity/refer.py --official /path/to/LGFormer [--save tests/parity/refer]

Both sides get the same seeded weights (every float tensor of zsk's state dict filled from a seed, copied
into the official module under its own names) and the same seeded inputs. Compared: the deformable-attention
sampling (``ms_deform_attn_core_pytorch``) and the ``MSDeformAttn`` module with its initialisation, VLBA,
the whole multi-modal Swin (timm Swin + zsk's pad-then-shift window attention against the official Swin, at
an input size whose last stages need padding larger than the shift), the pixel decoder and the linguistic
query decoder (all 7 mask logit maps), the whole LGFormer forward (bundled BERT, Swin, VLBA, decoders) against
zsk's AlignFormer and train.py's criterion, the REFER reader (split selection, masks, sentences) on zsk's
synthetic sample, the tokenisation (the bundled BERT tokenizer) and test.py's metrics on fixed predictions.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import refer_shims  # noqa: E402
from common import Report, official_commit, parser, seeded  # noqa: E402

from zsk.data.refer import decode_mask, load_refer  # noqa: E402
from zsk.metrics.referring import ReferringIoU  # noqa: E402
from zsk.models.deformable_attention import MSDeformAttn, ms_deform_attn  # noqa: E402
from zsk.tasks.refer.model import VLBA, AlignFormer, MultiModalSwin  # noqa: E402

SWIN = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4)
SWIN_IMAGE = 80  # stage 3 has 5x5 tokens: padding 3 > shift 2 (as stage 4 at 480 px: 15 tokens, window 12)
DEC_FEATS = [(16, 16), (32, 8), (64, 4), (128, 2)]  # (channels, side) of the 4 stage maps given to the decoder
FP32_TOL = 1e-5
TEXT_LEN = 20  # the official pixel decoder's word-position table has 20 slots and the data pads to 20
SENTENCES = ["the red square", "Blue thing on the LEFT side", "a very long expression that goes on and on about "
             "the yellow triangle next to the green circle on the right side of the picture"]


@contextlib.contextmanager
def fp64_float():
    """Both pixel decoders cast their inputs with ``.float()`` (they run outside autocast); for an fp64
    comparison that cast keeps the dtype while the decoders run."""
    original = torch.Tensor.float
    torch.Tensor.float = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.float = original  # type: ignore[method-assign]


def fill(module: torch.nn.Module, seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """Seeded values for every float tensor of the state dict (norm scales around 1); returns the state."""
    state = module.state_dict()
    for i, name in enumerate(sorted(state)):
        v = state[name]
        if not v.dtype.is_floating_point:
            continue
        noise = seeded(*v.shape, seed=seed * 10_000 + i, scale=scale).to(v.dtype)
        norm_scale = v.ndim == 1 and name.endswith("weight") and ("norm" in name or re.search(r"proj\.1\.|adapter_1\.1\.|layer_1\.1\.", name))
        state[name] = 1.0 + noise if norm_scale else noise
    module.load_state_dict(state)
    return state


def swin_key(name: str) -> str | None:
    """zsk MultiModalSwin name -> official MultiModalSwinTransformer name."""
    if name.startswith("swin.patch_embed."):
        return name.replace("swin.", "", 1)
    m = re.match(r"swin\.layers\.(\d+)\.downsample\.(.*)", name)
    if m:
        return f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
    m = re.match(r"swin\.layers\.(\d+)\.blocks\.(.*)", name)
    if m:
        return f"layers.{m.group(1)}.blocks.{m.group(2)}"
    for ours, theirs in (("fusions", "fusion"), ("res_gates", "res_gate"), ("sym_res_gates", "sym_res_gate")):
        m = re.match(rf"{ours}\.(\d+)\.(.*)", name)
        if m:
            return f"layers.{m.group(1)}.{theirs}.{m.group(2)}"
    m = re.match(r"norms\.(\d+)\.(.*)", name)
    if m:
        return f"norm{m.group(1)}.{m.group(2)}"
    return None


def decoder_key(name: str) -> str | None:
    """zsk AlignFormer decoder name -> official MSDeformDynamicConvDecoding name."""
    if name.startswith("pixel_decoder."):
        rest = name.split(".", 1)[1]
        if rest == "level_embed":
            return "pix_dec.transformer.level_embed"
        for part in ("layers.", "cross_attn_layers.", "key_embed."):
            if rest.startswith(part):
                return "pix_dec.transformer.encoder." + rest
        return "pix_dec." + rest
    for ours, theirs in (("txt_proj.", "txt_proj."), ("query_decoder.", "dynamic_conv_gen_body."),
                         ("kernel_head.", "dynamic_conv_gen_head.")):
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return None


def copy_into(theirs: torch.nn.Module, ours_state: dict[str, torch.Tensor], key) -> None:  # noqa: ANN001
    """Load zsk's weights into the official module under ``key(name)``; every official tensor must be covered."""
    state = {}
    for k, v in ours_state.items():
        mapped = key(k)
        if mapped is not None and v.dtype.is_floating_point:
            state[mapped] = v
    own = theirs.state_dict()
    missing = [k for k in own if k not in state and own[k].dtype.is_floating_point]
    unknown = [k for k in state if k not in own]
    if missing or unknown:
        raise SystemExit(f"weight mapping incomplete: missing {missing[:5]}, unknown {unknown[:5]}")
    theirs.load_state_dict(state, strict=False)


def decoder_inputs(seed: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Seeded stage maps, words (B, 20, 768) zero past each mask and the mask (6 and 11 words)."""
    feats = [seeded(2, c, s, s, seed=seed + 50 + i).double() for i, (c, s) in enumerate(DEC_FEATS)]
    words = seeded(2, TEXT_LEN, 768, seed=seed + 60).double()
    mask = torch.zeros(2, TEXT_LEN, 1, dtype=torch.float64)
    mask[0, :6] = 1
    mask[1, :11] = 1
    return feats, words * mask, mask


def build_decoder(seed: int) -> AlignFormer:
    """zsk's AlignFormer with the official decoder sizes (text 768, mask 256, 6 + 6 layers) and seeded weights."""
    torch.manual_seed(seed)
    model = AlignFormer(torch.nn.Identity(), **SWIN, drop_path=0.0, text_dim=768, text_len=TEXT_LEN,
                        img_size=64).double().eval()
    fill(model, seed + 3)
    return model


def build_swin(seed: int, padding: str = "pad_then_shift") -> MultiModalSwin:
    """zsk's multi-modal Swin of the harness size with seeded weights (fp64, eval)."""
    torch.manual_seed(seed)
    model = MultiModalSwin(**SWIN, drop_path=0.0, l_channels=768, fusion_heads=[1, 1, 1, 1], img_size=SWIN_IMAGE,
                           padding=padding).double().eval()
    fill(model, seed + 2)
    return model


def swin_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded image pair and 9 words (5 valid in the first)."""
    image = seeded(2, 3, SWIN_IMAGE, SWIN_IMAGE, seed=seed + 70).double()
    words = seeded(2, 768, 9, seed=seed + 71).double()
    mask = torch.ones(2, 9, 1, dtype=torch.float64)
    mask[0, 5:] = 0
    return image, words * mask.transpose(1, 2), mask


def deform_inputs(seed: int):  # noqa: ANN201
    """Values of 3 levels, sampling locations partly outside the maps, weights."""
    shapes = torch.tensor([[6, 5], [3, 3], [2, 1]])
    value = seeded(2, int(shapes.prod(1).sum()), 4, 8, seed=seed + 1).double()
    loc = torch.rand(2, 7, 4, 3, 4, 2, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(2, 7, 4, 3, 4, generator=torch.Generator().manual_seed(seed + 3), dtype=torch.float64)
    return shapes, value, loc, weights


def vlba_inputs(seed: int):  # noqa: ANN201
    """Pixels (B, 30, 32), words (B, 768, 7) and a mask with padding in the second."""
    x = seeded(2, 30, 32, seed=seed + 20).double()
    words = seeded(2, 768, 7, seed=seed + 21).double()
    mask = torch.ones(2, 7, 1, dtype=torch.float64)
    mask[1, 4:] = 0
    return x, words, mask


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    sys.path.append("/tmp/parity_site_refer")  # harness-only packages (requests for the bundled BERT code)
    root = refer_shims.setup(args.official)
    report = Report("refer", official_commit(root))
    seed = args.seed
    torch.set_grad_enabled(False)

    # --- deformable attention -------------------------------------------------------------------------
    from lib.ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch
    from lib.ops.modules import MSDeformAttn as OfficialMSDeformAttn

    shapes, value, loc, weights = deform_inputs(seed)
    report.compare("ms_deform_attn (grid_sample sampling)", ms_deform_attn(value, shapes, loc, weights),
                   ms_deform_attn_core_pytorch(value, shapes, loc, weights))
    ours, theirs = MSDeformAttn(32, 3, 4, 4), OfficialMSDeformAttn(32, 3, 4, 4)
    report.compare("MSDeformAttn init (offset ring)", ours.sampling_offsets.bias, theirs.sampling_offsets.bias)
    ours, theirs = ours.double(), theirs.double()
    theirs.load_state_dict(fill(ours, seed + 4))
    q = seeded(2, 9, 32, seed=seed + 5).double()
    src = seeded(2, int(shapes.prod(1).sum()), 32, seed=seed + 6).double()
    refs = torch.rand(2, 9, 3, 2, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64)
    starts = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
    report.compare("MSDeformAttn forward", ours(q, refs, src, shapes, starts), theirs(q, refs, src, shapes, starts))

    # --- VLBA --------------------------------------------------------------------------------------------
    from lib.backbone import VLBA as OfficialVLBA
    from lib.backbone import MultiModalSwinTransformer

    ours_vlba = VLBA(32, 768, num_heads=2).double().eval()
    theirs_vlba = OfficialVLBA(32, 32, 768, 32, 32, num_heads=2).double().eval()
    theirs_vlba.load_state_dict(fill(ours_vlba, seed + 8))
    x, words, mask = vlba_inputs(seed)
    (mv, ml), (tv, tl) = ours_vlba(x, words, mask), theirs_vlba(x, words, mask)
    report.compare("VLBA mm_v (vision branch)", mv, tv)
    report.compare("VLBA mm_l (language branch)", ml, tl)

    # --- multi-modal Swin ------------------------------------------------------------------------------
    ours_swin = build_swin(seed)
    theirs_swin = MultiModalSwinTransformer(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4,
                                            drop_path_rate=0.0, num_heads_fusion=[1, 1, 1, 1]).double()
    theirs_swin.eval()  # its train() override returns None
    copy_into(theirs_swin, ours_swin.state_dict(), swin_key)
    image, words, mask = swin_inputs(seed)
    ours_out, ours_l, _ = ours_swin(image, words, mask)
    theirs_out, theirs_l = theirs_swin(image, words, mask)
    for i in range(4):
        report.compare(f"multi-modal Swin stage {i + 1} output", ours_out[i], theirs_out[i])
    report.compare("multi-modal Swin words to the decoder (last mm_l)", ours_l, theirs_l)
    torch.manual_seed(seed)
    fresh = MultiModalSwinTransformer(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4)
    gates_before = float(fresh.layers[0].res_gate[0].weight.abs().max())
    fresh.init_weights()  # what LGFormer.__init__ calls (with or without a pretrained file)
    official_std = float(torch.cat([fresh.layers[i].res_gate[j].weight.flatten() for i in range(4) for j in (0, 2)]).std())
    ours_zero = MultiModalSwin(**SWIN, drop_path=0.0, l_channels=768, fusion_heads=[1, 1, 1, 1], img_size=64)
    ours_tn = MultiModalSwin(**SWIN, drop_path=0.0, l_channels=768, fusion_heads=[1, 1, 1, 1], img_size=64,
                             gate_init="trunc_normal")
    tn_std = float(torch.cat([g[j].weight.flatten() for g in ours_tn.res_gates for j in (0, 2)]).std())
    report.compare("gate init: zero before the official init_weights (zsk default)", gates_before,
                   float(ours_zero.res_gates[0][0].weight.abs().max()), tol=0, keep=False)
    report.compare("gate init std after the official init_weights vs gate_init=trunc_normal", tn_std, official_std,
                   tol=2e-3, keep=False)
    timm_order = build_swin(seed, "timm")
    diff = float((timm_order(image, words, mask)[0][2] - theirs_out[2]).abs().max())
    report.note("timm's shift-then-pad order, stage 3 (model.swin_padding=timm)",
                f"differs by {diff:.3g} (expected: only pad_then_shift is the official order)")

    # --- decoders -----------------------------------------------------------------------------------------
    from lib.mask_predictor import MSDeformDynamicConvDecoding

    model = build_decoder(seed)
    theirs_dec = MSDeformDynamicConvDecoding(mask_dim=256, txt_dim=768, swin_embed_dim=16).double().eval()
    copy_into(theirs_dec, model.state_dict(), decoder_key)
    feats, words, mask = decoder_inputs(seed)
    with fp64_float():
        ours_dec = model.decode(feats, words, mask)
        mf, levels = theirs_dec.pix_dec({f"s{i + 1}": f for i, f in enumerate(feats)}, words, mask)
        ours_levels = model.pixel_decoder(feats, words, mask)[1]
        theirs_logits = theirs_dec(feats, words.transpose(1, 2), mask)
    report.compare("pixel decoder mask features (stride 4)", ours_dec["mask_features"], mf, tol=FP32_TOL, keep=False)
    for i, name in enumerate(("32", "16", "8")):
        report.compare(f"pixel decoder encoded level (stride {name})", ours_levels[i], levels[i], tol=FP32_TOL,
                       keep=False)
    for k, (a, b) in enumerate(zip(ours_dec["logits"], theirs_logits, strict=True)):
        report.compare(f"mask logits, query state {k}", a, b, tol=FP32_TOL)

    # --- REFER reader, tokenizer, metrics ---------------------------------------------------------------
    refer_rows(report, root, seed)
    end_to_end_rows(report, seed)
    report.print()
    report.save(args.save, extra={"seed": seed, "official_repo": "mqchen1993/LGFormer (mirror of ZhichaoWei/LGFormer)",
                                  "sentences": SENTENCES})
    sys.exit(0 if report.ok else 1)


def refer_rows(report: Report, root: Path, seed: int) -> None:
    """REFER on zsk's sample; the bundled BERT tokenizer on its vocabulary; test.py's metrics."""
    from zsk.tasks.refer.data import write_sample

    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != here]  # this script is refer.py too: the checkout's refer/ must win
    sys.modules.pop("refer", None)
    try:
        from refer.refer import REFER
    except Exception as e:  # noqa: BLE001
        report.note("REFER reader", f"not compared: the official refer.py does not import here ({e})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = write_sample(Path(tmp), num_images=12, size=48, seed=seed)
        with contextlib.redirect_stdout(io.StringIO()):
            api = REFER(str(data), "refcoco", "unc")
        same_ids, masks_official, masks_union, sents = True, 0.0, 0.0, True
        for split in ("train", "val", "testA", "testB"):
            items = load_refer(data, "refcoco", "unc", split, Path(api.IMAGE_DIR))
            same_ids &= [r.ref_id for r in items] == api.getRefIds(split=split)
            for it in items:
                ref = api.loadRefs(it.ref_id)[0]
                m = np.asarray(api.getMask(ref)["mask"])
                masks_official = max(masks_official, float(np.abs((m == 1).astype(np.uint8) - decode_mask(it, "official")).max()))
                masks_union = max(masks_union, float(np.abs((m > 0).astype(np.uint8) - decode_mask(it, "union")).max()))
                sents &= list(it.sentences) == [s["raw"] for s in ref["sentences"]]
                if Path(api.IMAGE_DIR, api.Imgs[it.image_id]["file_name"]) != it.image:
                    sents = False
        report.compare("REFER ref ids per split (equal = 0)", float(not same_ids), 0.0, tol=0, keep=False)
        report.compare("REFER getMask (== 1) vs mask_parts=official", masks_official, 0.0, tol=0, keep=False)
        report.compare("REFER getMask (> 0) vs mask_parts=union", masks_union, 0.0, tol=0, keep=False)
        report.compare("REFER sentences and image paths (equal = 0)", float(not sents), 0.0, tol=0, keep=False)
        tokenizer_rows(report, root, data)
    metric_rows(report, root, seed)


def tokenizer_rows(report: Report, root: Path, data: Path) -> None:
    """dataset_refer_bert.py's encoding with the bundled BertTokenizer against zsk's Tokenizer."""
    from zsk.tasks.refer.data import Tokenizer

    try:
        from bert.tokenization_bert import BertTokenizer as OfficialBertTokenizer
    except Exception as e:  # noqa: BLE001
        report.note("tokenizer", f"not compared: the bundled bert/ does not import here ({e})")
        return
    vocab = parity_vocab(data)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        theirs = OfficialBertTokenizer.from_pretrained(tmp)
        ours = Tokenizer.from_vocab(vocab, 20)
        ids, att = ours.batch(SENTENCES)
        for j, s in enumerate(SENTENCES):  # dataset_refer_bert.py: encode, truncate to 20, pad with 0
            enc = theirs.encode(text=s, add_special_tokens=True)[:20]
            want_ids = enc + [0] * (20 - len(enc))
            want_att = [1] * len(enc) + [0] * (20 - len(enc))
            report.compare(f"token ids + mask, sentence {j}", torch.cat([ids[j], att[j]]),
                           torch.tensor(want_ids + want_att), tol=0)


def parity_vocab(data: Path) -> list[str]:
    """The sample's vocab.txt plus the words of the long test sentence."""
    vocab = (data / "vocab.txt").read_text().split()
    return vocab + ["very", "long", "expression", "that", "goes", "about", "next", "to", "of", "picture", "a", "and"]


def metric_batches(seed: int) -> tuple[list[tuple], list[torch.Tensor]]:
    """6 refs x 3 expressions of a stand-in model: targets (one empty) and fixed logits of varied quality."""
    g = torch.Generator().manual_seed(seed + 90)
    batches, logits_all = [], []
    for r in range(6):
        target = (torch.rand(1, 12, 12, generator=g) > 0.6).long()
        if r == 5:
            target.zero_()  # an empty ground truth
        sent = torch.zeros(1, 1, 20, 3, dtype=torch.long)
        logits = torch.randn(3, 1, 1, 12, 12, generator=g) * 2 + (target.float() * 2 - 1) * (r % 3)
        if r == 5:
            logits[0] = -10.0  # empty prediction and empty target: IoU 0
        batches.append((torch.zeros(1, 3, 12, 12), target, sent, sent.clone()))
        logits_all.append(logits)
    return batches, logits_all


def zsk_metrics(batches: list[tuple], logits_all: list[torch.Tensor]) -> dict[str, float]:
    """zsk.metrics.referring on the stand-in predictions (sigmoid > 0.5)."""
    acc = ReferringIoU()
    for (_, target, _, _), logits in zip(batches, logits_all, strict=True):
        for lg in logits:
            acc.update((lg.sigmoid()[0, 0] > 0.5), target[0].bool())
    return acc.result()


def metric_rows(report: Report, root: Path, seed: int) -> None:
    """test.py's ``evaluate`` on fixed logits of a stand-in model, against zsk.metrics.referring."""
    argv = sys.argv
    sys.argv = [argv[0]]  # data/dataset_refer_bert.py parses the command line when imported
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import test as official_test
    except Exception as e:  # noqa: BLE001
        report.note("test.py metrics", f"not compared: test.py does not import here ({type(e).__name__}: {e})")
        return
    finally:
        sys.argv = argv
    batches, logits_all = metric_batches(seed)

    class StandIn(torch.nn.Module):
        calls = 0

        def forward(self, image, sentences, text_mask):  # noqa: ANN001, ANN201
            r, j = divmod(StandIn.calls, 3)
            StandIn.calls += 1
            return [logits_all[r][j]]

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        official_test.evaluate(StandIn(), batches, torch.device("cpu"))
    text = buf.getvalue()
    ours = zsk_metrics(batches, logits_all)
    theirs = {"mIoU": float(re.search(r"Mean IoU is ([\d.]+)", text).group(1)),
              "oIoU": float(re.search(r"overall IoU = ([\d.]+)", text).group(1))}
    for t in ("0.5", "0.6", "0.7", "0.8", "0.9"):
        theirs[f"prec@{t}"] = float(re.search(rf"precision@{t} = ([\d.]+)", text).group(1))
    for k, v in theirs.items():  # the official prints two decimals
        report.compare(f"test.py {k} (printed, 2 decimals)", round(ours[k], 2), v, tol=0.0051)
    report.keep("metrics/official_printed", np.array([theirs[k] for k in sorted(theirs)]))


E2E = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)  # LGFormer swin 'tiny', window 7
E2E_IMAGE = 96  # stages of 24, 12, 6, 3 tokens: window 7 needs padding everywhere (4 > shift 3 at 24 tokens)
E2E_TEXT = dict(vocab_size=120, hidden_size=768, num_hidden_layers=2, num_attention_heads=12, intermediate_size=1024)


def build_e2e(seed: int) -> AlignFormer:
    """zsk's whole AlignFormer (random BERT of E2E_TEXT, Swin-T window 7) with seeded weights, fp64, eval."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    bert = BertModel(BertConfig(**E2E_TEXT), add_pooling_layer=False)
    model = AlignFormer(bert, **E2E, drop_path=0.0, text_dim=768, text_len=TEXT_LEN, img_size=E2E_IMAGE).double().eval()
    fill(model, seed + 11, scale=0.05)
    return model


def e2e_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image pair, token ids and masks (20 tokens: 8 and 15 valid) and a target mask at the image size."""
    image = seeded(2, 3, E2E_IMAGE, E2E_IMAGE, seed=seed + 80).double()
    ids = torch.randint(5, E2E_TEXT["vocab_size"], (2, TEXT_LEN), generator=torch.Generator().manual_seed(seed + 81))
    att = torch.zeros(2, TEXT_LEN, dtype=torch.long)
    att[0, :8] = 1
    att[1, :15] = 1
    ids = ids * att
    target = (seeded(2, E2E_IMAGE, E2E_IMAGE, seed=seed + 82) > 0.8).long()
    return image, ids, att, target


def e2e_logits(model: AlignFormer, image: torch.Tensor, ids: torch.Tensor, att: torch.Tensor) -> list[torch.Tensor]:
    """zsk's 7 logit maps upsampled to the image size (bilinear), as LGFormer.forward returns them."""
    import torch.nn.functional as F

    with fp64_float():
        out = model(image, ids, att)["logits"]
    return [F.interpolate(lg, size=image.shape[-2:], mode="bilinear", align_corners=False) for lg in out]


def end_to_end_rows(report: Report, seed: int) -> None:
    """The whole LGFormer (bundled BERT, official Swin + VLBA, decoders) against zsk's AlignFormer, and the
    official ``criterion`` (train.py) against zsk's mask loss on its outputs."""
    import argparse
    import json

    try:
        from lib.lgformer import LGFormer
    except Exception as e:  # noqa: BLE001
        report.note("LGFormer end to end", f"not compared: lib/lgformer.py does not import here ({e})")
        return
    model = build_e2e(seed)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"model_type": "bert", "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
               "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
               "layer_norm_eps": 1e-12, "architectures": ["BertModel"], **E2E_TEXT}
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        torch.save({f"bert.{k}": v.float() for k, v in model.text_encoder.state_dict().items()}, Path(tmp) / "pytorch_model.bin")
        args = argparse.Namespace(swin_type="tiny", pretrained_swin_weights="", window12=False, mha="", fusion_drop=0.0,
                                  ck_bert=tmp)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            theirs = LGFormer(args).double()
    theirs.eval()
    ours_state = model.state_dict()
    state = {}
    for k, v in ours_state.items():
        if not v.dtype.is_floating_point:
            continue
        if k.startswith("backbone."):
            mapped = swin_key(k[len("backbone."):])
            state["backbone." + mapped] = v
        elif k.startswith("text_encoder."):
            state[k] = v
        elif k.startswith("contrast_proj"):
            continue
        else:
            state["classifier." + decoder_key(k)] = v
    own = theirs.state_dict()
    missing = [k for k in own if own[k].dtype.is_floating_point and k not in state and "position_ids" not in k]
    unknown = [k for k in state if k not in own]
    if missing or unknown:
        report.note("LGFormer end to end", f"not compared: weight mapping incomplete ({missing[:3]}, {unknown[:3]})")
        return
    theirs.load_state_dict(state, strict=False)
    image, ids, att, target = e2e_inputs(seed)
    ours_out = e2e_logits(model, image, ids, att)
    with fp64_float():
        theirs_out = theirs(image, ids, att)
    for k, (a, b) in enumerate(zip(ours_out, theirs_out, strict=True)):
        report.compare(f"LGFormer end to end (BERT + Swin + VLBA + decoders), logits {k}", a, b, tol=FP32_TOL,
                       keep=k == len(ours_out) - 1)
    argv = sys.argv
    sys.argv = [argv[0]]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import train as official_train
    except Exception as e:  # noqa: BLE001
        report.note("train.py criterion", f"not compared: train.py does not import here ({e})")
        return
    finally:
        sys.argv = argv
    from zsk.tasks.refer.losses import mask_loss

    theirs_loss = official_train.criterion([o.float() for o in theirs_out], target)
    report.compare("train.py criterion (BCE pos_weight 1.1, summed over 7 outputs)",
                   mask_loss([o.float() for o in theirs_out], target, 1.1), theirs_loss[0], tol=1e-5)


if __name__ == "__main__":
    main()
