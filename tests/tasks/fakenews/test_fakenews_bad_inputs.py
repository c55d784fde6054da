"""Malformed inputs a new user would try, across every fakenews verb: each exits 2 with one `error:` line naming
the file or the recipe key (no traceback, no "unexpected ..."). Table-driven (issue 12).

`ROWS` holds argv templates (`{d}`: the folder `write_inputs` fills, `{data}`: the sample corpus, `{ckpt}`: a
tiny trained single-branch best.pt, `{id}`: the row's id) so the table is written once and read by this test
(in-process, `CliRunner`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

# one tiny random-init branch `b` (the demo recipe's pipeline: heated softmax, FGM, a built WordPiece tokenizer)
TINY_BRANCH = ("model.branches={b: {encoder: {hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32, "
               "max_position_embeddings: 64}, tokenizer: {build_vocab_size: 300}}}")
TINY = [TINY_BRANCH, "train.max_steps=2", "train.epochs=1", "train.batch_size=32"]
CSV_HEADER = "id,tweet,label\n"


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def _corpus(d: Path, data: Path, name: str, **files: str | bytes | None) -> None:
    """A copy of the sample corpus in ``d/name`` with some files replaced (``a__csv`` names ``a.csv``;
    content None removes it)."""
    target = d / name
    shutil.copytree(data, target)
    for file, content in files.items():
        path = target / file.replace("__", ".")
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def write_inputs(d: Path, data: Path) -> None:
    """Every malformed file of the table, in its real format."""
    import torch

    d.mkdir(parents=True, exist_ok=True)
    (d / "ok.csv").write_text(CSV_HEADER + "1,ministry confirmed new cases,real\n")
    (d / "ok.jsonl").write_text('{"tweet": "ministry confirmed new cases"}\n')
    (d / "notext.csv").write_text("id,text,label\n1,hello world,real\n")
    (d / "empty.csv").write_bytes(b"")
    (d / "header.csv").write_text(CSV_HEADER)
    (d / "latin1.csv").write_bytes(CSV_HEADER.encode() + b"1,caf\xe9 au lait cures covid,fake\n")
    (d / "utf16.csv").write_bytes((CSV_HEADER + "1,ministry confirmed,real\n").encode("utf-16"))
    (d / "bad.jsonl").write_text('{"tweet": "fine"}\n{tweet: not json\n')
    (d / "list.jsonl").write_text('["a list", "not an object"]\n')
    (d / "arr.json").write_text('[\n  {"tweet": "a pretty-printed JSON array"}\n]\n')
    (d / "thing.xml").write_text("<tweet>hello</tweet>\n")
    (d / "emptytext.csv").write_text("id,tweet\n1,\n")
    (d / "toomany.csv").write_text("id,tweet\n1,a,b,c\n")
    (d / "bin.csv").write_bytes(bytes(range(256)) * 4)
    (d / "emptydir").mkdir(exist_ok=True)
    (d / "afile").write_text("an existing file, not a folder\n")
    # a checkpoint of another task, and a file that is no checkpoint
    torch.save({"format_version": 1, "task": "medseg", "recipe": {"task": "medseg"}, "model": {}}, d / "medseg.pt")
    (d / "garbage.pt").write_bytes(b"not a torch file" * 8)
    # whole corpora with one bad file
    _corpus(d, data, "badval", Constraint_Val__csv=CSV_HEADER + "1,ok text,real\n2,bad label,satire\n")
    _corpus(d, data, "badtest", english_test_with_labels__csv=CSV_HEADER + "1,ok text,real\n2,odd,satire\n")
    _corpus(d, data, "emptytrain", Constraint_Train__csv="")
    _corpus(d, data, "nolabel", Constraint_Train__csv="id,tweet\n1,a text\n2,another text\n",
            english_test_with_labels__csv="id,tweet\n1,a text\n")
    latin = CSV_HEADER.encode() + b"1,caf\xe9 cures covid,fake\n2,ministry confirmed,real\n"
    _corpus(d, data, "latin", Constraint_Train__csv=latin, Constraint_Val__csv=latin,
            english_test_with_labels__csv=latin)
    _corpus(d, data, "noval", Constraint_Val__csv=None)
    jsonl = d / "jsonl"
    jsonl.mkdir()
    rows = [{"tweet": f"ministry confirmed {i} cases", "label": "real"} if i % 2 else
            {"tweet": f"miracle cure number {i}", "label": "fake"} for i in range(8)]
    for name in ("train", "val", "test"):
        (jsonl / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (jsonl / "nulltext.jsonl").write_text('{"tweet": "ministry confirmed", "label": "real"}\n'
                                          '{"tweet": null, "label": "fake"}\n')
    (jsonl / "nan.jsonl").write_text('{"tweet": "ministry confirmed", "label": "real"}\n'
                                     '{"tweet": "miracle cure", "label": NaN}\n')


TRAIN = ["train", "--recipe", "fakenews/demo", "--out", "{d}/runs/{id}", "--set", "data.root={data}", *_sets(TINY)]
EVAL = ["eval", "-c", "{ckpt}"]
PRED = ["predict", "-c", "{ckpt}", "--out", "{d}/pred/{id}"]
JSONL = ["data.root={d}/jsonl", "data.train_file=train.jsonl", "data.val_file=val.jsonl", "data.test_file=test.jsonl"]


def _train(*sets: str) -> list[str]:
    return [*TRAIN, *_sets(list(sets))]


# (id, argv template, stdin: a file name under {d} or None, fragments the error line must contain); all exit 2
ROWS: list[tuple[str, list[str], str | None, tuple[str, ...]]] = [
    # --- predict: input files -----------------------------------------------------------------------
    ("predict_missing_file", [*PRED, "{d}/ghost.csv"], None, ("ghost.csv",)),
    ("predict_no_text_column", [*PRED, "{d}/notext.csv"], None, ("notext.csv", "'tweet'")),
    ("predict_empty_file", [*PRED, "{d}/empty.csv"], None, ("empty.csv",)),
    ("predict_header_only", [*PRED, "{d}/header.csv"], None, ("header.csv",)),
    ("predict_latin1_file", [*PRED, "{d}/latin1.csv"], None, ("latin1.csv, line 2", "utf-8")),
    ("predict_utf16_file", [*PRED, "{d}/utf16.csv"], None, ("utf16.csv",)),
    ("predict_format_jsonl_on_csv", [*PRED, "{d}/ok.csv", "--format", "jsonl"], None, ("ok.csv", "--format csv")),
    ("predict_format_csv_on_jsonl", [*PRED, "{d}/ok.jsonl", "--format", "csv"], None, ("ok.jsonl", "--format jsonl")),
    ("predict_format_tsv_on_csv", [*PRED, "{d}/ok.csv", "--format", "tsv"], None, ("ok.csv", "--format csv")),
    ("predict_format_unknown", [*PRED, "{d}/ok.csv", "--format", "xml"], None, ("--format", "'xml'")),
    ("predict_garbage_jsonl", [*PRED, "{d}/bad.jsonl"], None, ("bad.jsonl, line 2",)),
    ("predict_jsonl_not_objects", [*PRED, "{d}/list.jsonl"], None, ("list.jsonl, line 1",)),
    ("predict_json_array", [*PRED, "{d}/arr.json"], None, ("arr.json, line 1",)),
    ("predict_unknown_suffix", [*PRED, "{d}/thing.xml"], None, ("thing.xml",)),
    ("predict_empty_text", [*PRED, "{d}/emptytext.csv"], None, ("emptytext.csv, line 2", "'tweet'")),
    ("predict_too_many_fields", [*PRED, "{d}/toomany.csv"], None, ("toomany.csv, line 2",)),
    ("predict_binary_file", [*PRED, "{d}/bin.csv"], None, ("bin.csv",)),
    ("predict_empty_folder", [*PRED, "{d}/emptydir"], None, ("emptydir",)),
    ("predict_second_input_bad", [*PRED, "{d}/ok.csv", "{d}/notext.csv"], None, ("notext.csv",)),
    ("predict_stdin_latin1", [*PRED, "-"], "latin1.csv", ("<stdin>, line 2",)),
    ("predict_stdin_empty", [*PRED, "-"], "empty.csv", ("<stdin>",)),
    ("predict_stdin_csv_no_column", [*PRED, "-", "--format", "csv"], "notext.csv", ("<stdin>", "'tweet'")),
    # --- predict: checkpoint, --out, --set ----------------------------------------------------------
    ("predict_out_is_a_file", ["predict", "-c", "{ckpt}", "--out", "{d}/afile", "{d}/ok.csv"], None, ("afile",)),
    ("predict_other_task_checkpoint", ["predict", "-c", "{d}/medseg.pt", "--out", "{d}/pred/x", "{d}/ok.csv"], None,
     ("medseg",)),
    ("predict_garbage_checkpoint", ["predict", "-c", "{d}/garbage.pt", "--out", "{d}/pred/x", "{d}/ok.csv"], None,
     ("garbage.pt",)),
    ("predict_missing_checkpoint", ["predict", "-c", "{d}/nope.pt", "--out", "{d}/pred/x", "{d}/ok.csv"], None,
     ("nope.pt",)),
    ("predict_set_changes_model", [*PRED, "{d}/ok.csv", "--set", "model.branches.b.encoder.hidden_size=32"], None,
     ("model.branches.b.encoder.hidden_size",)),
    ("predict_max_length_zero", [*PRED, "{d}/ok.csv", "--set", "data.max_length=0"], None, ("data.max_length",)),
    ("predict_max_length_too_long", [*PRED, "{d}/ok.csv", "--set", "data.max_length=500"], None,
     ("data.max_length",)),
    ("predict_unknown_encoding", [*PRED, "{d}/ok.csv", "--set", "data.encoding=klingon"], None, ("data.encoding",)),
    ("predict_text_column_absent", [*PRED, "{d}/ok.csv", "--set", "data.text_column=body"], None, ("ok.csv", "'body'")),
    # --- eval ---------------------------------------------------------------------------------------
    ("eval_missing_checkpoint", ["eval", "-c", "{d}/nope.pt"], None, ("nope.pt",)),
    ("eval_garbage_checkpoint", ["eval", "-c", "{d}/garbage.pt"], None, ("garbage.pt",)),
    ("eval_other_task_checkpoint", ["eval", "-c", "{d}/medseg.pt"], None, ("medseg",)),
    ("eval_bad_split", [*EVAL, "--split", "bogus"], None, ("bogus",)),
    ("eval_batch_size_zero", [*EVAL, "--set", "eval.batch_size=0"], None, ("eval.batch_size",)),
    ("eval_unknown_label", [*EVAL, "--set", "data.root={d}/badtest"], None,
     ("english_test_with_labels.csv, line 3", "satire")),
    ("eval_no_label_column", [*EVAL, "--set", "data.root={d}/nolabel"], None,
     ("english_test_with_labels.csv", "'label'")),
    ("eval_missing_test_file", [*EVAL, "--set", "data.root={d}/nowhere"], None, ("english_test_with_labels.csv",)),
    ("eval_wrong_encoding", [*EVAL, "--set", "data.root={d}/latin"], None, ("english_test_with_labels.csv, line 2",)),
    ("eval_format_mismatch", [*EVAL, "--set", "data.format=jsonl"], None,
     ("english_test_with_labels.csv", "data.format=csv")),
    ("eval_classes_changed", [*EVAL, "--set", "data.classes=[a,b,c]"], None, ("data.classes",)),
    ("eval_set_changes_model", [*EVAL, "--set", "model.branches.b.encoder.num_layers=3"], None,
     ("model.branches.b.encoder.num_layers",)),
    ("eval_out_is_a_file", [*EVAL, "--out", "{d}/afile"], None, ("afile",)),
    # --- train: data files --------------------------------------------------------------------------
    ("train_missing_root", _train("data.root={d}/nowhere"), None, ("Constraint_Train.csv", "not found")),
    ("train_missing_val_file", _train("data.root={d}/noval"), None, ("Constraint_Val.csv", "not found")),
    ("train_empty_train_file", _train("data.root={d}/emptytrain"), None, ("Constraint_Train.csv", "empty")),
    ("train_unknown_val_label", _train("data.root={d}/badval"), None, ("Constraint_Val.csv, line 3", "satire")),
    ("train_wrong_encoding", _train("data.root={d}/latin"), None, ("Constraint_Train.csv, line 2", "utf-8")),
    ("train_no_label_column", _train("data.root={d}/nolabel"), None, ("Constraint_Train.csv", "'label'")),
    ("train_jsonl_null_text", _train(*JSONL, "data.train_file=nulltext.jsonl"), None,
     ("nulltext.jsonl, line 2", "'tweet'")),
    ("train_jsonl_nan_label", _train(*JSONL, "data.val_file=nan.jsonl"), None, ("nan.jsonl, line 2",)),
    ("train_format_mismatch", _train("data.format=tsv"), None, ("Constraint_Train.csv", "data.format=csv")),
    ("train_pretrained_offline", _train("model.branches={x: {pretrained: no-such-org/no-such-model}}"), None,
     ("model.branches.x.pretrained",)),
    ("train_tokenizer_offline", _train("model.branches={x: {tokenizer: {source: no-such-org/no-tok}}}"), None,
     ("model.branches.x.tokenizer.source",)),
    ("train_synonyms_missing", _train("train.hard_examples.enabled=true", "train.hard_examples.synonyms={d}/nosyn.txt"),
     None, ("nosyn.txt",)),
    # --- train / info: recipe keys ------------------------------------------------------------------
    ("set_max_length_zero", _train("data.max_length=0"), None, ("data.max_length",)),
    ("set_max_length_type", _train("data.max_length=long"), None, ("data.max_length",)),
    ("set_max_length_too_long", _train("data.max_length=1000"), None, ("data.max_length",)),
    ("set_unknown_encoding", _train("data.encoding=klingon"), None, ("data.encoding",)),
    ("set_classes_one", _train("data.classes=[real]"), None, ("data.classes",)),
    ("set_classes_twice", _train("data.classes=[real,Real]"), None, ("data.classes",)),
    ("set_label_map_unknown_class", _train("data.label_map={true: correct}"), None, ("data.label_map",)),
    ("set_same_text_and_label_column", _train("data.label_column=tweet"), None, ("data.label_column",)),
    ("set_branches_empty", _train("model.branches={}"), None, ("model.branches",)),
    ("set_hidden_size_zero", _train("model.branches.b.encoder.hidden_size=0"), None,
     ("model.branches.b.encoder.hidden_size",)),
    ("set_num_heads_indivisible", _train("model.branches.b.encoder.num_heads=3"), None,
     ("model.branches.b.encoder.num_heads",)),
    ("set_encoder_dropout", _train("model.branches.b.encoder.dropout=-0.1"), None, ("model.branches.b.encoder.dropout",)),
    ("set_new_tokens_n_zero", _train("model.branches.b.new_tokens=frequent", "model.branches.b.new_tokens_n=0"), None,
     ("model.branches.b.new_tokens_n",)),
    ("set_fusion_hidden_zero", _train("model.fusion_hidden=0"), None, ("model.fusion_hidden",)),
    ("set_fusion_dropout", _train("model.fusion_dropout=1.5"), None, ("model.fusion_dropout",)),
    ("set_alpha_negative", _train("train.heated_softmax.alphas=[-1,1,0.5]"), None, ("train.heated_softmax.alphas[0]",)),
    ("set_alphas_without_milestones", _train("train.heated_softmax.alphas=[4,1]"), None,
     ("train.heated_softmax.milestones",)),
    ("set_fgm_epsilon_negative", _train("train.fgm.epsilon=-1"), None, ("train.fgm.epsilon",)),
    ("set_warmup_fraction", _train("train.warmup_fraction=2"), None, ("train.warmup_fraction",)),
    ("set_stage_fgm_epsilon", _train("train.stages.fusion.fgm.epsilon=0"), None, ("train.stages.fusion.fgm.epsilon",)),
    ("set_max_edits_zero", _train("train.hard_examples.max_edits=0"), None, ("train.hard_examples.max_edits",)),
    ("set_lr_negative", _train("train.lr=-1"), None, ("train.lr",)),
    ("set_unknown_key", _train("train.fgm.eps=1"), None, ("train.fgm.eps",)),
    ("info_max_length_negative", ["info", "--recipe", "fakenews/demo", "--set", "data.max_length=-1"], None,
     ("data.max_length",)),
    ("info_hidden_size_zero", ["info", "--recipe", "fakenews/demo", "--set",
                               "model.branches.ctbert.encoder.hidden_size=0"], None,
     ("model.branches.ctbert.encoder.hidden_size",)),
    ("info_missing_recipe", ["info", "--recipe", "{d}/missing.yaml"], None, ("missing.yaml",)),
    # --- sample -------------------------------------------------------------------------------------
    ("sample_into_a_file", ["sample", "{d}/afile"], None, ("afile",)),
]


def fill(argv: list[str], d: Path, data: Path, ckpt: Path, row_id: str) -> list[str]:
    """The argv of a row with its placeholders filled."""
    return [a.replace("{d}", str(d)).replace("{data}", str(data)).replace("{ckpt}", str(ckpt))
            .replace("{id}", row_id) for a in argv]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A tiny trained single-branch checkpoint on the sample corpus, and the table's malformed files."""
    from typer.testing import CliRunner

    from zsk.tasks.fakenews.cli import app
    from zsk.tasks.fakenews.data import write_sample

    root = tmp_path_factory.mktemp("fakenews_bad")
    data = root / "data"
    write_sample(data)
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: set up before the per-test cache isolation
        mp.setenv("ZSK_CACHE", str(root / "cache"))
        r = runner.invoke(app, ["train", "--recipe", "fakenews/demo", *_sets([f"data.root={data}", *TINY]),
                                "--out", str(root / "run"), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    write_inputs(root / "d", data)
    return runner, app, root / "d", data, root / "run" / "best.pt"


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_exits_2_naming_it(table, row, one_error_line):
    runner, app, d, data, ckpt = table
    row_id, argv, stdin, fragments = row
    stdin_data = (d / stdin).read_bytes() if stdin is not None else None
    args = fill(argv, d, data, ckpt, row_id)
    r = runner.invoke(app, [*args, "--device", "cpu"] if argv[0] in ("train", "eval", "predict") else args,
                      input=stdin_data)
    one_error_line(r, fragments)
    if argv[0] == "predict":  # a refused predict writes no prediction file
        assert not list((d / "pred" / row_id).glob("*")) if (d / "pred" / row_id).is_dir() else True


def test_table_is_large_enough():
    assert len(ROWS) >= 20 and len({r[0] for r in ROWS}) == len(ROWS)


def test_rows_fill_every_placeholder(table):
    _, _, d, data, ckpt = table
    for row_id, argv, _, _ in ROWS:
        filled = " ".join(fill(argv, d, data, ckpt, row_id))
        assert not any(p in filled for p in ("{d}", "{data}", "{ckpt}", "{id}")), json.dumps(argv)
