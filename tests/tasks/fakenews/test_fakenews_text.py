"""Preprocessing, vocabulary expansion, hard-example perturbation and the sample corpus."""

from __future__ import annotations

import random

import pytest
import torch

from zsk.core.errors import ZskError
from zsk.data.tables import read_texts
from zsk.tasks.fakenews.augment import hard_examples, load_synonyms, perturb
from zsk.tasks.fakenews.config import EncoderConfig, PreprocessConfig
from zsk.tasks.fakenews.data import SAMPLE_SIZES, write_sample
from zsk.tasks.fakenews.model import encoder_from_config, random_encoder_config
from zsk.tasks.fakenews.preprocess import clean_text
from zsk.tasks.fakenews.tokenization import build_wordpiece_tokenizer, tokenizer_files, tokenizer_from_files
from zsk.tasks.fakenews.vocab import expand_vocabulary, frequent_multipiece_terms


def test_clean_text_steps():
    cfg = PreprocessConfig()
    text = "The #COVID-19 vaccine is here!!! 😷 see https://t.co/abc123 and www.who.int - via @CDC_india"
    # URLs, '#', '!', emoji, '@', '_' and a loose ' - ' go; stop-words (the, is, here, see, and, via) go
    assert clean_text(text, cfg) == "COVID-19 vaccine CDC india"
    no_hyphen = PreprocessConfig(keep_hyphens=False, strip_stopwords=False)
    assert clean_text("covid-19 is - bad", no_hyphen) == "covid 19 is bad"
    keep_all = PreprocessConfig(strip_urls=False, strip_symbols=False, strip_stopwords=False)
    assert clean_text("a  http://x.y/z  😷", keep_all) == "a http://x.y/z 😷"
    assert clean_text("the and of", cfg) == "the and of"  # never emptied by stop-word removal
    assert clean_text("Ünïcode café", cfg) == "Ünïcode café"  # letters of any script are kept


@pytest.fixture(scope="module")
def tokenizer_and_encoder():
    texts = ["corona virus lockdown news", "the pandemic spreads fast", "covid cases rise"] * 5
    torch.manual_seed(0)
    tok = build_wordpiece_tokenizer(texts, vocab_size=80, lowercase=True)
    enc = encoder_from_config(random_encoder_config(EncoderConfig(hidden_size=8, num_layers=1, num_heads=2,
                                                                  intermediate_size=16), len(tok), tok.pad_token_id))
    return tok, enc


def test_vocabulary_expansion_adds_once_resizes_and_mean_initialises(tokenizer_and_encoder):
    tok, enc = tokenizer_and_encoder
    rows = enc.get_input_embeddings().weight.shape[0]
    assert rows == len(tok)
    word = "indiafightscorona"
    pieces = tok(word, add_special_tokens=False)["input_ids"]
    assert len(pieces) >= 2 or pieces == [tok.unk_token_id]
    before = enc.get_input_embeddings().weight.detach().clone()
    added = expand_vocabulary(tok, enc, ["IndiaFightsCorona", "covid-19", "covid-19"], init="mean")
    assert added == ["indiafightscorona", "covid-19"]  # lower-cased for an uncased tokenizer, deduplicated
    W = enc.get_input_embeddings().weight
    assert W.shape[0] == rows + 2 == len(tok)
    assert torch.equal(W[:rows], before)  # old rows untouched
    new_id = tok.convert_tokens_to_ids(word)
    assert torch.allclose(W[new_id], before[pieces].mean(0))
    assert tok.tokenize("IndiaFightsCorona covid-19 lockdown")[:2] == ["indiafightscorona", "covid-19"]
    # a second expansion with the same tokens changes nothing
    assert expand_vocabulary(tok, enc, ["covid-19", "indiafightscorona"]) == []
    assert enc.get_input_embeddings().weight.shape[0] == rows + 2
    # the tokenizer (with its added tokens) survives the checkpoint round trip
    again = tokenizer_from_files(tokenizer_files(tok))
    assert again.tokenize("indiafightscorona covid-19") == ["indiafightscorona", "covid-19"]
    assert len(again) == len(tok)


def test_random_init_of_new_rows(tokenizer_and_encoder):
    tok, enc = tokenizer_and_encoder
    torch.manual_seed(1)
    (tok_id,) = [tok.convert_tokens_to_ids(t) for t in expand_vocabulary(tok, enc, ["zzqx"], init="random", std=0.5)]
    row = enc.get_input_embeddings().weight[tok_id]
    assert 0.1 < row.std().item() < 1.5  # drawn from N(0, 0.5), not a mean of small rows


