"""The zero-shot splits of Sketchy Extended and TU-Berlin Extended, in one place with their sources.

Each split's unseen classes are listed below (``ZeroShotSplit.classes``), so a dataset unpacked without
the split files still trains on the published split. SAKE's ``dataset.zip`` (Liu et al., ICCV 2019,
qliu24/SAKE; cs.jhu.edu/~qliu24/ZSSBIR/dataset.zip) ships the lists as ``cname_cid_zero.txt`` (one
``<class name> <class id>`` per line; names may contain spaces), next to ``cname_cid.txt`` for the seen
classes: ``Sketchy/zeroshot1`` holds the 25-class split and ``TUBerlin/zeroshot`` the 30-class one (both files
are also in the qliu24/SAKE repository, commit 3b32cd5, and equal the lists below); the 21-class split is
``zeroshot2`` in SAKE's test script (104 seen classes) and ``zeroshot0`` in ZSE-SBIR's data (Lin et al., CVPR
2023). When such a file with the split's class count is in the dataset (or ``data.unseen_list`` names one) it
is read instead. ACNet's own
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
    default_lists: tuple[str, ...]  # where the split's list file may be ({root} = data.root), first match wins
    source: str
    classes: tuple[str, ...]  # the unseen classes, as the dataset's class folders name them


SPLITS: dict[str, ZeroShotSplit] = {
    "yelamarthi21": ZeroShotSplit(
        "yelamarthi21", "Sketchy Extended", 21,
        ("{root}/zeroshot2/cname_cid_zero.txt", "{root}/zeroshot0/cname_cid_zero.txt"),
        "Yelamarthi et al., ECCV 2018 (test_split_ref.npy): the 21 unseen classes not in ImageNet-1K, 104 seen; "
        "SAKE dataset.zip Sketchy/zeroshot2 (ZSE-SBIR's data: zeroshot0). ACNet's released Sketchy folders use "
        "this split.",
        ("bat", "cabin", "cow", "dolphin", "door", "giraffe", "helicopter", "mouse", "pear", "raccoon", "rhinoceros",
         "saw", "scissors", "seagull", "skyscraper", "songbird", "sword", "tree", "wheelchair", "windmill", "window")),
    "sake25": ZeroShotSplit(
        "sake25", "Sketchy Extended", 25, ("{root}/zeroshot1/cname_cid_zero.txt",),
        "Shen et al., CVPR 2018 / SAKE (Liu et al., ICCV 2019): 25 random unseen classes, 100 seen; "
        "SAKE dataset.zip Sketchy/zeroshot1 (the list below equals qliu24/SAKE's "
        "dataset/Sketchy/zeroshot1/cname_cid_zero.txt).",
        ("airplane", "bell", "butterfly", "camel", "chicken", "cup", "deer", "harp", "horse", "parrot", "pineapple",
         "ray", "rifle", "scissors", "snail", "squirrel", "swan", "tank", "teddy_bear", "tree", "umbrella", "volcano",
         "wheelchair", "windmill", "wine_bottle")),
    "tuberlin30": ZeroShotSplit(
        "tuberlin30", "TU-Berlin Extended", 30, ("{root}/zeroshot/cname_cid_zero.txt",),
        "Shen et al., CVPR 2018 / SAKE: 30 random unseen classes with >= 400 photos each, 220 seen; "
        "SAKE dataset.zip TUBerlin/zeroshot (the list below equals qliu24/SAKE's file). ACNet drops val "
        "classes with < 400 photos (utils.py; recipe key data.min_val_photos).",
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
