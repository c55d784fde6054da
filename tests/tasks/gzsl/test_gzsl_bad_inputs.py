"""Malformed inputs a new user would try, across every gzsl verb: each exits 2 with one `error:` line naming the
file or the recipe key (no traceback, no "unexpected ..."). Table-driven (issue 12).

`ROWS` holds argv templates (`{d}`: the folder `write_inputs` fills, `{data}`: the sample hierarchy, `{ckpt}`: a
tiny trained last.pt, `{id}`: the row's id) so the table is written once and read by this test (in-process,
`CliRunner`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# files of nltk's WordNet reader (nltk.corpus.reader.wordnet.WordNetCorpusReader._FILES, less cntlist.rev,
# which only Lemma.count() reads)
WORDNET_FILES = ("lexnames", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb", "data.adj",
                 "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")
LEXNAMES = "00\tadj.all\t3\n01\tadj.pert\t3\n02\tadv.all\t4\n03\tnoun.Tops\t1\n"


def write_wordnet(nltk_data: Path, omit: str | None = None, lexnames: str = LEXNAMES) -> Path:
    """A WordNet corpus folder ``<nltk_data>/corpora/wordnet`` in WordNet's file layout (no synsets), less
    ``omit``."""
    folder = nltk_data / "corpora" / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        if name != omit:
            (folder / name).write_text(lexnames if name == "lexnames" else "")
    return nltk_data


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_inputs(d: Path, data: Path, ckpt: Path) -> None:
    """Every malformed file of the table, in its real format, from the sample hierarchy (49 nodes, 12 seen,
    24 unseen classes, 50-d word vectors, 512-d features, 513-d classifiers) and the checkpoint ``ckpt``."""
    import torch

    d.mkdir(parents=True, exist_ok=True)
    graph = json.loads((data / "imagenet-induced-graph.json").read_text())
    split = json.loads((data / "imagenet-split.json").read_text())
    feats = np.load(data / "features" / "test.npy")
    labels = (data / "features" / "test-labels.txt").read_text().splitlines()
    # graph files: truncated, binary, NaN vectors, an edge to a node that does not exist, other nodes
    (d / "trunc-graph.json").write_text((data / "imagenet-induced-graph.json").read_text()[:300])
    (d / "garbage.json").write_bytes(bytes(range(256)) * 4)
    nan = json.loads(json.dumps(graph))
    nan["vectors"][3][0] = float("nan")
    (d / "nan-graph.json").write_text(json.dumps(nan))
    oob = json.loads(json.dumps(graph))
    oob["edges"].append([0, len(graph["wnids"]) + 5])
    (d / "oob-graph.json").write_text(json.dumps(oob))
    dense = json.loads((data / "imagenet-dense-grouped-graph.json").read_text())
    dense["wnids"] = dense["wnids"][::-1]
    (d / "dense-other.json").write_text(json.dumps(dense))
    # split and test-set files
    (d / "split-extra.json").write_text(json.dumps({"train": split["train"], "test": split["test"] + ["n09999999"]}))
    (d / "split-str.json").write_text(json.dumps({"train": "n10000001", "test": []}))
    sets = json.loads((data / "imagenet-testsets.json").read_text())
    sets["all"] = sets["all"] + ["n09999998"]
    (d / "testsets-extra.json").write_text(json.dumps(sets))
    (d / "fc-trunc.json").write_text((data / "fc-weights.json").read_text()[:500])
    fc = json.loads((data / "fc-weights.json").read_text())
    fc[2][1][5] = float("nan")  # official layout: [wnid, [w_1..w_F, b]]
    (d / "fc-nan.json").write_text(json.dumps(fc))
    # word vectors: a ragged file, a word2vec header that disagrees with the rows, 20-d vectors
    glove = (data / "glove.sample.50d.txt").read_text().splitlines()
    ragged = list(glove)
    ragged[5] = " ".join(ragged[5].split(" ")[:30])
    (d / "glove-ragged.txt").write_text("\n".join(ragged) + "\n")
    (d / "glove-header.txt").write_text(f"{len(glove)} 300\n" + "\n".join(glove) + "\n")
    (d / "glove20.txt").write_text("\n".join(" ".join(ln.split(" ")[:21]) for ln in glove) + "\n")
    (d / "names-notab.txt").write_text("n10000000 entity\n")
    # features for eval --features and predict
    np.save(d / "wide.npy", np.concatenate([feats, feats[:, :8]], 1))
    (d / "wide-labels.txt").write_text("\n".join(labels) + "\n")
    np.save(d / "f.npy", feats)
    (d / "short-labels.txt").write_text("\n".join(labels[:-3]) + "\n")
    np.save(d / "trunc.npy", feats)
    _truncate(d / "trunc.npy")
    (d / "trunc-labels.txt").write_text("\n".join(labels) + "\n")
    bad = feats.copy()
    bad[4, 7] = np.nan
    bad[9, 0] = np.inf
    np.save(d / "nan.npy", bad)
    (d / "nan-labels.txt").write_text("\n".join(labels) + "\n")
    np.save(d / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (d / "obj-labels.txt").write_text("a\nb\n")
    np.save(d / "flat.npy", feats[:, 0])
    (d / "flat-labels.txt").write_text("\n".join(labels) + "\n")
    np.save(d / "unknown.npy", feats[:3])
    (d / "unknown-labels.txt").write_text("n09999997\nn09999997\nn09999997\n")
    np.save(d / "two.npy", feats[:2])
    np.save(d / "empty.npy", np.zeros((0, 512), np.float32))
    np.save(d / "cube.npy", np.stack([feats[:2], feats[2:4]]))
    (d / "garbage.png").write_bytes(b"\x89PNG not really" + bytes(range(200)))
    (d / "empty.txt").write_text("\n\n")
    (d / "afile").write_text("an existing file, not a folder\n")
    # WordNet folders missing one file each, one with a corrupt lexnames, one complete without synsets
    for name in ("lexnames", "index.sense", "data.noun", "noun.exc"):
        write_wordnet(d / f"wn-no-{name}", omit=name)
    write_wordnet(d / "wn-badlex", lexnames="this is not WordNet\n")
    write_wordnet(d / "wn-empty")
    # a checkpoint of another task, and a file that is no checkpoint
    torch.save({"format_version": 1, "task": "hsi", "recipe": {"task": "hsi"}, "model": {}}, d / "hsi.pt")
    (d / "garbage.pt").write_bytes(b"not a torch file" * 8)
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {}
    torch.save(state, d / "noweights.pt")


TRAIN = ["train", "--recipe", "gzsl/demo", "--out", "{d}/runs/{id}", "--set", "data.root={data}",
         "--set", "train.epochs=2", "--set", "train.eval_every=0"]
INFO = ["info", "--recipe", "gzsl/demo", "--set", "data.root={data}"]
EVAL = ["eval", "-c", "{ckpt}"]
PRED = ["predict", "-c", "{ckpt}", "--out", "{d}/pred/{id}"]
GRAPH = ["make-graph", "--split", "{data}/imagenet-split.json", "--out", "{d}/graphs/{id}"]
EDGES = [*GRAPH, "--edges", "{data}/edges.txt"]


def _s(*values: str) -> list[str]:
    return [a for v in values for a in ("--set", v)]


# (id, argv template, fragments the one error line must contain); all exit 2
ROWS: list[tuple[str, list[str], tuple[str, ...]]] = [
    # --- graph, split and test-set files --------------------------------------------------------------------
    ("graph-truncated", [*INFO, *_s("data.graph={d}/trunc-graph.json", "data.dense_graph=null")],
     ("trunc-graph.json",)),
    ("graph-binary", [*TRAIN, *_s("data.graph={d}/garbage.json", "data.dense_graph=null")], ("garbage.json",)),
    ("graph-nan-vectors", [*TRAIN, *_s("data.graph={d}/nan-graph.json", "data.dense_graph=null")],
     ("nan-graph.json", "NaN")),
    ("graph-edge-out-of-range", [*EVAL, *_s("data.graph={d}/oob-graph.json", "data.dense_graph=null")],
     ("oob-graph.json",)),
    ("dense-graph-other-nodes", [*INFO, *_s("data.dense_graph={d}/dense-other.json")], ("dense-other.json",)),
    ("split-missing", [*TRAIN, *_s("data.split={d}/nope-split.json")], ("nope-split.json",)),
    ("split-wnid-not-in-graph", [*TRAIN, *_s("data.split={d}/split-extra.json")], ("split-extra.json", "n09999999")),
    ("split-not-a-list", [*INFO, *_s("data.split={d}/split-str.json")], ("split-str.json", "train")),
    ("testset-wnid-not-in-graph", [*EVAL, "--testset", "all", *_s("data.testsets={d}/testsets-extra.json")],
     ("testsets-extra.json", "n09999998")),
    ("fc-weights-truncated", [*TRAIN, *_s("data.fc_weights={d}/fc-trunc.json")], ("fc-trunc.json",)),
    ("fc-weights-nan", [*TRAIN, *_s("data.fc_weights={d}/fc-nan.json")], ("fc-nan.json", "NaN")),
    # --- word vectors ---------------------------------------------------------------------------------------
    ("glove-ragged", [*TRAIN, *_s("model.word_vectors={d}/glove-ragged.txt")], ("glove-ragged.txt",)),
    ("glove-header-dim", [*INFO, *_s("model.word_vectors={d}/glove-header.txt")], ("glove-header.txt", "300")),
    ("glove-dim-vs-checkpoint", [*EVAL, *_s("model.word_vectors={d}/glove20.txt")], ("glove20.txt", "20-d")),
    # --- eval: precomputed features -------------------------------------------------------------------------
    ("features-wrong-width", [*EVAL, "--features", "{d}/wide.npy"], ("wide.npy", "520")),
    ("labels-line-count", [*EVAL, "--features", "{d}/f.npy", "--labels", "{d}/short-labels.txt"],
     ("short-labels.txt",)),
    ("features-truncated", [*EVAL, "--features", "{d}/trunc.npy"], ("trunc.npy",)),
    ("features-nan", [*EVAL, "--features", "{d}/nan.npy"], ("nan.npy", "NaN")),
    ("features-pickled", [*EVAL, "--features", "{d}/obj.npy"], ("obj.npy",)),
    ("features-1d", [*EVAL, "--features", "{d}/flat.npy"], ("flat.npy",)),
    ("features-no-test-rows", [*EVAL, "--features", "{d}/unknown.npy"], ("unknown-labels.txt",)),
    ("features-missing", [*EVAL, "--features", "{d}/nothere.npy"], ("nothere.npy",)),
    ("labels-without-features", [*EVAL, "--labels", "{d}/short-labels.txt"], ("--labels",)),
    ("keep-ratio-zero", [*EVAL, "--keep-ratio", "0"], ("--keep-ratio",)),
    ("testset-unknown", [*EVAL, "--testset", "9-hops"], ("9-hops",)),
    # --- checkpoints ----------------------------------------------------------------------------------------
    ("checkpoint-other-task", ["eval", "-c", "{d}/hsi.pt"], ("hsi",)),
    ("checkpoint-garbage", ["eval", "-c", "{d}/garbage.pt"], ("garbage.pt",)),
    ("checkpoint-missing", ["predict", "{d}/two.npy", "-c", "{d}/nope.pt"], ("nope.pt",)),
    ("eval-set-changes-model", [*EVAL, *_s("model.hidden=[64]")], ("last.pt",)),
    # --- predict --------------------------------------------------------------------------------------------
    ("predict-wrong-width", [*PRED, "{d}/wide.npy"], ("wide.npy", "520")),
    ("predict-nan", [*PRED, "{d}/nan.npy"], ("nan.npy", "NaN")),
    ("predict-empty-npy", [*PRED, "{d}/empty.npy"], ("empty.npy",)),
    ("predict-3d-npy", [*PRED, "{d}/cube.npy"], ("cube.npy",)),
    ("predict-truncated-npy", [*PRED, "{d}/trunc.npy"], ("trunc.npy",)),
    ("predict-garbage-image", [*PRED, "{d}/garbage.png"], ("garbage.png",)),
    ("predict-out-is-file", ["predict", "-c", "{ckpt}", "--out", "{d}/afile", "{d}/two.npy"], ("afile",)),
    ("predict-candidates-empty", [*PRED, "{d}/two.npy", "--candidates", "{d}/empty.txt"], ("empty.txt",)),
    ("predict-candidates-missing", [*PRED, "{d}/two.npy", "--candidates", "{d}/nocands.txt"], ("nocands.txt",)),
    ("predict-top-k-zero", [*PRED, "{d}/two.npy", "--top-k", "0"], ("--top-k",)),
    ("predict-input-missing", [*PRED, "{d}/nothere.npy"], ("nothere.npy",)),
    # --- recipe keys ----------------------------------------------------------------------------------------
    ("set-dropout-range", [*TRAIN, *_s("model.dropout=1.5")], ("model.dropout",)),
    ("set-dropout-type", [*TRAIN, *_s("model.dropout=abc")], ("model.dropout",)),
    ("set-max-distance-zero", [*INFO, *_s("model.max_distance=0")], ("model.max_distance",)),
    ("set-hidden-zero", [*INFO, *_s("model.hidden=[0]")], ("model.hidden",)),
    ("set-negative-slope", [*INFO, *_s("model.negative_slope=-1")], ("model.negative_slope",)),
    ("set-unknown-key", [*INFO, *_s("model.bogus=1")], ("model.bogus",)),
    ("set-checkpoint-every", [*TRAIN, *_s("train.checkpoint_every=-1")], ("train.checkpoint_every",)),
    ("set-keep-ratio", [*EVAL, *_s("eval.keep_ratio=0")], ("eval.keep_ratio",)),
    ("set-ks-zero", [*EVAL, *_s("eval.ks=[0]")], ("eval.ks",)),
    ("set-eval-batch-size", [*INFO, *_s("eval.batch_size=0")], ("eval.batch_size",)),
    ("set-crop-over-resize", [*INFO, *_s("data.crop=300")], ("data.crop",)),
    ("set-resize-negative", [*INFO, *_s("data.resize=-1")], ("data.resize",)),
    ("finetune-snapshot-missing", [*TRAIN, *_s("train.stages.finetune.enabled=true",
                                              "train.stages.finetune.classifiers={d}/nope.pred")], ("nope.pred",)),
    ("train-out-is-file", ["train", "--recipe", "gzsl/demo", "--out", "{d}/afile", *_s("data.root={data}")],
     ("afile",)),
    # --- make-graph -----------------------------------------------------------------------------------------
    ("wordnet-no-lexnames", [*GRAPH, "--nltk-data", "{d}/wn-no-lexnames"], ("wn-no-lexnames", "lexnames")),
    ("wordnet-no-index-sense", [*GRAPH, "--nltk-data", "{d}/wn-no-index.sense"], ("wn-no-index.sense",
                                                                                   "index.sense")),
    ("wordnet-no-data-noun", [*GRAPH, "--nltk-data", "{d}/wn-no-data.noun"], ("wn-no-data.noun", "data.noun")),
    ("wordnet-no-noun-exc", [*GRAPH, "--nltk-data", "{d}/wn-no-noun.exc"], ("wn-no-noun.exc", "noun.exc")),
    ("wordnet-corrupt-lexnames", [*GRAPH, "--nltk-data", "{d}/wn-badlex"], ("wn-badlex", "lexnames")),
    ("wordnet-unknown-wnid", [*GRAPH, "--nltk-data", "{d}/wn-empty"], ("n1000",)),
    ("nltk-data-missing", [*GRAPH, "--nltk-data", "{d}/no-such-dir"], ("no-such-dir",)),
    ("make-graph-split-binary", ["make-graph", "--split", "{d}/garbage.json", "--edges", "{data}/edges.txt",
                                 "--out", "{d}/graphs/{id}"], ("garbage.json",)),
    ("make-graph-edges-missing", [*GRAPH, "--edges", "{d}/noedges.txt"], ("noedges.txt",)),
    ("make-graph-split-not-in-edges", ["make-graph", "--split", "{d}/split-extra.json", "--edges",
                                       "{data}/edges.txt", "--out", "{d}/graphs/{id}"], ("n09999999", "edges.txt")),
    ("make-graph-glove-ragged", [*EDGES, "--glove", "{d}/glove-ragged.txt"], ("glove-ragged.txt",)),
    ("make-graph-names-no-tab", [*EDGES, "--names", "{d}/names-notab.txt"], ("names-notab.txt",)),
    ("make-graph-xml-binary", [*GRAPH, "--xml-wnids", "{d}/garbage.json"], ("garbage.json",)),
    ("make-graph-out-is-file", ["make-graph", "--split", "{data}/imagenet-split.json", "--edges",
                                "{data}/edges.txt", "--out", "{d}/afile"], ("afile",)),
    # --- sample and features --------------------------------------------------------------------------------
    ("sample-into-file", ["sample", "{d}/afile"], ("afile",)),
    ("features-without-cnn", ["features", "-c", "{ckpt}", "--out", "{d}/feats/x"], ("model.pretrained",)),
    ("features-out-under-file", ["features", "-c", "{ckpt}", "--out", "{d}/afile/x"], ("afile",)),
    ("data-root-missing", ["train", "--recipe", "gzsl/demo", "--out", "{d}/runs/{id}", *_s("data.root={d}/nodata")],
     ("nodata",)),
    ("checkpoint-without-weights", ["eval", "-c", "{d}/noweights.pt"], ("noweights.pt",)),
]


def fill(argv: list[str], d: Path, data: Path, ckpt: Path, row_id: str) -> list[str]:
    """The argv of a row with its placeholders filled."""
    return [a.format(d=d, data=data, ckpt=ckpt, id=row_id) for a in argv]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A tiny trained checkpoint on the sample hierarchy, and the table's malformed files."""
    from typer.testing import CliRunner

    from zsk.tasks.gzsl.cli import app
    from zsk.tasks.gzsl.data import write_sample

    root = tmp_path_factory.mktemp("gzsl_bad")
    data = root / "data"
    write_sample(data)
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--recipe", "gzsl/demo", *_s(f"data.root={data}", "train.epochs=2",
                                                                  "train.eval_every=0"),
                            "--out", str(root / "run"), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    write_inputs(root / "d", data, root / "run" / "last.pt")
    return runner, app, root / "d", data, root / "run" / "last.pt"


