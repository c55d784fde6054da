"""Learning tests and the other network variants (VSE infinity BiGRU / BERT, raw images), bench and demo."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from zsk.core.run import start_run
from zsk.tasks.retrieve import hooks
from zsk.tasks.retrieve import train as train_mod
from zsk.tasks.retrieve.config import Config
from zsk.tasks.retrieve.data import (
    MASK,
    SPECIALS,
    Vocabulary,
    augment_tokens,
    collate_pairs,
    load_split,
    write_sample,
)


def _sample(tmp_path: Path, n_train: int = 160) -> Path:
    return write_sample(tmp_path / "data", sizes={"train": n_train, "dev": 30, "test": 30})


def _train(tmp_path: Path, data: Path, name: str, *sets: str) -> tuple[dict, Path]:
    ctx = start_run("retrieve", Config, "retrieve/demo", [f"data.root={data}", *sets], out=tmp_path / name)
    return train_mod.train(ctx), ctx.run_dir


def _evaluate(checkpoint: Path, split: str | None = None) -> dict:
    from zsk.tasks.retrieve.evaluate import evaluate, load

    return evaluate(load(checkpoint), split)


def test_vocabulary_and_augmentation() -> None:
    vocab = Vocabulary.build(["a dog runs", "a dog sits", "a cat"], threshold=2, mask=True)
    assert vocab.words == list(SPECIALS) + ["a", "dog", MASK]  # official ids, <mask> appended
    assert vocab.encode("A dog flies") == [1, 4, 5, 3, 2]  # <start> a dog <unk> <end>
    rng = random.Random(0)
    ids = [1, 10, 11, 12, 13, 14, 15, 16, 17, 2]
    assert augment_tokens(ids, 0.0, 4, 30, rng) == ids
    out = [augment_tokens(ids, 1.0, 4, 30, rng) for _ in range(200)]
    assert all(o[0] == 1 and o[-1] == 2 and len(o) >= 3 for o in out)
    inner = [t for o in out for t in o[1:-1]]
    assert inner.count(4) / len(inner) > 0.6  # masked words dominate what is left (50% of 60%)
    assert np.mean([len(o) - 2 for o in out]) == pytest.approx(8 * 0.6, abs=0.5)  # 40% deleted
    assert MASK in vocab.words


def test_collate_pads_dropped_regions() -> None:
    items = [{"image": torch.ones(3, 2), "tokens": torch.tensor([1, 5, 2]), "index": 0, "img_index": 0},
             {"image": torch.ones(1, 2), "tokens": torch.tensor([1, 2]), "index": 6, "img_index": 1}]
    b = collate_pairs(items)
    assert b["image"].shape == (2, 3, 2) and b["img_lengths"].tolist() == [3, 1]
    assert b["image"][1, 1:].abs().sum() == 0 and b["tokens"].tolist() == [[1, 5, 2], [1, 2, 0]]


def test_demo_learns_well_above_chance(tmp_path, monkeypatch) -> None:
    from zsk.tasks.retrieve.evaluate import score_split

    monkeypatch.setenv("ZSK_CACHE", str(tmp_path / "cache"))
    result = hooks.demo(tmp_path / "demo", "cpu")
    # the same network untrained, on the same test split (the sample data the demo wrote into the cache)
    data = yaml.safe_load((tmp_path / "demo" / "run" / "recipe.yaml").read_text())["data"]["root"]
    assert Path(data).is_relative_to(tmp_path / "cache")
    cfg, _ = __import__("zsk.core.run", fromlist=["load_config"]).load_config(
        "retrieve", Config, "retrieve/demo", [f"data.root={data}"])
    torch.manual_seed(0)
    train = load_split(cfg.data, "train")
    tok = train_mod.build_tokenizer(cfg, train.captions)
    untrained = score_split(train_mod.build_model(cfg, len(tok)), load_split(cfg.data, "test"), tok, cfg,
                            torch.device("cpu"))
    # chance rsum with 40 images / 200 captions is about 77
    assert result["metric"] == "rsum" and result["value"] > 250
    assert result["value"] > untrained["rsum"] + 100


def test_lmh_and_lseh_train_through_the_same_path(tmp_path) -> None:
    data = _sample(tmp_path)
    runs = {}
    for kind in ("lmh", "lseh"):
        res, run_dir = _train(tmp_path, data, kind, f"train.loss.kind={kind}", "train.epochs=2")
        runs[kind] = res
        first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        assert first["kind"] == "train" and first["loss"] > 0
        assert res["rsum"] > 180, kind  # chance is about 77 on 30 images / 150 captions
        assert 0 < res["epochs_to_best"] <= 2
    # the same batches and initialisation, different objectives -> different models
    assert runs["lmh"]["rsum"] != runs["lseh"]["rsum"] or runs["lmh"]["i2t_meanr"] != runs["lseh"]["i2t_meanr"]
    res, _ = _train(tmp_path, data, "lsh", "train.loss.kind=lsh", "train.epochs=1", "train.max_steps=3")
    assert "rsum" in res


def test_vseinf_bigru_gpo_with_augmentation(tmp_path) -> None:
    data = _sample(tmp_path, 80)
    res, run_dir = _train(tmp_path, data, "vseinf", "model.base=vseinf", "model.embed_size=32", "model.gpo_dim=8",
                          "data.region_drop=0.2", "data.token_aug=0.2", "train.loss.warmup_sum_epochs=1",
                          "train.epochs=2", "train.lr_update=1", "train.log_every=1")
    assert res["rsum"] > 0
    lrs = [json.loads(x)["lr"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
           if json.loads(x)["kind"] == "train"]
    assert lrs[0] == pytest.approx(2e-3) and lrs[-1] == pytest.approx(2e-4)  # x0.1 after lr_update epochs
    ev = _evaluate(run_dir / "best.pt", split="dev")
    assert ev["rsum"] == pytest.approx(res["best_rsum"], abs=1e-6)


def _tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "dog", "cat", "on", "in", "beach", "park",
             "man", "woman", "is", "at", "by", "there", "photo", "of", "sitting", "standing", "##s"]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    return folder


def test_vseinf_bert_encoder(tmp_path, monkeypatch) -> None:
    if not _torchvision_ok():
        # transformers imports torchvision when it is installed; a broken torchvision wheel would make
        # BertModel unimportable although BERT does not use it, so hide it for this test
        monkeypatch.setitem(sys.modules, "torchvision", None)
    data = _sample(tmp_path, 60)
    bert = _tiny_bert(tmp_path / "bert-model")
    res, run_dir = _train(tmp_path, data, "bert", "model.base=vseinf", "model.text_encoder=bert",
                          f"model.bert={bert}", "model.embed_size=16", "model.gpo_dim=4", "train.epochs=1",
                          "train.max_steps=3")
    assert "rsum" in res
    ev = _evaluate(run_dir / "best.pt", split="dev")
    assert ev["rsum"] == pytest.approx(res["best_rsum"], abs=1e-6)  # BERT weights travel in the checkpoint
    missing = tmp_path / "nowhere"
    from zsk.core.errors import ZskError

    with pytest.raises(ZskError, match="model.bert"):
        _train(tmp_path, data, "bert2", "model.base=vseinf", "model.text_encoder=bert", f"model.bert={missing}x",
               "train.epochs=1")


def _torchvision_ok() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is reported as a skip reason
        return False
    return True


def _tiny_trunk(name: str, weights):
    """Stand-in for torchvision's classifier trunk when torchvision cannot be imported here."""
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    return net, 8


