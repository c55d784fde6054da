"""The zero-shot splits of Sketchy Extended and TU-Berlin Extended, in one place with their sources.

Each split's unseen classes are listed below (``ZeroShotSplit.classes``), so a dataset unpacked without
the split files still trains on the published split. SAKE's ``dataset.zip`` (Liu et al., ICCV 2019,
qliu24/SAKE; cs.jhu.edu/~qliu24/ZSSBIR/dataset.zip) ships the same lists as ``cname_cid_zero.txt`` (one
``<class name> <class id>`` per line; names may contain spaces), next to ``cname_cid.txt`` for the seen
classes; when that file is in the dataset (or ``data.unseen_list`` names one) it is read instead. ACNet's own
data (the authors' Google Drive) encodes its split as folders: ``<root>/{train,val}/{sketch,photo}/<class>/``
with ``val`` holding the unseen classes.
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
    classes: tuple[str, ...]  # the unseen classes, as the dataset's class folders name them


SPLITS: dict[str, ZeroShotSplit] = {
    "yelamarthi21": ZeroShotSplit(
        "yelamarthi21", "Sketchy Extended", 21, "{root}/zeroshot1/cname_cid_zero.txt", 0,
        "Yelamarthi et al., ECCV 2018 (test_split_ref.npy): the 21 unseen classes not in ImageNet-1K, 104 seen; "
        "SAKE dataset.zip Sketchy/zeroshot1. ACNet's released Sketchy folders use this split.",
        ("bat", "cabin", "cow", "dolphin", "door", "giraffe", "helicopter", "mouse", "pear", "raccoon", "rhinoceros",
         "saw", "scissors", "seagull", "skyscraper", "songbird", "sword", "tree", "wheelchair", "windmill", "window")),
    "sake25": ZeroShotSplit(
        "sake25", "Sketchy Extended", 25, "{root}/zeroshot0/cname_cid_zero.txt", 0,
        "Shen et al., CVPR 2018 / SAKE (Liu et al., ICCV 2019): 25 random unseen classes, 100 seen; "
        "SAKE dataset.zip Sketchy/zeroshot0 (the list below as distributed with peer ZS-SBIR code; not checked "
        "against the archive's file, which wins when present).",
        ("airplane", "bell", "butterfly", "camel", "chicken", "cup", "deer", "harp", "horse", "parrot", "pineapple",
         "ray", "rifle", "scissors", "snail", "squirrel", "swan", "tank", "teddy_bear", "tree", "umbrella", "volcano",
         "wheelchair", "windmill", "wine_bottle")),
    "tuberlin30": ZeroShotSplit(
        "tuberlin30", "TU-Berlin Extended", 30, "{root}/zeroshot/cname_cid_zero.txt", 400,
        "Shen et al., CVPR 2018 / SAKE: 30 random unseen classes with >= 400 photos each, 220 seen; "
        "SAKE dataset.zip TUBerlin/zeroshot. ACNet drops val classes with < 400 photos (utils.py).",
        ("ant", "banana", "bottle opener", "brain", "bread", "bridge", "bus", "canoe", "fan", "frying-pan", "horse",
         "hot air balloon", "laptop", "lighter", "parachute", "penguin", "pizza", "rollerblades", "shoe", "snowboard",
         "space shuttle", "streetlight", "suitcase", "t-shirt", "table", "teacup", "telephone", "tractor", "trombone",
         "windmill")),
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
