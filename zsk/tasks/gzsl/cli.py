"""``zsk gzsl``: zero-shot classification by dense graph propagation (train, eval, predict, info, sample,
make-graph)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.errors import ZskError
from zsk.core.options import (
    CheckpointOpt,
    DebugOpt,
    DeviceOpt,
    JsonOpt,
    OptRecipeOpt,
    OutOpt,
    QuietOpt,
    RecipeOpt,
    ResumeOpt,
    SeedOpt,
    SetOpt,
    guarded,
)
from zsk.core.progress import emit_result, log

app = typer.Typer(name="gzsl", help="DGP/ADGPM: zero-shot classification by dense graph propagation.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
@guarded
def train(recipe: RecipeOpt, set_: SetOpt = None, out: OutOpt = None, resume: ResumeOpt = False,
          device: DeviceOpt = None, seed: SeedOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
          debug: DebugOpt = False) -> None:
    """Regress the CNN's seen-class classifiers with DGP / SGCN / GCNZ; fine-tune the CNN when the recipe asks."""
    from zsk.core.run import start_run
    from zsk.tasks.gzsl import pipeline
    from zsk.tasks.gzsl.config import Config

    ctx = start_run("gzsl", Config, recipe, set_, out=out, resume=resume, device=device, seed=seed)
    metrics = pipeline.train(ctx)
    if ctx.dist.is_main:
        emit_result({"run_dir": str(ctx.run_dir), **metrics}, json_out, title="gzsl train")


@app.command("eval")
@guarded
def eval_(checkpoint: CheckpointOpt, recipe: OptRecipeOpt = None, set_: SetOpt = None,
          testset: Annotated[str | None, typer.Option("--testset", help="2-hops | 3-hops | all | awa2 (or any key of "
                                                      "data.testsets); default: the recipe's eval.testset.")] = None,
          generalized: Annotated[bool, typer.Option("--generalized", help="GZSL ('+1K'): the seen classes join the "
                                                    "candidates.")] = False,
          keep_ratio: Annotated[float | None, typer.Option("--keep-ratio", help="Evaluate this fraction of each "
                                                           "class's images (reference code: 0.1).")] = None,
          features: Annotated[Path | None, typer.Option("--features", help="Precomputed image features (.npy, N x F) "
                                                        "instead of running the CNN on images.")] = None,
          labels: Annotated[Path | None, typer.Option("--labels", help="One wnid per line for --features "
                                                      "(default: <features stem>-labels.txt).")] = None,
          device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """hit@1/2/5/10/20 on an ImageNet test set, micro-averaged over images, ties counted against the model."""
    from zsk.core import dist
    from zsk.tasks.gzsl import pipeline

    sets = list(set_ or [])
    if testset is not None:
        sets.append(f"eval.testset={testset}")
    if generalized:
        sets.append("eval.generalized=true")
    if keep_ratio is not None:
        if not 0.0 < keep_ratio <= 1.0:
            raise ZskError(f"--keep-ratio must be in (0, 1], got {keep_ratio}")
        sets.append(f"eval.keep_ratio={keep_ratio}")
    if features is not None:
        sets.append(f"eval.features={features.resolve()}")
        sets.append(f"eval.labels={labels.resolve() if labels is not None else 'null'}")
    elif labels is not None:
        raise ZskError("--labels goes with --features (the wnids of its rows)")
    result = pipeline.evaluate(checkpoint, sets, recipe, device)
    if dist.is_main():
        emit_result(result, json_out, title="gzsl eval")


@app.command()
@guarded
def predict(inputs: Annotated[list[str], typer.Argument(help="Images, or .npy feature files (one row per image); "
                                                        "'-' reads paths from stdin.")],
            checkpoint: CheckpointOpt,
            candidates: Annotated[Path | None, typer.Option("--candidates", help="File of candidate wnids, one per line "
                                                            "(default: every graph node).")] = None,
            top_k: Annotated[int, typer.Option("--top-k", help="Classes per input.")] = 5,
            set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Print the top-k classes (wnid, name, score) of each input as JSON lines."""
    from zsk.tasks.gzsl import pipeline

    paths: list[Path] = []
    for item in inputs:
        paths.extend(pipeline.read_stdin_paths() if item == "-" else [Path(item)])
    if not paths:
        raise ZskError("no input given (pass image or .npy paths, or '-' to read them from stdin)")
    for p in paths:
        if not p.is_file():
            raise ZskError(f"input not found: {p}")
    for rec in pipeline.predict(checkpoint, paths, candidates, top_k, set_, device):
        emit_result(rec, True)


@app.command()
@guarded
def features(checkpoint: CheckpointOpt,
             out: Annotated[Path, typer.Option("--out", "-o", help="Output stem: writes STEM.npy and STEM-labels.txt.")],
             testset: Annotated[str | None, typer.Option("--testset", help="Classes whose images to encode "
                                                         "(default: the recipe's eval.testset).")] = None,
             set_: SetOpt = None, device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
             debug: DebugOpt = False) -> None:
    """Encode a test set's images once with the checkpoint's CNN, for `eval --features`."""
    from zsk.tasks.gzsl import pipeline

    sets = list(set_ or []) + ([f"eval.testset={testset}"] if testset is not None else [])
    emit_result(pipeline.export_features(checkpoint, out, sets, device), json_out, title="gzsl features")


@app.command()
@guarded
def info(recipe: RecipeOpt, set_: SetOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
         debug: DebugOpt = False) -> None:
    """Graph size, edge counts per hop-distance group, parameters, FLOPs and test-set coverage."""
    from zsk.core.run import load_config
    from zsk.tasks.gzsl import pipeline
    from zsk.tasks.gzsl.config import Config

    cfg, _ = load_config("gzsl", Config, recipe, set_)
    emit_result(pipeline.info(cfg), json_out, title="gzsl info")


@app.command()
@guarded
def sample(out_dir: Annotated[Path, typer.Argument(help="Folder to write the synthetic hierarchy into.")],
           seed: SeedOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Write a small synthetic hierarchy in DGP's file formats for recipes/gzsl/demo.yaml."""
    from zsk.tasks.gzsl.data import write_sample

    summary = write_sample(out_dir, seed=seed or 0)
    log(f"sample written to {out_dir}: train with `zsk gzsl train --recipe gzsl/demo --set data.root={out_dir}`")
    emit_result(summary, json_out, title="gzsl sample")


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
               json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Build imagenet-induced-graph.json and imagenet-dense-grouped-graph.json (DGP's materials scripts)."""
    from zsk.tasks.gzsl.graph_build import build_graph_files

    summary = build_graph_files(split, out or Path("."), edges=edges, xml_wnids=xml_wnids, glove=glove, names=names,
                                nltk_data=nltk_data)
    emit_result(summary, json_out, title="gzsl make-graph")
