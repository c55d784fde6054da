"""The refer layout reader: restricted unpickling (no code from the file runs), split selection as REFER,
masks decoded with pycocotools (parts summed; union or the official sum == 1), the synthetic sample."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from zsk.core.errors import ZskError
from zsk.data.refer import RefItem, decode_mask, load_refer, read_refs, safe_unpickle, select_split
from zsk.tasks.refer.data import Tokenizer, write_sample


class _Evil:
    def __reduce__(self):  # noqa: ANN204 - what a malicious refs file would contain
        return (os.system, ("touch /tmp/zsk_refer_pwned",))


def test_restricted_unpickler_refuses_code_and_accepts_builtins(tmp_path) -> None:
    refs = [{"ref_id": 1, "ann_id": 2, "image_id": 3, "split": "train", "sentences": [{"raw": "a", "sent": "a"}],
             "tokens": ("a",), "score": 1.5, "flag": None, "ok": True}]
    for protocol in (0, 2, 4, 5):
        assert safe_unpickle(pickle.dumps(refs, protocol=protocol)) == refs
    bad = tmp_path / "refs(unc).p"
    bad.write_bytes(pickle.dumps([_Evil()], protocol=2))
    with pytest.raises(ZskError, match=r"refs\(unc\)\.p.*not a plain refs pickle.*posix.system|system"):
        read_refs(bad)
    assert not os.path.exists("/tmp/zsk_refer_pwned")


def test_split_selection_follows_refer() -> None:
    refs = [{"split": s} for s in ("train", "val", "testA", "testB", "testAB", "test")]
    assert [r["split"] for r in select_split(refs, "testA")] == ["testA", "testAB"]
    assert [r["split"] for r in select_split(refs, "testB")] == ["testB", "testAB"]
    assert [r["split"] for r in select_split(refs, "test")] == ["testA", "testB", "testAB", "test"]
    assert [r["split"] for r in select_split(refs, "val")] == ["val"]


def _item(seg, h=6, w=8) -> RefItem:
    return RefItem(1, 1, 1, None, h, w, seg, ("x",))  # type: ignore[arg-type]


def test_mask_parts_union_and_official_overlap() -> None:
    # two overlapping rectangles of one annotation (pixel-centre coverage by pycocotools' rasteriser)
    seg = [[0, 0, 4, 0, 4, 4, 0, 4], [2, 2, 6, 2, 6, 6, 2, 6]]
    union, official = decode_mask(_item(seg), "union"), decode_mask(_item(seg), "official")
    from pycocotools import mask as mu

    parts = mu.decode(mu.frPyObjects(seg, 6, 8)).astype(int)
    assert np.array_equal(union, (parts.sum(2) > 0).astype(np.uint8))
    assert np.array_equal(official, (parts.sum(2) == 1).astype(np.uint8))
    assert union.sum() > official.sum() > 0  # the overlap is dropped by the official rule only
    rle = mu.encode(np.asfortranarray(union))
    assert np.array_equal(decode_mask(_item(rle)), union)  # compressed RLE
    rle_list = {"size": [6, 8], "counts": [6, 3, 39]}  # uncompressed RLE (iscrowd style)
    assert decode_mask(_item(rle_list)).sum() == 3


def test_sample_is_read_back_in_the_refer_layout(tmp_path) -> None:
    root = write_sample(tmp_path, num_images=8, size=48, seed=3)
    assert (root / "refcoco" / "refs(unc).p").is_file() and (root / "refcoco" / "instances.json").is_file()
    train = load_refer(root, "refcoco", "unc", "train", root / "images/mscoco/images/train2014")
    assert len(train) == 2 * 5 and all(len(r.sentences) == 3 for r in train)
    inst = json.loads((root / "refcoco" / "instances.json").read_text())
    assert {a["id"] for a in inst["annotations"]} >= {r.ann_id for r in train}
    for split in ("val", "testA", "testB"):
        assert load_refer(root, "refcoco", "unc", split, root / "images/mscoco/images/train2014")
    m = decode_mask(train[0])
    assert m.shape == (48, 48) and 0 < m.sum() < 48 * 48 / 2
    tok = Tokenizer.from_spec("{root}/vocab.txt", str(root), 6)
    ids, att = tok.batch(["the red square on the left side", "red"])
    assert ids.shape == (2, 6) and att[0].tolist() == [1] * 6 and att[1].tolist() == [1, 1, 1, 0, 0, 0]
    assert ids[1, 0] == tok.tok.cls_token_id and ids[1, 2] == tok.tok.sep_token_id and ids[1, 3:].eq(0).all()
    assert ids[0, -1] != tok.tok.sep_token_id  # truncated after encoding: the [SEP] is cut (official)
    again = Tokenizer.from_vocab(tok.vocab(), 6)
    assert torch.equal(again.batch(["the red square on the left side"])[0], ids[:1])