def test_frequent_multipiece_terms():
    tok = build_wordpiece_tokenizer(["corona corona virus"] * 20, vocab_size=60, lowercase=True)
    assert tok.tokenize("corona") == ["corona"]  # a whole word of this vocabulary
    texts = ["xylophoneqq xylophoneqq corona", "xylophoneqq zebrafishqq zebrafishqq", "zebrafishqq corona rare1q"]
    picked = frequent_multipiece_terms(tok, texts, n=5, min_count=2)
    # corona is a single piece (in the vocabulary); rare1q appears once (< min_count)
    assert picked == ["xylophoneqq", "zebrafishqq"]
    assert frequent_multipiece_terms(tok, texts, n=1, min_count=2) == ["xylophoneqq"]


def test_perturb_and_hard_examples(tmp_path):
    rng = random.Random(0)
    text = "one two three four five"
    for _ in range(20):
        out = perturb(text, rng, None, max_edits=2)
        assert 3 <= len(out.split()) <= 4 and set(out.split()) <= set(text.split())
    syn = tmp_path / "syn.txt"
    syn.write_text("# groups\nbig large huge\nfast, quick\n", encoding="utf-8")
    table = load_synonyms(syn)
    assert table["big"] == ["large", "huge"] and table["quick"] == ["fast"]
    replaced = {perturb("big", random.Random(s), table, 1) for s in range(20)}
    assert replaced == {"large", "huge"}  # a one-word text is never deleted, only replaced
    texts, labels = hard_examples(["a b c", "d e f", "g h i"], [0, 1, 1], [0, 0, 1], random.Random(0), None, 1)
    assert labels == [1] and len(texts[0].split()) == 2  # only the misclassified sample, one word deleted
    bad = tmp_path / "bad.txt"
    bad.write_text("lonely\n", encoding="utf-8")
    with pytest.raises(ZskError, match="line 1: a synonym group needs at least two words"):
        load_synonyms(bad)


def test_sample_corpus_is_in_constraint_layout_and_deterministic(tmp_path):
    counts = write_sample(tmp_path / "a")
    write_sample(tmp_path / "b")
    assert counts == SAMPLE_SIZES
    for name in SAMPLE_SIZES:
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes()
        s = read_texts(tmp_path / "a" / name, "tweet", "label", "id", classes=["real", "fake"])
        assert len(s) == SAMPLE_SIZES[name] and 0.35 < sum(s.labels) / len(s) < 0.65
    assert a.startswith(b"id,tweet,label\n")


def test_tokenised_corpora_are_cached(tokenizer_and_encoder, monkeypatch):
    from zsk.tasks.fakenews import data as data_mod
    from zsk.tasks.fakenews.tokenization import tokenizer_fingerprint

    tok, _ = tokenizer_and_encoder
    calls = []
    real = data_mod.encode_texts
    monkeypatch.setattr(data_mod, "encode_texts", lambda *a: calls.append(1) or real(*a))
    texts = ["covid cases rise", "the pandemic"]
    fp = tokenizer_fingerprint(tok)
    a = data_mod.encode_cached(tok, texts, 16, fp)
    b = data_mod.encode_cached(tok, texts, 16, fp)
    assert len(calls) == 1 and torch.equal(a["input_ids"], b["input_ids"])
    data_mod.encode_cached(tok, texts, 8, fp)  # another max_length is another entry
    assert len(calls) == 2
    assert a["lengths"].tolist() == [len(tok(t)["input_ids"]) for t in texts]


def test_new_tokens_for_each_mode():
    from zsk.tasks.fakenews.config import PAPER_NEW_TOKENS, BranchConfig
    from zsk.tasks.fakenews.train import new_tokens_for

    tok = build_wordpiece_tokenizer(["corona corona virus"] * 20, vocab_size=60, lowercase=True)
    texts = ["lockdownqq lockdownqq corona", "lockdownqq corona"]
    assert new_tokens_for(BranchConfig(new_tokens="none"), tok, texts, "b") == []
    assert new_tokens_for(BranchConfig(new_tokens="paper"), tok, None, "b") == list(PAPER_NEW_TOKENS)
    assert new_tokens_for(BranchConfig(new_tokens="list", new_tokens_list=["x-y"]), tok, None, "b") == ["x-y"]
    assert new_tokens_for(BranchConfig(new_tokens="frequent", new_tokens_n=3), tok, texts, "b") == ["lockdownqq"]
    with pytest.raises(ZskError, match="new_tokens_list is empty"):
        new_tokens_for(BranchConfig(new_tokens="list"), tok, None, "b")
    with pytest.raises(ZskError, match="needs the training corpus"):
        new_tokens_for(BranchConfig(new_tokens="frequent"), tok, None, "b")
