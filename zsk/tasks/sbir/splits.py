"""The zero-shot splits of Sketchy Extended and TU-Berlin Extended, in one place with their sources.

The unseen class lists themselves are data files read from the dataset (never written here): SAKE's
``dataset.zip`` (Liu et al., ICCV 2019, qliu24/SAKE; cs.jhu.edu/~qliu24/ZSSBIR/dataset.zip) ships them as
``cname_cid_zero.txt`` (one ``<class name> <class id>`` per line; names may contain spaces), next to
``cname_cid.txt`` for the seen classes. ACNet's own data (the authors' Google Drive) encodes its split as
folders instead: ``<root>/{train,val}/{sketch,photo}/<class>/`` with ``val`` holding the unseen classes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZeroShotSplit:
    """One benchmark split: how many classes are unseen, where SAKE's archive keeps the list, the source."""

    name: str
    dataset: str
    num_unseen: int
    default_list: str  # relative to data.root
    min_val_photos: int
    source: str


SPLITS: dict[str, ZeroShotSplit] = {
    "yelamarthi21": ZeroShotSplit(
        "yelamarthi21", "Sketchy Extended", 21, "{root}/zeroshot1/cname_cid_zero.txt", 0,
        "Yelamarthi et al., ECCV 2018 (test_split_ref.npy): the 21 unseen classes not in ImageNet-1K, 104 seen; "
        "SAKE dataset.zip Sketchy/zeroshot1. ACNet's released Sketchy folders use this split."),
    "sake25": ZeroShotSplit(
        "sake25", "Sketchy Extended", 25, "{root}/zeroshot0/cname_cid_zero.txt", 0,
        "Shen et al., CVPR 2018 / SAKE (Liu et al., ICCV 2019): 25 random unseen classes, 100 seen; "
        "SAKE dataset.zip Sketchy/zeroshot0."),
    "tuberlin30": ZeroShotSplit(
        "tuberlin30", "TU-Berlin Extended", 30, "{root}/zeroshot/cname_cid_zero.txt", 400,
        "Shen et al., CVPR 2018 / SAKE: 30 random unseen classes with >= 400 photos each, 220 seen; "
        "SAKE dataset.zip TUBerlin/zeroshot. ACNet drops val classes with < 400 photos (utils.py)."),
}


def parse_class_list(text: str) -> list[str]:
    """Class names of a split list: ``<name> <id>`` lines (SAKE's cname_cid files, the trailing integer id is
    dropped, names may contain spaces) or one name per line. Blank lines and ``#`` comments are skipped."""
    names = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) > 1 and parts[-1].lstrip("-").isdigit():
            parts = parts[:-1]
        names.append(" ".join(parts))
    return names
