"""``zsk retrieve``: image-text retrieval with semantically enhanced hard negatives (LSEH)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    SplitOpt,
    guarded,
)
from zsk.core.progress import emit_result, log, to_json

app = typer.Typer(name="retrieve", no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Visual-semantic embedding retrieval with semantically enhanced hard negatives (LSEH).")

TopKOpt = Annotated[int, typer.Option("--top-k", "-k", help="Matches per query.")]


def _lines(rows: list[dict]) -> None:
    import sys

    for r in rows:
        sys.stdout.write(to_json(r) + "\n")
    sys.stdout.flush()


@app.command()
@guarded
def train(recipe: RecipeOpt, set_: SetOpt = None, out: OutOpt = None, resume: ResumeOpt = False,
          device: DeviceOpt = None, seed: SeedOpt = None, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Train a VSE network (VSE++ or VSE infinity) with LMH, LSH or LSEH; keeps the best validation rsum."""
    from zsk.core.run import start_run
    from zsk.tasks.retrieve import pipeline
    from zsk.tasks.retrieve.config import Config

    ctx = start_run("retrieve", Config, recipe, set_, out=out, resume=resume, device=device, seed=seed)
    result = pipeline.train(ctx)
    if ctx.dist.is_main:  # one result line per run, not per process
        log(f"run directory: {ctx.run_dir}")
        emit_result({"run_dir": str(ctx.run_dir), **result}, as_json=True)


@app.command("eval")
@guarded
def eval_(checkpoint: CheckpointOpt, recipe: OptRecipeOpt = None, set_: SetOpt = None, split: SplitOpt = None,
          protocol: Annotated[str | None, typer.Option(
              "--protocol", help="standard | coco1k (five 1K folds averaged) | coco5k (default: eval.protocol).")] = None,
          device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """R@1/5/10, medr, meanr in both directions and rsum of a checkpoint on a split."""
    from zsk.tasks.retrieve import pipeline

    result = pipeline.evaluate(checkpoint, set_, split, protocol, recipe, device)
    if not json_out:
        result = {k: v for k, v in result.items() if k != "folds"}
    emit_result(result, json_out, title="zsk retrieve eval")


@app.command()
@guarded
def predict(inputs: Annotated[list[str], typer.Argument(
                help="Caption texts ('-' reads lines from stdin) -> images, or .npy image features -> captions.")],
            checkpoint: CheckpointOpt, split: SplitOpt = None, top_k: TopKOpt = 5, set_: SetOpt = None,
            out: OutOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Retrieve the best matches of each query from a dataset split; prints JSON lines."""
    from zsk.core.progress import to_json
    from zsk.tasks.retrieve import pipeline

    rows = pipeline.predict(inputs, checkpoint, top_k, split, set_, device)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "predictions.jsonl").write_text("".join(to_json(r) + "\n" for r in rows))
        log(f"wrote {out / 'predictions.jsonl'}")
    _lines(rows)


@app.command()
@guarded
def index(checkpoint: CheckpointOpt,
          out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to write.")],
          images: Annotated[Path | None, typer.Option(
              "--images", help="Gallery of images: a .npy of features (precomputed models) or an image folder.")] = None,
          captions: Annotated[Path | None, typer.Option(
              "--captions", help="Gallery of captions, one per line (image-to-text queries).")] = None,
          faiss_threshold: Annotated[int, typer.Option(
              "--faiss-threshold", help="Galleries larger than this also get a FAISS IVF index.")] = 100_000,
          nlist: Annotated[int, typer.Option("--nlist", help="FAISS IVF lists (0: 4 sqrt(N)).")] = 0,
          device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Encode a gallery once for fast repeated queries."""
    from zsk.tasks.retrieve import pipeline

    emit_result(pipeline.build_index(checkpoint, out, images, captions, faiss_threshold, nlist, device), json_out,
                title="zsk retrieve index")


@app.command()
@guarded
def query(queries: Annotated[list[str], typer.Argument(
              help="Texts for an image index ('-' reads stdin); .npy features or image files for a caption index.")],
          index_dir: Annotated[Path, typer.Option("--index", help="Folder written by `zsk retrieve index`.")],
          top_k: TopKOpt = 10,
          nprobe: Annotated[int, typer.Option("--nprobe", help="FAISS IVF lists searched per query.")] = 16,
          device: DeviceOpt = None, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Search an index; prints one JSON line of matches per query."""
    from zsk.tasks.retrieve import pipeline

    _lines(pipeline.query_index(index_dir, queries, top_k, nprobe, device))


@app.command()
@guarded
def info(recipe: RecipeOpt, set_: SetOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
         debug: DebugOpt = False) -> None:
    """Parameters per encoder, GFLOPs per pair, split sizes."""
    from zsk.core.run import load_config
    from zsk.tasks.retrieve import pipeline
    from zsk.tasks.retrieve.config import Config

    cfg, _ = load_config("retrieve", Config, recipe, set_)
    emit_result(pipeline.info(cfg), json_out, title="zsk retrieve info")


@app.command()
@guarded
def sample(out_dir: Annotated[Path, typer.Argument(help="Folder to write the synthetic precomputed dataset to.")],
           seed: Annotated[int, typer.Option("--seed", help="Random seed of the generator.")] = 0,
           json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Write a small synthetic precomputed dataset (for recipes/retrieve/demo.yaml and tests)."""
    from zsk.tasks.retrieve.data import write_sample

    folder = write_sample(out_dir, seed=seed)
    emit_result({"data": str(folder), "use": f"zsk retrieve train --recipe retrieve/demo --set data.root={folder}"},
                json_out, title="zsk retrieve sample")


@app.command()
@guarded
def lsa(recipe: RecipeOpt, set_: SetOpt = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: DATA/train_svd.txt).")] = None,
        json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Compute the training captions' LSA vectors (TF-IDF + SVD, cached) and write train_svd.txt."""
    from zsk.core.run import load_config
    from zsk.tasks.retrieve import pipeline
    from zsk.tasks.retrieve.config import Config

    cfg, _ = load_config("retrieve", Config, recipe, set_)
    emit_result(pipeline.write_lsa_file(cfg, out), json_out, title="zsk retrieve lsa")
