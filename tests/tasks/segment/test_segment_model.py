"""ZegCLIP pieces against independently written formulas: losses, queries, mask logits, prompts, labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zsk.core.errors import ZskError
from zsk.data.images import COCO_STUFF_171_CLASSES, PASCAL_CONTEXT_59_CLASSES, VOC_CLASSES
from zsk.tasks.segment import splits
from zsk.tasks.segment.losses import (
    NonMutuallyExclusiveLoss,
    dice_loss,
    one_hot_masks,
    sigmoid_focal_loss,
    transductive_pseudo_labels,
)
from zsk.tasks.segment.model import (
    ATMDecoder,
    MaskCrossAttention,
    PromptedVisionTransformer,
    RelationshipDescriptor,
    ZegCLIP,
    resize_pos_embed,
    unused_self_attention_params,
)


@pytest.fixture(scope="module")
def tiny_clip():
    """A fresh tiny random-weight open_clip CLIP (same classes as ViT-B-16)."""
    from zsk.models.clip import load_clip

    torch.manual_seed(0)
    return load_clip("tiny-vit-p8", None)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _focal_scalar(x: float, t: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = _sigmoid(x)
    if t == 1.0:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_focal_matches_scalar_formula() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g) * 2
    targets = (torch.rand(2, 3, 4, 5, generator=g) > 0.6).float()
    got = sigmoid_focal_loss(logits, targets)
    for b in range(2):
        for c in range(3):
            vals = [_focal_scalar(float(logits[b, c].flatten()[i]), float(targets[b, c].flatten()[i])) for i in range(20)]
            assert got[b, c].item() == pytest.approx(sum(vals) / 20, rel=1e-5)


def test_dice_matches_formula_and_is_zero_for_a_perfect_mask() -> None:
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    p = [_sigmoid(v) for v in (2.0, -1.0, 0.5, -3.0)]
    tt = [1, 0, 1, 0]
    want = 1 - (2 * sum(a * b for a, b in zip(p, tt, strict=True)) + 1) / (sum(p) + sum(tt) + 1)
    assert dice_loss(logits, t).item() == pytest.approx(want, rel=1e-6)
    perfect = torch.tensor([[[[50.0, -50.0], [50.0, -50.0]]]])
    assert dice_loss(perfect, t).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_normalises_by_present_masks_and_keeps_ignored_pixels_as_negatives() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    labels = torch.tensor([[[0, 0, 1, 1]] * 4, [[2, 2, 255, 255]] * 4])  # present: (0,0) (0,1) (1,2) -> 3 masks
    out = NonMutuallyExclusiveLoss(focal_weight=100.0, dice_weight=1.0)(logits, labels)
    assert out["num_masks"].item() == 3
    targets = torch.zeros(2, 3, 4, 4)
    targets[0, 0, :, :2] = 1
    targets[0, 1, :, 2:] = 1
    targets[1, 2, :, :2] = 1  # the 255 pixels are all-zero targets: negatives for every class
    focal = sum(_focal_scalar(float(logits[b, c].flatten()[i]), float(targets[b, c].flatten()[i]))
                for b in range(2) for c in range(3) for i in range(16)) / 16 / 3
    present = [(0, 0), (0, 1), (1, 2)]
    dice = sum(dice_loss(logits[b : b + 1, c : c + 1], targets[b : b + 1, c : c + 1]).item() for b, c in present) / 3
    assert out["loss_focal"].item() == pytest.approx(focal, rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(dice, rel=1e-5)
    assert out["loss"].item() == pytest.approx(100 * focal + dice, rel=1e-5)
    # focal_ignore="mask" averages over labelled pixels only: image 1 has 8 of 16
    masked = NonMutuallyExclusiveLoss(focal_ignore="mask")(logits, labels)["loss_focal"].item()
    want = (sum(_focal_scalar(float(logits[0, c].flatten()[i]), float(targets[0, c].flatten()[i]))
                for c in range(3) for i in range(16)) / 16
            + sum(_focal_scalar(float(logits[1, c, r, k]), float(targets[1, c, r, k]))
                  for c in range(3) for r in range(4) for k in range(2)) / 8) / 3
    assert masked == pytest.approx(want, rel=1e-5)


def test_loss_with_no_present_mask_uses_one() -> None:
    out = NonMutuallyExclusiveLoss()(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 255))
    assert out["num_masks"].item() == 1.0
    assert out["loss_dice"].item() == 0.0


def test_one_hot_masks() -> None:
    lab = torch.tensor([[[0, 1], [255, 1]]])
    m = one_hot_masks(lab, 2)
    assert m.tolist() == [[[[1, 0], [0, 0]], [[0, 1], [0, 1]]]]


def test_relationship_descriptor_builds_w_of_g_times_t_concat_t() -> None:
    torch.manual_seed(0)
    rd = RelationshipDescriptor(4)
    text = torch.randn(3, 4)
    g = torch.randn(2, 4)
    q = rd(text, g)
    assert q.shape == (2, 3, 4)
    w, bias = rd.proj.weight, rd.proj.bias
    for b in range(2):
        for c in range(3):
            feat = torch.cat([g[b] * text[c], text[c]])
            assert torch.allclose(q[b, c], w @ feat + bias, atol=1e-6)


def test_mask_logits_are_head_averaged_pre_softmax_scores() -> None:
    torch.manual_seed(0)
    att = MaskCrossAttention(8, 2, attn_drop=0.0).eval()
    queries, memory = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    _, logits = att(queries, memory)
    q = att.q(queries)[0]
    k = att.k(memory)[0]
    want = torch.zeros(3, 5)
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        want += (q[:, sl] @ k[:, sl].T) / math.sqrt(4)
    assert torch.allclose(logits[0], want / 2, atol=1e-5)


def test_decoder_returns_one_mask_map_per_layer() -> None:
    dec = ATMDecoder(16, 3, 4, 64, 0.0)
    masks = dec(torch.randn(2, 5, 16), torch.randn(2, 36, 16))
    assert len(masks) == 3 and all(m.shape == (2, 5, 36) for m in masks)


def test_pos_embed_resize_keeps_cls_and_interpolates_grid() -> None:
    pos = torch.randn(1 + 4, 3)
    out = resize_pos_embed(pos, (4, 4))
    assert out.shape == (17, 3)
    assert torch.equal(out[0], pos[0])
    # a constant grid stays constant under bilinear resizing
    const = torch.cat([torch.zeros(1, 2), torch.ones(9, 2)])
    assert torch.allclose(resize_pos_embed(const, (5, 7))[1:], torch.ones(35, 2))


def test_prompted_vit_and_zegclip_shapes_and_trainable_parameters(tiny_clip) -> None:
    encoder = PromptedVisionTransformer(tiny_clip.model.visual, num_prompts=3, grid=(4, 4), drop_path_rate=0.1)
    model = ZegCLIP(encoder, None, 64, 3, 4).eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    backbone = [n for n in trainable if n.startswith("image_encoder.")]
    assert backbone and all("prompt" in n for n in backbone)
    assert not any(n.startswith("image_encoder.visual.") for n in trainable)
    assert encoder.prompt_embeddings.shape == (1, 3, 64)
    assert encoder.deep_prompt_embeddings.shape == (len(tiny_clip.model.visual.transformer.resblocks) - 1, 3, 64)
    bound = math.sqrt(6.0 / (3 * 8 * 8 + 64))
    assert encoder.deep_prompt_embeddings.abs().max() <= bound
    images = torch.randn(2, 3, 48, 40)
    dense, g = encoder(images)
    assert dense.shape == (2, 64, 6, 5) and g.shape == (2, 64)
    assert torch.allclose(dense.norm(dim=1), torch.ones(2, 6, 5), atol=1e-5)
    text = torch.nn.functional.normalize(torch.randn(7, 64), dim=-1)
    logits = model(images, text)
    assert logits.shape == (2, 7, 48, 40)
    layers = model(images, text, all_layers=True)
    assert len(layers) == 3 and torch.allclose(layers[-1], logits)
    # deep prompts of a middle layer change the output (they replace the prompt slots before that block)
    with torch.no_grad():
        encoder.deep_prompt_embeddings[0].add_(1.0)
    assert not torch.allclose(model(images, text), logits)


def test_cls_embedding_twice_option_changes_the_global_token(tiny_clip) -> None:
    a = PromptedVisionTransformer(tiny_clip.model.visual, 2, (4, 4), 0.0, 0.0).eval()
    assert a.cls_embedding_twice  # the official encoder's double add is the default
    x = torch.randn(1, 3, 32, 32)
    g1 = a(x)[1]
    a.cls_embedding_twice = False
    assert not torch.allclose(a(x)[1], g1)


def test_unused_self_attention_count() -> None:
    # nn.MultiheadAttention(512, 8) + LayerNorm(512), three layers: the ~3.15M of the spec
    mha = torch.nn.MultiheadAttention(512, 8)
    per_layer = sum(p.numel() for p in mha.parameters()) + 2 * 512
    assert unused_self_attention_params(512, 3) == 3 * per_layer
    assert abs(unused_self_attention_params(512, 3) - 3.15e6) / 3.15e6 < 0.01


def test_transductive_pseudo_labels_rule() -> None:
    # 4 classes, seen = {0, 1}, unseen = {2, 3}
    logits = torch.full((1, 4, 1, 4), -5.0)
    logits[0, 0] = 9.0  # the seen class scores highest everywhere: must not be chosen
    logits[0, 2, 0, :2] = 2.0
    logits[0, 3, 0, 2:] = 3.0
    labels = torch.tensor([[[0, 2, 255, 3]]])
    out = transductive_pseudo_labels(logits, labels, [0, 1])
    # seen label kept, 255 kept, unseen-labelled pixels take the argmax over unseen classes
    assert out.tolist() == [[[0, 2, 255, 3]]]
    labels2 = torch.tensor([[[1, 3, 2, 2]]])
    assert transductive_pseudo_labels(logits, labels2, [0, 1]).tolist() == [[[1, 2, 3, 3]]]


@pytest.mark.parametrize(
    ("name", "classes", "unseen_names"),
    [
        ("voc", VOC_CLASSES, ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]),
        ("coco_stuff", COCO_STUFF_171_CLASSES, ["cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot",
                                                 "scissors", "cardboard", "clouds", "grass", "playingfield", "river",
                                                 "road", "tree", "wall-concrete"]),
        ("context", PASCAL_CONTEXT_59_CLASSES, ["aeroplane", "bird", "boat", "cat", "cow", "fence", "keyboard",
                                                "motorbike", "sofa", "tv monitor"]),
    ],
)
def test_benchmark_splits_and_inductive_remapping(name, classes, unseen_names) -> None:
    unseen = splits.UNSEEN_IDS[name]
    assert [classes[i] for i in unseen] == unseen_names
    assert len(classes) == {"voc": 20, "coco_stuff": 171, "context": 59}[name]
    seen = splits.seen_ids(len(classes), unseen)
    assert len(seen) + len(unseen) == len(classes)
    lut = splits.inductive_label_lut(len(classes), seen)
    labels = np.array([seen[0], seen[-1], unseen[0], unseen[-1], 255], dtype=np.uint8)
    assert lut[labels].tolist() == [0, len(seen) - 1, 255, 255, 255]
    ident = splits.identity_label_lut(len(classes))
    assert ident[labels].tolist() == labels.tolist()


def test_unknown_unseen_class_is_an_error() -> None:
    with pytest.raises(ZskError, match="zebra-crossing"):
        splits.unseen_from_names(VOC_CLASSES, ["sheep", "zebra-crossing"], "data.unseen_classes")


def test_sliding_window_equals_whole_image_when_one_window_covers_it(tiny_clip) -> None:
    import copy

    from zsk.tasks.segment.config import EvalConfig
    from zsk.tasks.segment.evaluate import segment_scores

    visual = copy.deepcopy(tiny_clip.model.visual)
    model = ZegCLIP(PromptedVisionTransformer(visual, 2, (4, 4)), None, 64, 2, 4).eval()
    text = torch.nn.functional.normalize(torch.randn(5, 64), dim=-1)
    image = torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8)
    dev = torch.device("cpu")
    whole = segment_scores(model, image, text, EvalConfig(mode="whole", img_scale=(64, 32), min_size=None), "imagenet", [0, 1], 0.1, dev)
    slide = segment_scores(model, image, text, EvalConfig(mode="slide", crop_size=64, stride=48, img_scale=(64, 32), min_size=None),
                           "imagenet", [0, 1], 0.1, dev)
    assert whole.shape == (5, 40, 56)
    assert torch.allclose(whole, slide, atol=1e-6)
    # calibration: seen scores are sigmoid - 0.1, unseen untouched
    raw = segment_scores(model, image, text, EvalConfig(mode="whole", img_scale=(64, 32), min_size=None), "imagenet", [0, 1], 0.0, dev)
    assert torch.allclose(raw[:2] - 0.1, whole[:2], atol=1e-6) and torch.allclose(raw[2:], whole[2:])
    # two overlapping windows: the overlap holds the mean of both windows' scores
    two = segment_scores(model, image, text, EvalConfig(mode="slide", crop_size=32, stride=24, img_scale=(64, 32), min_size=None),
                         "imagenet", [], 0.0, dev)
    assert two.shape == (5, 40, 56) and torch.isfinite(two).all()


def test_segmentation_metrics_on_a_hand_worked_confusion_matrix() -> None:
    from zsk.tasks.segment.evaluate import segmentation_metrics

    # rows = true, columns = predicted; classes 0, 1 seen, 2 unseen
    cm = torch.tensor([[8, 2, 0], [1, 6, 1], [0, 3, 3]])
    m = segmentation_metrics(cm, ["a", "b", "c"], [0, 1], [2])
    iou = [8 / (10 + 9 - 8), 6 / (8 + 11 - 6), 3 / (6 + 4 - 3)]
    assert m["per_class"] == pytest.approx(dict(zip("abc", iou, strict=True)))
    s, u = (iou[0] + iou[1]) / 2, iou[2]
    assert m["mIoU_seen"] == pytest.approx(s) and m["mIoU_unseen"] == pytest.approx(u)
    assert m["hIoU"] == pytest.approx(2 * s * u / (s + u))
    assert m["mIoU"] == pytest.approx(sum(iou) / 3)
    assert m["pAcc"] == pytest.approx(17 / 24)
    # a class with no pixels and no predictions is left out of the means (NaN -> None)
    cm4 = torch.zeros(4, 4, dtype=torch.long)
    cm4[:3, :3] = cm
    m4 = segmentation_metrics(cm4, ["a", "b", "c", "d"], [0, 1, 3], [2])
    assert m4["per_class"]["d"] is None and m4["mIoU_seen"] == pytest.approx(s)