def test_raw_image_training_from_karpathy_json(tmp_path, monkeypatch) -> None:
    from PIL import Image

    if not _torchvision_ok():
        monkeypatch.setattr(train_mod, "cnn_trunk", _tiny_trunk)
        backbone = "tiny"
    else:
        backbone = "mobilenet_v3_small"  # smallest torchvision classifier; Sequential head
    rng = np.random.default_rng(0)
    images = []
    for i, split in enumerate(["train"] * 8 + ["val"] * 2 + ["test"] * 2):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
        images.append({"filename": f"{i}.jpg", "split": split, "imgid": i,
                       "sentences": [{"raw": f"a photo of a {w} number {i % 3}", "tokens": []}
                                     for w in ("dog", "cat", "bird", "horse", "boat")]})
    (tmp_path / "ds.json").write_text(json.dumps({"images": images}))
    res, run_dir = _train(tmp_path, tmp_path, "raw", "data.format=karpathy", "data.karpathy_json=ds.json",
                          "model.image_encoder=cnn", f"model.backbone={backbone}", "model.pretrained=null",
                          "model.finetune=true", "model.image_size=32", "data.vocab_threshold=1",
                          "train.batch_size=4", "train.epochs=1", "data.lsa_rank=4")
    ev = _evaluate(run_dir / "best.pt", split="test")
    assert ev["images"] == 2 and ev["captions"] == 10
    assert ev["rsum"] == pytest.approx(_evaluate(run_dir / "best.pt", split="test")["rsum"])
    # an image folder is a gallery for raw-image checkpoints
    from zsk.tasks.retrieve.predict import build_index

    out = build_index(run_dir / "best.pt", tmp_path / "idx", images=tmp_path)
    assert out["count"] == 12 and out["kind"] == "images"


