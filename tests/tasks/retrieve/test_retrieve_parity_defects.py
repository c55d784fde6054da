"""Defects found by running the official LSEH code (yangong23/VSEnetworksLSEH, commit 0cc7468) side by side
with zsk (issue 11): each test failed before its fix."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from zsk.core.errors import ZskError
from zsk.core.run import load_config, start_run
from zsk.tasks.retrieve import train as train_mod
from zsk.tasks.retrieve.config import Config
from zsk.tasks.retrieve.data import Vocabulary, nltk_word_tokenize, read_vocab_file, write_sample
from zsk.tasks.retrieve.losses import lseh_loss, semantic_scores

PAPER = ["f30k_vsepp_lseh", "coco_vsepp_lseh", "iapr_vsepp_lseh", "f30k_vsepp_lmh", "f30k_vseinf_lseh",
         "coco_vseinf_lseh"]


def _cfg(name: str, *sets: str) -> Config:
    return load_config("retrieve", Config, f"retrieve/{name}", list(sets))[0]


# ----------------------------------------------------------------------------- LSEH semantic scores


def test_semantic_scores_divide_by_the_own_row_maximum() -> None:
    # official torch_cosine_sim on these vectors: [[1, 1, 0], [0.5, 1, 0], [0, 0, 0]]
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert torch.allclose(semantic_scores(v), torch.tensor([[1.0, 1.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]]))


def test_lseh_hardest_negative_follows_the_official_margin() -> None:
    # the official ContrastiveLossLSEH (VSEpp_LSEH/model.py, max_violation, margin 0.185) gives 0.3020 on these
    # inputs (0.1100 caption + 0.1920 image side); the transposed score matrix gave 0.3120
    scores = torch.tensor([[0.9, 0.2, 0.5, 0.1], [0.3, 0.8, 0.1, 0.6], [0.5, 0.4, 0.7, 0.2], [0.2, 0.5, 0.3, 0.6]])
    v = torch.tensor([[1.0, 0.0, 0.5], [4.0, 3.0, 0.0], [0.2, 0.1, 2.0], [1.0, 1.0, 1.0]])
    loss = lseh_loss(scores, v, torch.arange(4), alpha=0.185, lam=0.025)
    assert loss.item() == pytest.approx(0.3020, abs=1e-5)


# ----------------------------------------------------------------------------- VSE infinity recipes


@pytest.mark.parametrize("name", ["f30k_vseinf_lseh", "coco_vseinf_lseh"])
def test_vseinf_recipes_take_the_hardest_negative_from_epoch_0(name: str) -> None:
    # VSEinfty_LSEH/train.py sets max_violation on at epoch 0 (vse_mean_warmup_epochs defaults to 0)
    assert _cfg(name).train.loss.warmup_sum_epochs == 0


def test_vseinf_coco_learning_rate_is_the_readme_command() -> None:
    # README: python train.py --data_name coco ... --learning_rate 0.0008 --lr_update 10
    cfg = _cfg("coco_vseinf_lseh")
    assert cfg.train.lr == pytest.approx(8e-4) and cfg.train.lr_update == 10


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_validate_on_the_official_dev_subset(name: str) -> None:
    # PrecompDataset: dev length 5,000 captions (1,000 images); the IAPR copy 1,000 captions = 1,000 images
    cfg = _cfg(name)
    assert cfg.eval.val_max_images == 1000
    # VSE++ validates every val_step = 500 iterations and at every epoch end (both select the best model);
    # VSE infinity's mid-epoch validations only log (their checkpointing is commented out): epoch ends only
    want = 0 if "vseinf" in name else 500
    assert cfg.train.eval_every == want and cfg.train.eval_epoch_end


def test_eval_every_and_epoch_end_both_validate(tmp_path: Path) -> None:
    data = write_sample(tmp_path / "data", sizes={"train": 40, "dev": 10, "test": 10})
    # 200 captions / batch 32 = 7 steps per epoch (last one partial is dropped: 6); eval every 4 steps
    ctx = start_run("retrieve", Config, "retrieve/demo",
                    [f"data.root={data}", "train.epochs=2", "train.eval_every=4", "train.lr_update=0"],
                    out=tmp_path / "run")
    train_mod.train(ctx)
    evals = [json.loads(x) for x in (ctx.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in evals if r.get("kind") == "eval"]
    assert steps == [4, 6, 8, 12], steps


# ----------------------------------------------------------------------------- tokenizer and vocabulary


def test_official_tokenizer_is_nltk_word_tokenize() -> None:
    # NLTK's Treebank rules keep hyphenated words and split clitics as n't (VSE++ vocab.py / data.py)
    assert nltk_word_tokenize("A white-walled room, don't it?") == [
        "a", "white-walled", "room", ",", "do", "n't", "it", "?"]


def test_vocabulary_has_the_official_layout() -> None:
    vocab = Vocabulary.build(["a dog runs", "a dog sits", "a cat"], threshold=2)
    assert vocab.words == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog"]
    assert vocab.encode("A dog flies") == [1, 4, 5, 3, 2]
    masked = Vocabulary.build(["a dog runs", "a dog sits"], threshold=2, mask=True)
    assert masked.words[-1] == "<mask>" and masked.mask_id == len(masked) - 1 and masked.index["a"] == 4


def test_paper_recipes_count_train_and_dev_captions() -> None:
    # VSEpp_LSEH/vocab.py: {f30k,coco}_precomp vocabularies count train_caps.txt and dev_caps.txt
    assert _cfg("f30k_vsepp_lseh").data.vocab_splits == ["train", "dev"]
    assert _cfg("f30k_vsepp_lseh").data.tokenizer == "nltk"


def _official_pickle(path: Path, words: list[str]) -> None:
    """A vocabulary pickled as the official vocab.py does (a ``__main__.Vocabulary`` instance, protocol 2)."""
    cls = type("Vocabulary", (), {"__module__": "__main__"})
    obj = cls()
    obj.word2idx = {w: i for i, w in enumerate(words)}
    obj.idx2word = dict(enumerate(words))
    obj.idx = len(words)
    main = sys.modules["__main__"]
    had = getattr(main, "Vocabulary", None)
    main.Vocabulary = cls  # type: ignore[attr-defined]
    try:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    finally:
        if had is None:
            del main.Vocabulary  # type: ignore[attr-defined]
        else:
            main.Vocabulary = had  # type: ignore[attr-defined]


def test_reads_official_vocabulary_files(tmp_path: Path) -> None:
    words = ["<pad>", "<start>", "<end>", "<unk>", "raining", "white-walled"]
    _official_pickle(tmp_path / "f30k_precomp_vocab.pkl", words)
    assert read_vocab_file(tmp_path / "f30k_precomp_vocab.pkl").words == words
    (tmp_path / "v.json").write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(words)},
                                                 "idx2word": {str(i): w for i, w in enumerate(words)}, "idx": 6}))
    vocab = read_vocab_file(tmp_path / "v.json")
    assert vocab.words == words and vocab.encode("White-walled rain") == [1, 5, 3, 2]


def test_vocabulary_pickle_with_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(types.SimpleNamespace(x=1), protocol=2))
    with pytest.raises(ZskError, match="types"):
        read_vocab_file(evil)
    evil.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(ZskError, match="os"):
        read_vocab_file(evil)


def test_vocab_file_option_trains_with_the_given_vocabulary(tmp_path: Path) -> None:
    data = write_sample(tmp_path / "data", sizes={"train": 40, "dev": 10, "test": 10})
    from zsk.tasks.retrieve.data import load_split

    caps = load_split(_cfg("demo", f"data.root={data}").data, "train").captions
    words = Vocabulary.build(caps, 4).words + ["extra"]
    _official_pickle(tmp_path / "v.pkl", words)
    cfg = _cfg("demo", f"data.root={data}", f"data.vocab_file={tmp_path / 'v.pkl'}")
    assert train_mod.build_tokenizer(cfg, caps).words == words
