"""Malformed inputs a new user would try, across every retrieve verb (train, eval, predict, info, sample, index,
query, lsa): each exits 2 with one `error:` line naming the file, the recipe key or the option (no traceback, no
"unexpected ..."). Table-driven (issue 12).

`ROWS` holds argv templates (`{d}`: the folder `write_inputs` fills, `{data}`: the sample set, `{ckpt}`: a tiny
trained best.pt, `{index}` / `{capindex}`: an image and a caption index of it, `{id}`: the row's id).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _variant(d: Path, data: Path, name: str) -> Path:
    """A copy of the sample set (train/dev/test/testall splits, 4 regions x 32 dims, 5 captions per image)."""
    out = d / name
    shutil.copytree(data, out)
    return out


def write_inputs(d: Path, data: Path, index: Path) -> None:
    """Every malformed file of the table, in its real format, from the sample set and an image index of it."""
    d.mkdir(parents=True, exist_ok=True)
    ims = np.load(data / "train_ims.npy")
    caps = (data / "train_caps.txt").read_text().splitlines()
    # --- precomputed splits that do not fit ----------------------------------------------------------
    (_variant(d, data, "caps_short") / "train_caps.txt").write_text("\n".join(caps[:-2]) + "\n")
    v = _variant(d, data, "caps_extra")
    (v / "test_caps.txt").write_text((v / "test_caps.txt").read_text() + "one caption too many\n")
    (_variant(d, data, "caps_blank") / "train_caps.txt").write_text("\n".join(caps[:3] + [""] + caps[4:]) + "\n")
    np.save(_variant(d, data, "ims_shape") / "train_ims.npy", np.zeros((240, 5, 32), np.float32))
    np.save(_variant(d, data, "ims_flat") / "train_ims.npy", np.zeros(240, np.float32))
    np.save(_variant(d, data, "ims_int") / "train_ims.npy", ims.astype(np.int32))
    np.save(_variant(d, data, "ims_empty") / "train_ims.npy", np.zeros((0, 4, 32), np.float32))
    (_variant(d, data, "ims_garbage") / "train_ims.npy").write_bytes(b"not a numpy file\n" * 64)
    _truncate(_variant(d, data, "ims_trunc") / "train_ims.npy")
    nan = ims.copy()
    nan[7, 1, 3] = np.nan
    nan[9, 0, 0] = np.inf
    np.save(_variant(d, data, "ims_nan") / "train_ims.npy", nan)
    test_nan = np.load(data / "test_ims.npy")
    test_nan[2, 2, 2] = np.nan
    np.save(_variant(d, data, "test_nan") / "test_ims.npy", test_nan)
    (_variant(d, data, "ids_bad") / "train_ids.txt").write_text("\n".join(str(i) for i in range(7)) + "\n")
    (_variant(d, data, "no_dev") / "dev_caps.txt").unlink()
    # --- Karpathy split files (raw-image training) ---------------------------------------------------
    sentences = [{"raw": f"a photo number {k}", "tokens": ["a", "photo"]} for k in range(5)]
    (d / "img.jpg").write_bytes(b"")  # never opened: the split file is refused first
    (d / "k_nokeys.json").write_text(json.dumps({"images": [{"filename": "img.jpg", "split": "train"}]}))
    (d / "k_nosplit.json").write_text(json.dumps({"images": [{"filename": "img.jpg", "sentences": sentences}]}))
    (d / "k_noimages.json").write_text(json.dumps({"dataset": "flickr30k"}))
    (d / "k_list.json").write_text(json.dumps([{"filename": "img.jpg"}]))
    (d / "k_badjson.json").write_text('{"images": [{"filename": "img.jpg", ')
    (d / "k_rawint.json").write_text(json.dumps({"images": [{"filename": "img.jpg", "split": "train",
                                                             "sentences": [{"raw": 7}] * 5}]}))
    (d / "k_fewcaps.json").write_text(json.dumps({"images": [{"filename": "img.jpg", "split": "train",
                                                              "sentences": sentences[:3]}]}))
    (d / "k_ok.json").write_text(json.dumps({"images": [{"filename": "img.jpg", "split": split, "sentences": sentences}
                                                        for split in ("train", "val", "test")]}))
    (d / "k_noimage.json").write_text(json.dumps({"images": [{"filename": "ghost.jpg", "split": "train",
                                                              "sentences": sentences}]}))
    # --- LSA files (LSEH step 1, train_svd.txt) ------------------------------------------------------
    rng = np.random.default_rng(0)
    np.savetxt(d / "lsa_rows.txt", rng.random((10, 8)), delimiter=",")
    lsa = rng.random((1200, 8))
    lsa[5, 2] = np.nan
    np.savetxt(d / "lsa_nan.txt", lsa, delimiter=",")
    (d / "lsa_text.txt").write_text("these are words, not numbers\n" * 1200)
    (d / "lsa_ragged.txt").write_text("0.1,0.2,0.3\n0.4,0.5\n" * 600)
    (d / "lsa_empty.txt").write_text("")
    # --- query files -----------------------------------------------------------------------------------
    np.save(d / "q_shape.npy", np.zeros((5, 32), np.float32))  # 5 regions for a 4-region model
    np.save(d / "q_dim.npy", np.zeros((2, 4, 16), np.float32))
    q = np.load(data / "test_ims.npy")[:2].copy()
    np.save(d / "q_ok.npy", q[0])
    q[1, 0, 0] = np.nan
    np.save(d / "q_nan.npy", q)
    np.save(d / "q_int.npy", np.ones((4, 32), np.int64))
    np.save(d / "q_empty.npy", np.zeros((0, 4, 32), np.float32))
    np.save(d / "q_str.npy", np.full((4, 32), "a"))
    (d / "q_garbage.npy").write_bytes(b"\x93NUMPY garbage" * 10)
    np.save(d / "q_trunc.npy", np.load(data / "test_ims.npy"))
    _truncate(d / "q_trunc.npy")
    (d / "queries.txt").write_text("a dog on the beach\na cat in the kitchen\n")
    # --- galleries for index -----------------------------------------------------------------------
    g = np.load(data / "test_ims.npy").copy()
    g[3, 1, 1] = np.inf
    np.save(d / "g_inf.npy", g)
    np.save(d / "g_shape.npy", np.zeros((10, 5, 32), np.float32))
    (d / "caps_empty.txt").write_text("")
    (d / "caps_blank_line.txt").write_text("a dog\n\na cat\n")
    # --- damaged index folders ---------------------------------------------------------------------
    shutil.copytree(index, d / "idx_noemb")
    (d / "idx_noemb" / "embeddings.npy").unlink()
    shutil.copytree(index, d / "idx_badjson")
    (d / "idx_badjson" / "index.json").write_text('{"kind": "images", ')
    shutil.copytree(index, d / "idx_nokeys")
    (d / "idx_nokeys" / "index.json").write_text(json.dumps({"format": 1}))
    shutil.copytree(index, d / "idx_dim")
    np.save(d / "idx_dim" / "embeddings.npy", np.zeros((40, 7), np.float32))
    shutil.copytree(index, d / "idx_garbage")
    (d / "idx_garbage" / "embeddings.npy").write_bytes(b"garbage" * 20)
    # --- plain files and folders where the other kind is wanted ----------------------------------------
    (d / "afile").write_text("an existing file, not a folder\n")
    (d / "emptydir").mkdir(exist_ok=True)
    # --- a checkpoint of another task, and a file that is no checkpoint ---------------------------------
    import torch

    torch.save({"format_version": 1, "task": "hsi", "recipe": {"task": "hsi"}, "model": {}}, d / "hsi.pt")
    (d / "garbage.pt").write_bytes(b"not a torch file" * 8)


TRAIN = ["train", "--recipe", "retrieve/demo", "--out", "{d}/runs/{id}", "--set", "data.root={data}"]
EVAL = ["eval", "-c", "{ckpt}"]
PRED = ["predict", "-c", "{ckpt}", "--out", "{d}/pred/{id}"]
KARPATHY = ["data.format=karpathy", "data.image_root={d}", "model.image_encoder=cnn", "model.pretrained=null"]


def _train(*sets: str, root: str = "{data}") -> list[str]:
    return [*TRAIN[:-1], f"data.root={root}", *_sets(list(sets))]


def _karpathy(name: str) -> list[str]:
    return _train(*KARPATHY, f"data.karpathy_json={{d}}/{name}")


# (id, argv template, stdin text or None, fragments the error line must contain); every row exits 2
ROWS: list[tuple[str, list[str], str | None, tuple[str, ...]]] = [
    # --- train: precomputed splits --------------------------------------------------------------------
    ("train_missing_root", _train(root="{d}/nowhere"), None, ("nowhere",)),
    ("train_caps_not_5x_images", _train(root="{d}/caps_short"), None, ("train_caps.txt", "1198 captions")),
    ("train_caps_blank_line", _train(root="{d}/caps_blank"), None, ("train_caps.txt", "line 4")),
    ("train_ims_wrong_shape", _train(root="{d}/ims_shape"), None, ("train_ims.npy",)),
    ("train_ims_1d", _train(root="{d}/ims_flat"), None, ("train_ims.npy",)),
    ("train_ims_int", _train(root="{d}/ims_int"), None, ("train_ims.npy", "dtype")),
    ("train_ims_empty", _train(root="{d}/ims_empty"), None, ("train_ims.npy",)),
    ("train_ims_garbage", _train(root="{d}/ims_garbage"), None, ("train_ims.npy",)),
    ("train_ims_truncated", _train(root="{d}/ims_trunc"), None, ("train_ims.npy",)),
    ("train_ims_nan", _train(root="{d}/ims_nan"), None, ("train_ims.npy", "NaN", "image 7")),
    ("train_ids_count", _train(root="{d}/ids_bad"), None, ("train_ids.txt",)),
    ("train_no_dev_split", _train(root="{d}/no_dev"), None, ("dev_caps.txt",)),
    ("train_img_dim_mismatch", _train("model.img_dim=2048"), None, ("train_ims.npy", "model.img_dim")),
    ("train_cnn_on_features", _train("model.image_encoder=cnn", "model.pretrained=null"), None,
     ("model.image_encoder",)),
    # --- train: Karpathy split files ------------------------------------------------------------------
    ("karpathy_missing_sentences", _karpathy("k_nokeys.json"), None, ("k_nokeys.json", "sentences")),
    ("karpathy_missing_split", _karpathy("k_nosplit.json"), None, ("k_nosplit.json", "split")),
    ("karpathy_no_images_key", _karpathy("k_noimages.json"), None, ("k_noimages.json", "images")),
    ("karpathy_top_level_list", _karpathy("k_list.json"), None, ("k_list.json",)),
    ("karpathy_invalid_json", _karpathy("k_badjson.json"), None, ("k_badjson.json",)),
    ("karpathy_raw_not_text", _karpathy("k_rawint.json"), None, ("k_rawint.json",)),
    ("karpathy_too_few_captions", _karpathy("k_fewcaps.json"), None, ("k_fewcaps.json", "3 captions")),
    ("karpathy_image_missing", _karpathy("k_noimage.json"), None, ("ghost.jpg",)),
    ("karpathy_file_missing", _karpathy("nope.json"), None, ("nope.json",)),
    ("karpathy_unset", _train(*KARPATHY), None, ("data.karpathy_json",)),
    ("karpathy_with_feature_encoder", _train("data.format=karpathy", "data.image_root={d}",
                                             "data.karpathy_json={d}/k_ok.json"), None, ("model.image_encoder",)),
    # --- train: LSA files (LSEH step 1) ---------------------------------------------------------------
    ("lsa_file_wrong_rows", _train("data.lsa_file={d}/lsa_rows.txt"), None, ("lsa_rows.txt", "10 rows")),
    ("lsa_file_nan", _train("data.lsa_file={d}/lsa_nan.txt"), None, ("lsa_nan.txt", "NaN")),
    ("lsa_file_text", _train("data.lsa_file={d}/lsa_text.txt"), None, ("lsa_text.txt",)),
    ("lsa_file_ragged", _train("data.lsa_file={d}/lsa_ragged.txt"), None, ("lsa_ragged.txt",)),
    ("lsa_file_empty", _train("data.lsa_file={d}/lsa_empty.txt"), None, ("lsa_empty.txt",)),
    ("lsa_file_missing", _train("data.lsa_file={d}/nope_svd.txt"), None, ("nope_svd.txt",)),
    # --- train / info: recipe keys --------------------------------------------------------------------
    ("set_embed_size_zero", _train("model.embed_size=0"), None, ("model.embed_size",)),
    ("set_img_dim_negative", _train("model.img_dim=-32"), None, ("model.img_dim",)),
    ("set_num_regions_type", _train("model.num_regions=abc"), None, ("model.num_regions",)),
    ("set_gpo_dim_zero", _train("model.base=vseinf", "model.gpo_dim=0"), None, ("model.gpo_dim",)),
    ("set_captions_per_image_zero", _train("data.captions_per_image=0"), None, ("data.captions_per_image",)),
    ("set_lsa_rank_negative", _train("data.lsa_rank=-1"), None, ("data.lsa_rank",)),
    ("set_region_drop", _train("data.region_drop=1.5"), None, ("data.region_drop",)),
    ("set_token_aug_negative", _train("data.token_aug=-0.1"), None, ("data.token_aug",)),
    ("set_max_words_one", _train("data.max_words=1"), None, ("data.max_words",)),
    ("set_vocab_splits_empty", _train("data.vocab_splits=[]"), None, ("data.vocab_splits",)),
    ("set_loss_margin_negative", _train("train.loss.margin=-0.2"), None, ("train.loss.margin",)),
    ("set_lseh_lam_negative", _train("train.loss.lseh.lam=-1"), None, ("train.loss.lseh.lam",)),
    ("set_loss_kind", _train("train.loss.kind=vse"), None, ("train.loss.kind",)),
    ("set_lr_update_negative", _train("train.lr_update=-1"), None, ("train.lr_update",)),
    ("set_warmup_negative", _train("train.loss.warmup_sum_epochs=-2"), None, ("train.loss.warmup_sum_epochs",)),
    ("set_val_max_images_negative", _train("eval.val_max_images=-1"), None, ("eval.val_max_images",)),
    ("set_unknown_key", _train("data.captionz=5"), None, ("data.captionz",)),
    ("set_bert_with_vsepp", _train("model.text_encoder=bert"), None, ("model.text_encoder",)),
    ("info_img_dim_zero", ["info", "-r", "retrieve/demo", "--set", "model.img_dim=0"], None, ("model.img_dim",)),
    ("info_bad_base", ["info", "-r", "retrieve/demo", "--set", "model.base=clip"], None, ("model.base",)),
    ("info_missing_recipe", ["info", "-r", "{d}/missing.yaml"], None, ("missing.yaml",)),
    # --- eval -----------------------------------------------------------------------------------------
    ("eval_missing_checkpoint", ["eval", "-c", "{d}/nope.pt"], None, ("nope.pt",)),
    ("eval_garbage_checkpoint", ["eval", "-c", "{d}/garbage.pt"], None, ("garbage.pt",)),
    ("eval_other_task_checkpoint", ["eval", "-c", "{d}/hsi.pt"], None, ("hsi",)),
    ("eval_set_changes_model", [*EVAL, "--set", "model.embed_size=32"], None, ("best.pt",)),
    ("eval_batch_size_zero", [*EVAL, "--set", "eval.batch_size=0"], None, ("eval.batch_size",)),
    ("eval_chunk_zero", [*EVAL, "--set", "eval.chunk=0"], None, ("eval.chunk",)),
    ("eval_folds_zero", [*EVAL, "--set", "eval.folds=0", "--protocol", "coco1k"], None, ("eval.folds",)),
    ("eval_bad_protocol", [*EVAL, "--protocol", "coco2k"], None, ("coco2k",)),
    ("eval_bad_search", [*EVAL, "--search", "annoy"], None, ("--search", "annoy")),
    ("eval_faiss_depth_small", [*EVAL, "--search", "faiss", "--set", "eval.faiss_depth=5"], None,
     ("eval.faiss_depth",)),
    ("eval_faiss_nprobe_zero", [*EVAL, "--set", "eval.search=faiss", "--set", "eval.faiss_nprobe=0"], None,
     ("eval.faiss_nprobe",)),
    ("eval_bad_split", [*EVAL, "--split", "bogus"], None, ("bogus_caps.txt",)),
    ("eval_caps_not_5x_images", [*EVAL, "--set", "data.root={d}/caps_extra"], None, ("test_caps.txt",)),
    ("eval_test_ims_nan", [*EVAL, "--set", "data.root={d}/test_nan"], None, ("test_ims.npy", "NaN")),
    ("eval_out_is_a_file", [*EVAL, "--out", "{d}/afile"], None, ("afile",)),
    # --- predict --------------------------------------------------------------------------------------
    ("predict_top_k_zero", [*PRED, "a dog", "-k", "0"], None, ("--top-k",)),
    ("predict_top_k_negative", [*PRED, "a dog", "--top-k", "-3"], None, ("--top-k",)),
    ("predict_npy_wrong_shape", [*PRED, "{d}/q_shape.npy"], None, ("q_shape.npy", "model.num_regions")),
    ("predict_npy_wrong_dim", [*PRED, "{d}/q_dim.npy"], None, ("q_dim.npy", "model.img_dim")),
    ("predict_npy_nan", [*PRED, "{d}/q_nan.npy"], None, ("q_nan.npy", "NaN")),
    ("predict_npy_int", [*PRED, "{d}/q_int.npy"], None, ("q_int.npy",)),
    ("predict_npy_strings", [*PRED, "{d}/q_str.npy"], None, ("q_str.npy",)),
    ("predict_npy_empty", [*PRED, "{d}/q_empty.npy"], None, ("q_empty.npy",)),
    ("predict_npy_garbage", [*PRED, "{d}/q_garbage.npy"], None, ("q_garbage.npy",)),
    ("predict_npy_truncated", [*PRED, "{d}/q_trunc.npy"], None, ("q_trunc.npy",)),
    ("predict_npy_missing", [*PRED, "{d}/ghost.npy"], None, ("ghost.npy",)),
    ("predict_text_file", [*PRED, "{d}/queries.txt"], None, ("queries.txt",)),
    ("predict_mixed_kinds", [*PRED, "{d}/q_ok.npy", "a dog on the beach"], None, ("q_ok.npy",)),
    ("predict_empty_folder", [*PRED, "{d}/emptydir"], None, ("emptydir",)),
    ("predict_empty_text", [*PRED, " "], None, ("empty",)),
    ("predict_stdin_blank", [*PRED, "-"], "\n\n", ("empty query",)),
    ("predict_bad_split", [*PRED, "a dog", "--split", "bogus"], None, ("bogus_caps.txt",)),
    ("predict_out_is_a_file", ["predict", "-c", "{ckpt}", "--out", "{d}/afile", "a dog"], None, ("afile",)),
    ("predict_other_task_checkpoint", ["predict", "-c", "{d}/hsi.pt", "--out", "{d}/pred/x", "a dog"], None,
     ("hsi",)),
    ("predict_set_changes_model", [*PRED, "--set", "model.embed_size=32", "a dog"], None, ("best.pt",)),
    # --- sample ---------------------------------------------------------------------------------------
    ("sample_into_a_file", ["sample", "{d}/afile"], None, ("afile",)),
    # --- index ----------------------------------------------------------------------------------------
    ("index_nlist_negative", ["index", "-c", "{ckpt}", "--captions", "{data}/test_caps.txt", "--out", "{d}/ix/{id}",
                              "--nlist", "-1"], None, ("--nlist",)),
    ("index_threshold_negative", ["index", "-c", "{ckpt}", "--captions", "{data}/test_caps.txt", "--out",
                                  "{d}/ix/{id}", "--faiss-threshold", "-5"], None, ("--faiss-threshold",)),
    ("index_out_is_a_file", ["index", "-c", "{ckpt}", "--images", "{data}/test_ims.npy", "--out", "{d}/afile"], None,
     ("afile",)),
    ("index_images_garbage", ["index", "-c", "{ckpt}", "--images", "{d}/q_garbage.npy", "--out", "{d}/ix/{id}"], None,
     ("q_garbage.npy",)),
    ("index_images_inf", ["index", "-c", "{ckpt}", "--images", "{d}/g_inf.npy", "--out", "{d}/ix/{id}"], None,
     ("g_inf.npy", "NaN or inf")),
    ("index_images_wrong_shape", ["index", "-c", "{ckpt}", "--images", "{d}/g_shape.npy", "--out", "{d}/ix/{id}"],
     None, ("g_shape.npy",)),
    ("index_images_missing", ["index", "-c", "{ckpt}", "--images", "{d}/ghost_ims.npy", "--out", "{d}/ix/{id}"],
     None, ("ghost_ims.npy",)),
    ("index_image_folder_for_features", ["index", "-c", "{ckpt}", "--images", "{d}/emptydir", "--out",
                                         "{d}/ix/{id}"], None, ("emptydir",)),
    ("index_captions_empty", ["index", "-c", "{ckpt}", "--captions", "{d}/caps_empty.txt", "--out", "{d}/ix/{id}"],
     None, ("caps_empty.txt",)),
    ("index_captions_blank_line", ["index", "-c", "{ckpt}", "--captions", "{d}/caps_blank_line.txt", "--out",
                                   "{d}/ix/{id}"], None, ("caps_blank_line.txt", "line 2")),
    ("index_both_galleries", ["index", "-c", "{ckpt}", "--images", "{data}/test_ims.npy", "--captions",
                              "{data}/test_caps.txt", "--out", "{d}/ix/{id}"], None, ("--images",)),
    ("index_garbage_checkpoint", ["index", "-c", "{d}/garbage.pt", "--captions", "{data}/test_caps.txt", "--out",
                                  "{d}/ix/{id}"], None, ("garbage.pt",)),
    # --- query ----------------------------------------------------------------------------------------
    ("query_top_k_negative", ["query", "--index", "{index}", "a dog", "--top-k", "-1"], None, ("--top-k",)),
    ("query_top_k_zero", ["query", "--index", "{index}", "a dog", "-k", "0"], None, ("--top-k",)),
    ("query_nprobe_zero", ["query", "--index", "{index}", "a dog", "--nprobe", "0"], None, ("--nprobe",)),
    ("query_not_an_index", ["query", "--index", "{d}/emptydir", "a dog"], None, ("emptydir",)),
    ("query_index_json_invalid", ["query", "--index", "{d}/idx_badjson", "a dog"], None, ("index.json",)),
    ("query_index_json_keys", ["query", "--index", "{d}/idx_nokeys", "a dog"], None, ("index.json",)),
    ("query_embeddings_missing", ["query", "--index", "{d}/idx_noemb", "a dog"], None, ("embeddings.npy",)),
    ("query_embeddings_wrong_dim", ["query", "--index", "{d}/idx_dim", "a dog"], None, ("embeddings.npy",)),
    ("query_embeddings_garbage", ["query", "--index", "{d}/idx_garbage", "a dog"], None, ("embeddings.npy",)),
    ("query_image_on_image_index", ["query", "--index", "{index}", "{d}/q_ok.npy"], None, ("caption texts",)),
    ("query_text_on_caption_index", ["query", "--index", "{capindex}", "a dog"], None, (".npy",)),
    ("query_npy_wrong_shape", ["query", "--index", "{capindex}", "{d}/q_shape.npy"], None, ("q_shape.npy",)),
    ("query_npy_nan", ["query", "--index", "{capindex}", "{d}/q_nan.npy"], None, ("q_nan.npy", "NaN")),
    ("query_npy_missing", ["query", "--index", "{capindex}", "{d}/ghost.npy"], None, ("ghost.npy",)),
    # --- lsa ------------------------------------------------------------------------------------------
    ("lsa_out_is_a_folder", ["lsa", "-r", "retrieve/demo", "--set", "data.root={data}", "--out", "{d}/emptydir"],
     None, ("emptydir",)),
    ("lsa_out_under_a_file", ["lsa", "-r", "retrieve/demo", "--set", "data.root={data}", "--out",
                              "{d}/afile/train_svd.txt"], None, ("afile",)),
    ("lsa_missing_root", ["lsa", "-r", "retrieve/demo", "--set", "data.root={d}/nowhere"], None, ("nowhere",)),
    ("lsa_caps_not_5x_images", ["lsa", "-r", "retrieve/demo", "--set", "data.root={d}/caps_short", "--out",
                                "{d}/{id}.txt"], None, ("train_caps.txt",)),
    ("lsa_rank_zero", ["lsa", "-r", "retrieve/demo", "--set", "data.root={data}", "--set", "data.lsa_rank=0"], None,
     ("data.lsa_rank",)),
]


def fill(argv: list[str], row_id: str, **paths: Path) -> list[str]:
    """The argv of a row with its placeholders filled."""
    return [a.format(id=row_id, **paths) for a in argv]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A tiny trained checkpoint on the sample set, an image and a caption index of it, and the table's files."""
    from typer.testing import CliRunner

    from zsk.tasks.retrieve.cli import app
    from zsk.tasks.retrieve.data import write_sample

    root = tmp_path_factory.mktemp("retrieve_bad")
    data = write_sample(root / "data")
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZSK_CACHE", str(root / "cache"))
        r = runner.invoke(app, ["train", "--recipe", "retrieve/demo", *_sets([f"data.root={data}", "train.epochs=1"]),
                                "--out", str(root / "run"), "--device", "cpu", "--quiet"])
        assert r.exit_code == 0, r.output
        ckpt = root / "run" / "best.pt"
        for flag, src, name in (("--images", data / "test_ims.npy", "index"),
                                ("--captions", data / "test_caps.txt", "capindex")):
            r = runner.invoke(app, ["index", "-c", str(ckpt), flag, str(src), "--out", str(root / name), "--quiet"])
            assert r.exit_code == 0, r.output
    write_inputs(root / "d", data, root / "index")
    paths = {"d": root / "d", "data": data, "ckpt": ckpt, "index": root / "index", "capindex": root / "capindex"}
    return runner, app, paths


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_exits_2_naming_it(table, row, one_error_line):
    runner, app, paths = table
    row_id, argv, stdin, fragments = row
    args = fill(argv, row_id, **paths)
    if argv[0] in ("train", "eval", "predict", "index", "query"):
        args.append("--device=cpu")
    r = runner.invoke(app, args, input=stdin)
    one_error_line(r, fragments)


def test_table_is_large_enough():
    assert len(ROWS) >= 20 and len({r[0] for r in ROWS}) == len(ROWS)
