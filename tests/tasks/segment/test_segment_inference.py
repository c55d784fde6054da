"""ZegCLIP's sliding-window test through the shared inferer, against mmseg's ``slide_inference`` loop
written out here independently, and the window grid itself."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsk.models.inferers import sliding_window_inference, window_starts


def _mmseg_boxes(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg ``EncoderDecoder.slide_inference`` window boxes (y1, y2, x1, x2), as in mmseg 0.x."""
    h_grids = max(h - crop + stride - 1, 0) // stride + 1
    w_grids = max(w - crop + stride - 1, 0) // stride + 1
    boxes = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            boxes.append((y1, y2, x1, x2))
    return boxes


def _mmseg_slide(x: torch.Tensor, crop: int, stride: int, fn, window_batch: int = 8) -> torch.Tensor:
    """The pre-inferer loop of segment: windows in mmseg order, ``window_batch`` at a time, scores summed
    and divided by the count of windows covering each pixel."""
    _, h, w = x.shape
    boxes = _mmseg_boxes(h, w, crop, stride)
    total = count = None
    for i in range(0, len(boxes), window_batch):
        chunk = boxes[i:i + window_batch]
        out = fn(torch.stack([x[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk]))
        if total is None:
            total = torch.zeros(out.shape[1], h, w)
            count = torch.zeros(1, h, w)
        for (y1, y2, x1, x2), s in zip(chunk, out, strict=True):
            total[:, y1:y2, x1:x2] += s
            count[:, y1:y2, x1:x2] += 1
    return total / count


def test_window_starts_match_the_mmseg_grid() -> None:
    # moved from tests/data (seg_transforms.sliding_windows): the windows of a 512x683 image, crop 512 stride 426
    ys, xs = window_starts(512, 512, 426), window_starts(683, 512, 426)
    boxes = [(y, min(y + 512, 512), x, min(x + 512, 683)) for y in ys for x in xs]
    assert boxes == [(0, 512, 0, 512), (0, 512, 171, 683)] == _mmseg_boxes(512, 683, 512, 426)
    cover = np.zeros((512, 683), int)
    for y1, y2, x1, x2 in boxes:
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    # an image smaller than the window: one window, clipped to the image
    assert window_starts(300, 512, 426) == [0] and window_starts(200, 512, 426) == [0]
    assert _mmseg_boxes(300, 200, 512, 426) == [(0, 300, 0, 200)]
    for h, w, crop, stride in [(96, 256, 96, 64), (130, 97, 32, 24), (512, 2048, 512, 341), (33, 33, 32, 1)]:
        got = [(y, y + min(crop, h), x, x + min(crop, w)) for y in window_starts(h, crop, stride)
               for x in window_starts(w, crop, stride)]
        assert got == _mmseg_boxes(h, w, crop, stride), (h, w, crop, stride)


@pytest.mark.parametrize("shape,crop,stride,window_batch", [((3, 96, 256), 96, 64, 8), ((3, 130, 97), 32, 24, 3),
                                                            ((3, 40, 150), 64, 48, 8), ((2, 20, 30), 64, 48, 1)])
def test_sliding_window_inference_equals_the_mmseg_loop(shape, crop, stride, window_batch) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    weight = torch.randn(5, shape[0], generator=g)

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        # context-dependent: each window's scores depend on the window's own mean, so overlaps differ
        scores = torch.einsum("kc,nchw->nkhw", weight, windows)
        return (scores - scores.mean(dim=(2, 3), keepdim=True)).sigmoid()

    ours = sliding_window_inference(x, (crop, crop), (stride, stride), predictor, window_batch=window_batch,
                                    blend="mean", pad="none")
    theirs = _mmseg_slide(x, crop, stride, predictor, window_batch)
    assert ours.shape == theirs.shape == (5, *shape[1:])
    assert torch.equal(ours, theirs)


def test_segment_scores_slide_equals_the_mmseg_loop_on_a_tiny_zegclip() -> None:
    from zsk.data.seg_transforms import SegTestTransform
    from zsk.models.clip import load_clip
    from zsk.tasks.segment.config import EvalConfig
    from zsk.tasks.segment.evaluate import segment_scores
    from zsk.tasks.segment.model import PromptedVisionTransformer, ZegCLIP

    torch.manual_seed(0)
    visual = copy.deepcopy(load_clip("tiny-vit-p8", None).model.visual)
    model = ZegCLIP(PromptedVisionTransformer(visual, 2, (4, 4)), None, 64, 2, 4).eval()
    text = F.normalize(torch.randn(5, 64), dim=-1)
    image = torch.randint(0, 256, (45, 70, 3), dtype=torch.uint8)
    dev = torch.device("cpu")
    ecfg = EvalConfig(mode="slide", crop_size=32, stride=24, img_scale=(128, 48), min_size=None)
    seen, calibration = [0, 2], 0.1
    ours = segment_scores(model, image, text, ecfg, "imagenet", seen, calibration, dev)

    offset = torch.zeros(5, 1, 1)
    offset[seen] = calibration
    x = SegTestTransform((128, 48), "imagenet")(image.numpy())
    with torch.no_grad():
        theirs = _mmseg_slide(x, 32, 24, lambda b: model(b, text).float().sigmoid() - offset)
    theirs = F.interpolate(theirs[None], size=(45, 70), mode="bilinear", align_corners=False)[0]
    assert len(_mmseg_boxes(*x.shape[1:], 32, 24)) > 2  # several overlapping windows
    assert torch.equal(ours, theirs)


def test_a_stride_beyond_the_window_is_a_recipe_error() -> None:
    from zsk.core.errors import ZskError
    from zsk.core.run import load_config
    from zsk.tasks.segment.config import Config

    with pytest.raises(ZskError, match=r"eval\.stride=600"):
        load_config("segment", Config, "segment/voc", ["eval.stride=600"])
    load_config("segment", Config, "segment/voc", ["eval.stride=600", "eval.mode=whole"])  # no windows: no stride