def test_cnn_encoder_frozen_backbone_stays_in_eval_mode() -> None:
    from zsk.tasks.retrieve.model import CNNImageEncoder

    trunk, dim = _tiny_trunk("tiny", None)
    enc = CNNImageEncoder(trunk, dim, 6, finetune=False).train()
    assert not trunk.training and enc.fc.training
    assert all(not p.requires_grad for p in trunk.parameters())
    before = trunk[1].running_mean.clone()
    enc(torch.randn(2, 3, 16, 16)).sum().backward()
    assert torch.equal(trunk[1].running_mean, before)  # BN statistics untouched (vsepp #4/#30)
    assert enc.fc.weight.grad is not None


def test_bench_spec(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(hooks, "BENCH_EVAL_IMAGES", 40)
    from zsk.core.bench import trainer_step
    from zsk.core.run import load_config

    cfg, _ = load_config("retrieve", Config, "retrieve/demo", None)
    spec = hooks.bench_spec(cfg, torch.device("cpu"), 8)
    train_step, _ = trainer_step(spec, cfg, torch.device("cpu"))
    train_step()
    spec.infer_step()
    assert spec.unit == "pairs" and spec.train_samples == 8
    extra = spec.extra()
    assert extra["eval_images"] == 40 and extra["eval_captions"] == 200 and extra["eval_s"] > 0


def test_bench_steps_the_recipes_optimizer(tmp_path, monkeypatch) -> None:
    """bench times the Trainer's step with the recipe's optimizer (Adam for VSE++, AdamW with weight decay
    and BERT at lr x 0.1 for VSE infinity), clipping and real input sizes, not a hand-rolled Adam step."""
    from zsk.core.bench import trainer_step
    from zsk.core.run import load_config

    cpu = torch.device("cpu")
    cfg, _ = load_config("retrieve", Config, "retrieve/f30k_vsepp_lseh", ["model.embed_size=16", "model.word_dim=8"])
    spec = hooks.bench_spec(cfg, cpu, 4)
    _, trainer = trainer_step(spec, cfg, cpu)
    assert type(trainer.optimizer) is torch.optim.Adam and trainer.cfg.clip_grad_norm == 2.0
    assert tuple(spec.batch["image"].shape) == (4, 36, 2048) and spec.train_cfg.batch_size == 128

    if not _torchvision_ok():
        monkeypatch.setitem(sys.modules, "torchvision", None)
    bert = _tiny_bert(tmp_path / "bert")
    cfg, _ = load_config("retrieve", Config, "retrieve/f30k_vseinf_lseh",
                         [f"model.bert={bert}", "model.embed_size=16", "model.gpo_dim=4"])
    spec = hooks.bench_spec(cfg, cpu, 4)
    step, trainer = trainer_step(spec, cfg, cpu)
    assert type(trainer.optimizer) is torch.optim.AdamW
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([8e-4, 8e-5])  # BERT at lr x model.bert_lr_mult
    assert all(g["weight_decay"] == pytest.approx(1e-4) for g in groups)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    step()
    assert trainer.step == 1 and any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_iapr_one_description_per_image(tmp_path) -> None:
    from zsk.data.captions import read_precomp, write_precomp

    src = _sample(tmp_path, 60)
    iapr = tmp_path / "iapr_precomp"
    for split in ("train", "dev", "test"):
        s = read_precomp(src, split)
        write_precomp(iapr, split, np.asarray(s.features), s.captions[::5])  # one description per image
    res, run_dir = _train(tmp_path, tmp_path, "iapr", "data.name=iapr", "data.captions_per_image=1",
                          "train.epochs=1", "data.vocab_threshold=1")
    ev = _evaluate(run_dir / "best.pt", split="test")
    assert ev["images"] == ev["captions"] == 30 and ev["rsum"] == pytest.approx(
        sum(ev[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    # the 5-captions rule applied to 1:1 data is refused with the file named
    from zsk.core.errors import ZskError

    with pytest.raises(ZskError, match=r"train_caps\.txt: 60 captions for 60 images"):
        _train(tmp_path, tmp_path, "iapr5", "data.name=iapr", "train.epochs=1")


def test_resume_with_augmentation_matches_uninterrupted_run(tmp_path) -> None:
    data = _sample(tmp_path, 64)
    sets = ["model.base=vseinf", "model.embed_size=16", "model.gpo_dim=4", "data.region_drop=0.2",
            "data.token_aug=0.2", "train.epochs=2"]
    full, _ = _train(tmp_path, data, "full", *sets)
    _train(tmp_path, data, "cut", *sets, "train.max_steps=14")  # stops inside epoch 2, after an evaluation
    ctx = start_run("retrieve", Config, "retrieve/demo", [f"data.root={data}", *sets], out=tmp_path / "cut",
                    resume=True)
    resumed = train_mod.train(ctx)
    assert resumed["rsum"] == pytest.approx(full["rsum"]) and resumed["t2i_meanr"] == pytest.approx(full["t2i_meanr"])


def test_vocabulary_from_training_captions_only_by_default(tmp_path) -> None:
    from zsk.core.run import load_config

    data = _sample(tmp_path, 20)
    test_caps = data / "test_caps.txt"
    lines = test_caps.read_text().splitlines()
    test_caps.write_text("\n".join(["zebra " * 3 + line for line in lines]) + "\n")  # a test-only word
    cfg, _ = load_config("retrieve", Config, "retrieve/demo", [f"data.root={data}", "data.vocab_threshold=1"])
    train = load_split(cfg.data, "train")
    assert "zebra" not in train_mod.build_tokenizer(cfg, train_mod.vocabulary_captions(cfg, train)).words
    cfg.data.vocab_splits = ["train", "dev", "test"]  # the original VSE++ vocabulary (vsepp #29)
    assert "zebra" in train_mod.build_tokenizer(cfg, train_mod.vocabulary_captions(cfg, train)).words


@pytest.mark.skipif(not _torchvision_ok(), reason="torchvision (needed by timm) cannot be imported here")
def test_timm_backbone_with_local_weight_file(tmp_path) -> None:
    import timm

    from zsk.core.errors import ZskError
    from zsk.tasks.retrieve.model import cnn_trunk

    ref = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    net, dim = cnn_trunk("timm:test_resnet", str(tmp_path / "w.pth"))
    x = torch.randn(1, 3, 32, 32)
    assert dim == ref.num_features and torch.allclose(net.eval()(x), ref.eval()(x))
    with pytest.raises(ZskError, match="model.pretrained"):
        cnn_trunk("timm:test_resnet", str(tmp_path / "missing.pth"))
    with pytest.raises(ZskError, match="unknown timm model"):
        cnn_trunk("timm:no_such_net", None)


@pytest.mark.skipif(not _torchvision_ok(), reason="torchvision (needed by timm) cannot be imported here")
def test_frozen_pretrained_backbone_is_not_copied_into_checkpoints(tmp_path) -> None:
    import timm

    from zsk.core.checkpoint import model_state, save_checkpoint
    from zsk.core.run import load_config

    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), tmp_path / "w.pth")
    sets = ["model.image_encoder=cnn", "model.backbone=timm:test_resnet", f"model.pretrained={tmp_path / 'w.pth'}",
            "model.finetune=false", "model.embed_size=8", "model.image_size=32"]
    cfg, recipe = load_config("retrieve", Config, "retrieve/demo", sets)
    vocab = Vocabulary.build(["a dog", "a cat"], threshold=1)
    model = train_mod.build_model(cfg, len(vocab))
    assert train_mod.frozen_prefixes(cfg) == ("image_encoder.backbone.",)
    state = model_state(model, train_mod.frozen_prefixes(cfg))
    assert not any(k.startswith("image_encoder.backbone.") for k in state)
    save_checkpoint(tmp_path / "c.pt", {"task": "retrieve", "recipe": recipe, "model": state,
                                        "extra": {"vocab": vocab.words}})
    from zsk.tasks.retrieve.evaluate import load

    loaded = load(tmp_path / "c.pt").model
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.allclose(loaded.encode_images(x), model.encode_images(x), atol=1e-6)


def test_nonfinite_features_refused_and_large_files_checked_once(tmp_path, monkeypatch) -> None:
    """NaN/inf image features are refused naming the file and the first bad image; files above the size
    threshold keep the check's result in the cache (keyed by size and mtime), so they are read for it once."""
    from zsk.core.cache import default_cache
    from zsk.core.errors import ZskError
    from zsk.data.captions import nonfinite_rows
    from zsk.tasks.retrieve import data as data_mod

    feats = np.ones((50, 4, 8), np.float32)
    feats[17, 2, 3] = np.nan
    feats[31, 0, 0] = -np.inf
    assert nonfinite_rows(feats, chunk_bytes=100) == nonfinite_rows(feats) == (2, 17)
    path = tmp_path / "x_ims.npy"
    np.save(path, feats)
    mm = np.load(path, mmap_mode="r")
    with pytest.raises(ZskError, match=r"x_ims\.npy: 2 image\(s\) have NaN or inf features \(first: image 17\)"):
        data_mod.check_finite_features(mm, path)
    monkeypatch.setattr(data_mod, "FINITE_CHECK_CACHE_BYTES", 0)
    calls = []
    monkeypatch.setattr("zsk.data.captions.nonfinite_rows", lambda f: calls.append(1) or nonfinite_rows(f))
    for _ in range(2):
        with pytest.raises(ZskError, match="first: image 17"):
            data_mod.check_finite_features(mm, path)
    assert len(calls) == 1 and "retrieve-finite" in default_cache().info()
    np.save(tmp_path / "ok_ims.npy", np.ones((3, 4, 8), np.float32))
    data_mod.check_finite_features(np.load(tmp_path / "ok_ims.npy", mmap_mode="r"), tmp_path / "ok_ims.npy")
    assert len(calls) == 2
