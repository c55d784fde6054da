"""Seen/unseen class splits of the zero-shot segmentation benchmarks (data, with sources).

Ids are after each dataset's label preparation (reduce_zero_label for VOC and Context, the
labelTrainIds of COCO-Stuff); names are in ``zsk.data.images``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zsk.core.errors import ZskError
from zsk.data.images import IGNORE_INDEX

# PASCAL VOC 2012: the last five classes are unseen (ZS3Net / SPNet split; ZegCLIP configs
# `configs/voc12/*`: seen_idx 0..14, all_idx 0..19).
VOC_UNSEEN: tuple[int, ...] = (15, 16, 17, 18, 19)  # pottedplant, sheep, sofa, train, tvmonitor

# COCO-Stuff 164K: 15 unseen classes (ZegCLIP `configs/coco/*`, following SPNet / ZS3Net).
COCO_STUFF_UNSEEN: tuple[int, ...] = (19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160)

# PASCAL Context 59: 10 unseen classes (OTSeg's Context config on the ZegCLIP code base, ZS3Net split).
CONTEXT_UNSEEN: tuple[int, ...] = (0, 6, 7, 14, 19, 24, 31, 33, 48, 54)

UNSEEN_IDS: dict[str, tuple[int, ...]] = {"voc": VOC_UNSEEN, "coco_stuff": COCO_STUFF_UNSEEN, "context": CONTEXT_UNSEEN}


def unseen_from_names(class_names: Sequence[str], unseen_names: Sequence[str], source: str) -> tuple[int, ...]:
    """Ids of the named unseen classes; an unknown name is a ZskError naming it and the source."""
    index = {n: i for i, n in enumerate(class_names)}
    missing = [n for n in unseen_names if n not in index]
    if missing:
        raise ZskError(f"{source}: unseen class(es) {missing[:5]} are not among the dataset's classes "
                       f"({', '.join(list(class_names)[:8])}{', ...' if len(class_names) > 8 else ''})")
    return tuple(sorted(index[n] for n in unseen_names))


def seen_ids(num_classes: int, unseen: Sequence[int]) -> tuple[int, ...]:
    """All class ids not in ``unseen``, ascending."""
    u = set(unseen)
    return tuple(i for i in range(num_classes) if i not in u)


def inductive_label_lut(num_classes: int, seen: Sequence[int]) -> np.ndarray:
    """Table mapping a global label to the training label of the inductive setting:
    seen id -> its index among the seen classes (0..|S|-1); unseen ids and 255 -> 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for j, c in enumerate(seen):
        lut[c] = j
    return lut


def identity_label_lut(num_classes: int) -> np.ndarray:
    """Global ids kept (fully supervised and transductive training); anything >= num_classes -> 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[:num_classes] = np.arange(num_classes, dtype=np.uint8)
    return lut
