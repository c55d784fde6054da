"""``zsk gzsl``: zero-shot classification by dense graph propagation. The common verbs come from the task
contract; gzsl declares their extra options here and adds ``features`` and ``make-graph``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.options import CheckpointOpt, DebugOpt, DeviceOpt, JsonOpt, OutOpt, QuietOpt, SetOpt, guarded
from zsk.core.task import Option, TaskModules, task_app

TASK = TaskModules(
    __package__,
    help="DGP/ADGPM: zero-shot classification by dense graph propagation.",
    predict_help="Images, or .npy feature files (one row per image), folders of them, globs, or '-' to read "
                 "paths from stdin.",
    input_suffixes=(".jpg", ".jpeg", ".png", ".bmp", ".webp", ".npy"),
    summary_keys=("hit@1", "hit@2", "hit@5", "hit@10", "hit@20", "top1_per_class", "seen_loss"),
    eval_options=(
        Option("testset", Annotated[str | None, typer.Option("--testset", help="2-hops | 3-hops | all | awa2 (or any "
                                                             "key of data.testsets); default: the recipe's "
                                                             "eval.testset.")], None),
        Option("generalized", Annotated[bool, typer.Option("--generalized", help="GZSL ('+1K'): the seen classes join "
                                                           "the candidates.")], False),
        Option("keep_ratio", Annotated[float | None, typer.Option("--keep-ratio", help="Evaluate this fraction of each "
                                                                  "class's images (reference code: 0.1).")], None),
        Option("features", Annotated[Path | None, typer.Option("--features", help="Precomputed image features (.npy, "
                                                                "N x F) instead of running the CNN on images.")], None),
        Option("labels", Annotated[Path | None, typer.Option("--labels", help="One wnid per line for --features "
                                                             "(default: <features stem>-labels.txt).")], None),
    ),
    predict_options=(
        Option("candidates", Annotated[Path | None, typer.Option("--candidates", help="File of candidate wnids, one per "
                                                                 "line (default: every graph node).")], None),
        Option("top_k", Annotated[int, typer.Option("--top-k", help="Classes per input.")], 5),
    ),
)

app = task_app(TASK, docs={
    "train": "Regress the CNN's seen-class classifiers with DGP / SGCN / GCNZ (stage propagate); fine-tune the "
             "CNN under them when train.stages.finetune.enabled (stage finetune).",
    "eval": "hit@1/2/5/10/20 on an ImageNet test set, micro-averaged over images, ties counted against the model.",
    "predict": "The top-k classes (wnid, name, score) of each image or feature row, with the input and its unique "
               "input_name; also OUT/predictions.jsonl.",
    "info": "Graph size, edge counts per hop-distance group, parameters, FLOPs and test-set coverage.",
    "sample": "Write a small synthetic hierarchy in DGP's file formats (the data of recipes/gzsl/demo.yaml).",
})


@app.command()
@guarded
def features(checkpoint: CheckpointOpt,
             out: Annotated[Path, typer.Option("--out", "-o", help="Output stem: writes STEM.npy and STEM-labels.txt.")],
             testset: Annotated[str | None, typer.Option("--testset", help="Classes whose images to encode "
                                                         "(default: the recipe's eval.testset).")] = None,
             set_: SetOpt = None, device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
             debug: DebugOpt = False) -> None:
    """Encode a test set's images once with the checkpoint's CNN, for `eval --features`."""
    from zsk.core.progress import emit_result
    from zsk.tasks.gzsl.evaluate import export_features

    loaded = TASK.load(checkpoint, set_, device)
    emit_result(export_features(loaded, out, testset), json_out, title="gzsl features")


@app.command("make-graph")
@guarded
def make_graph(split: Annotated[Path, typer.Option("--split", help="imagenet-split.json (train wnids first, in fc order).")],
               out: OutOpt = None,
               edges: Annotated[Path | None, typer.Option("--edges", help="A 'child parent' edge list for a non-WordNet "
                                                          "hierarchy (default: induce from nltk's WordNet).")] = None,
               xml_wnids: Annotated[Path | None, typer.Option("--xml-wnids", help="imagenet-xml-wnids.json: stop the "
                                                              "hypernym BFS there and add these nodes.")] = None,
               glove: Annotated[Path | None, typer.Option("--glove", help="GloVe text file for the node vectors.")] = None,
               names: Annotated[Path | None, typer.Option("--names", help="words.txt (wnid<TAB>names) for the lemma "
                                                          "names (default: WordNet's lemmas, or the node ids).")] = None,
               nltk_data: Annotated[Path | None, typer.Option("--nltk-data", help="Folder holding corpora/wordnet.")] = None,
               lower_case: Annotated[bool, typer.Option("--lower-case", help="Look lemma words up lower-cased "
                                                        "(default: as written, as DGP's materials/glove.py).")] = False,
               json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Build imagenet-induced-graph.json and imagenet-dense-grouped-graph.json (DGP's materials scripts)."""
    from zsk.core.progress import emit_result
    from zsk.tasks.gzsl.graph_build import build_graph_files

    summary = build_graph_files(split, out or Path("."), edges=edges, xml_wnids=xml_wnids, glove=glove, names=names,
                                nltk_data=nltk_data, lemma_case="lower" if lower_case else "keep")
    emit_result(summary, json_out, title="gzsl make-graph")