@pytest.fixture
def no_system_wordnet(monkeypatch: pytest.MonkeyPatch) -> None:
    """nltk looks for WordNet only where a row's --nltk-data says."""
    import nltk

    monkeypatch.setattr(nltk.data, "path", [])


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_exits_2_naming_it(table, no_system_wordnet, row, one_error_line) -> None:
    runner, app, d, data, ckpt = table
    row_id, argv, fragments = row
    args = fill(argv, d, data, ckpt, row_id)
    if argv[0] in ("train", "eval", "predict", "features"):
        args.append("--device=cpu")
    r = runner.invoke(app, args)
    one_error_line(r, fragments)


def test_table_is_large_enough() -> None:
    assert len(ROWS) >= 20 and len({r[0] for r in ROWS}) == len(ROWS)


def test_rows_fill_every_placeholder(table) -> None:
    _, _, d, data, ckpt = table
    for row_id, argv, _ in ROWS:
        assert not any("{" in a for a in fill(argv, d, data, ckpt, row_id)), json.dumps(argv)


def test_wordnet_folder_missing_any_reader_file_exits_2_naming_it(table, no_system_wordnet, tmp_path: Path) -> None:
    """`make-graph --nltk-data DIR` on a WordNet corpus that lacks any file nltk's reader opens: exit 2 naming
    the folder and the file (was exit 1, "unexpected OSError")."""
    runner, app, _, data, _ = table
    for missing in WORDNET_FILES:
        folder = write_wordnet(tmp_path / f"nltk-{missing}", omit=missing)
        r = runner.invoke(app, ["make-graph", "--split", str(data / "imagenet-split.json"), "--nltk-data",
                                str(folder), "--out", str(tmp_path / "g")])
        assert r.exit_code == 2, r.output
        assert str(folder / "corpora" / "wordnet") in r.output and f"no file {missing}" in r.output, r.output
    # the corpus folder itself (DIR/corpora/wordnet) stands for DIR
    r = runner.invoke(app, ["make-graph", "--split", str(data / "imagenet-split.json"), "--nltk-data",
                            str(tmp_path / "nltk-lexnames" / "corpora" / "wordnet"), "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "no file lexnames" in r.output, r.output
    assert not (tmp_path / "g").exists()
