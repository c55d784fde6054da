"""Continual-learning task definitions: which classes each incremental step learns (data, with sources).

"X-Y" means X base classes (plus background 0), then Y new classes per step. Tables follow
QIU023/SATS_Continual_Semantic_Seg ``tasks.py`` (from fcdl94/MiB and arthurdouillard/CVPR2021_PLOP);
the official code names VOC 15-1 ``15-5s`` and ADE 50-50 ``50``, both names are accepted here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zsk.core.errors import ZskError

IGNORE = 255


def _x_y(total: int, base: int, inc: int) -> list[list[int]]:
    """[0..base], then ``inc`` classes per step up to ``total`` (inclusive)."""
    steps = [list(range(0, base + 1))]
    start = base + 1
    while start <= total:
        steps.append(list(range(start, min(start + inc, total + 1))))
        start += inc
    return steps


VOC_TASKS: dict[str, list[list[int]]] = {
    "offline": [list(range(21))],
    "19-1": _x_y(20, 19, 1),
    "15-5": _x_y(20, 15, 5),
    "15-1": _x_y(20, 15, 1),
    "10-1": _x_y(20, 10, 1),
    "5-3": _x_y(20, 5, 3),
}
VOC_TASKS["15-5s"] = VOC_TASKS["15-1"]

ADE_TASKS: dict[str, list[list[int]]] = {
    "offline": [list(range(151))],
    "100-50": _x_y(150, 100, 50),
    "100-10": _x_y(150, 100, 10),
    "100-5": _x_y(150, 100, 5),
    "50-50": _x_y(150, 50, 50),
    "50-10": _x_y(150, 50, 10),
    "25-25": _x_y(150, 25, 25),
    "10-10": _x_y(150, 10, 10),
    "15-15": _x_y(150, 15, 15),
}
ADE_TASKS["50"] = ADE_TASKS["50-50"]

TASKS: dict[str, dict[str, list[list[int]]]] = {"voc": VOC_TASKS, "ade": ADE_TASKS}
NUM_CLASSES: dict[str, int] = {"voc": 21, "ade": 151}


def task_steps(dataset: str, task: str, steps: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """The classes of every step: ``steps`` when given (``data.steps``), else the named task of the dataset."""
    if steps is not None:
        out = [list(map(int, s)) for s in steps]
        limit = NUM_CLASSES[dataset]
        bad = [c for s in out for c in s if c >= limit]
        if bad:
            raise ZskError(f"data.steps holds class id(s) {bad[:5]} but {dataset} has ids 0..{limit - 1}")
        return out
    table = TASKS[dataset]
    if task not in table:
        raise ZskError(f"unknown {dataset} task data.task={task!r}; choose one of {', '.join(table)} or give "
                       "data.steps")
    return [list(s) for s in table[task]]


def classes_per_step(steps: Sequence[Sequence[int]]) -> list[int]:
    """Number of classifier outputs of every step (the sizes of the per-step 1x1 convolutions)."""
    return [len(s) for s in steps]


def model_order(steps: Sequence[Sequence[int]]) -> list[int]:
    """Dataset ids in the order of the model's outputs: [0] + old + current classes."""
    return [c for s in steps for c in s]


def train_lut(steps: Sequence[Sequence[int]], step: int, keep_old: bool = False) -> np.ndarray:
    """256-entry table mapping a dataset label to the training label of ``step``: the step's classes
    keep their place in the model order, old and future classes become background 0 (MiB label
    masking); with ``keep_old`` (exemplar images, SATS-M) old classes keep their labels too; 255 stays."""
    order = model_order(steps)
    lut = np.zeros(256, dtype=np.uint8)
    lut[IGNORE] = IGNORE
    labelled = [c for s in (steps[: step + 1] if keep_old else [steps[step]]) for c in s]
    for c in labelled:
        lut[c] = order.index(c)
    lut[0] = 0
    return lut


def test_lut(steps: Sequence[Sequence[int]], step: int, future: str = "background",
             ignore_background: bool = False) -> np.ndarray:
    """Label table of the test set after ``step``: every seen class at its model index, future classes
    as background (``future="background"``, the official loader) or ignored (255); with
    ``ignore_background`` label 0 is ignored too (ADE20K's "other" with ``eval.ade_other: ignore``)."""
    seen = model_order(steps[: step + 1])
    lut = np.full(256, 0 if future == "background" else IGNORE, dtype=np.uint8)
    lut[IGNORE] = IGNORE
    for i, c in enumerate(seen):
        lut[c] = i
    if ignore_background:
        lut[0] = IGNORE
    return lut


def keep_for_training(present: set[int], steps: Sequence[Sequence[int]], step: int, overlap: bool) -> bool:
    """MiB ``filter_images``: keep an image holding a class of ``step``; disjoint also drops images with
    a future class (all its labels must be old, current, 0 or 255)."""
    current = {c for c in steps[step] if c != 0}
    if not present & current:
        return False
    if overlap:
        return True
    allowed = {c for s in steps[: step + 1] for c in s} | {0, IGNORE}
    return present <= allowed


def keep_for_test(present: set[int], steps: Sequence[Sequence[int]], step: int) -> bool:
    """Test images at ``step``: those holding at least one seen foreground class."""
    seen = {c for s in steps[: step + 1] for c in s if c != 0}
    return bool(present & seen)
