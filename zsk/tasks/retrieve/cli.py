"""``zsk retrieve``: image-text retrieval with semantically enhanced hard negatives (LSEH). The common
verbs come from the task contract; retrieve adds ``index``, ``query`` and ``lsa``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.options import CheckpointOpt, DebugOpt, DeviceOpt, JsonOpt, QuietOpt, RecipeOpt, SetOpt, guarded
from zsk.core.task import Option, TaskModules, task_app

TopKOpt = Annotated[int, typer.Option("--top-k", "-k", help="Matches per query (>= 1).")]

TASK = TaskModules(
    __package__,
    help="Visual-semantic embedding retrieval with semantically enhanced hard negatives (LSEH).",
    predict_help="'-' reads caption queries from stdin (one per line) -> images; .npy image features or "
                 "image files (raw-image models), or folders of them -> captions.",
    input_suffixes=(".npy", ".jpg", ".jpeg", ".png", ".bmp", ".webp"),
    stdin="texts",
    text_args=True,  # `zsk retrieve predict "a dog on the beach"`: an argument naming no file is a caption query
    summary_keys=("rsum", "i2t", "t2i", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
                  "epochs_to_best"),
    eval_options=(
        Option("protocol", Annotated[str | None, typer.Option(
            "--protocol", help="standard | coco1k (five 1K folds averaged) | coco5k (default: eval.protocol).")], None),
        Option("ensemble", Annotated[list[Path] | None, typer.Option(
            "--ensemble", help="Another checkpoint whose scores are averaged with --checkpoint's (repeatable; "
                               "SGRAF = an SGR and an SAF checkpoint).")], None),
        Option("search", Annotated[str | None, typer.Option(
            "--search", help="exact (every rank, the papers' protocol) | faiss (R@K and medr from a faiss search "
                             "of the top eval.faiss_depth; for galleries too large to scan). Default: eval.search.")],
               None),
    ),
    predict_options=(
        Option("split", Annotated[str | None, typer.Option(
            "--split", help="Dataset split searched (default: eval.split or data.test_split).")], None),
        Option("k", TopKOpt, 5),
    ),
)

app = task_app(TASK, docs={
    "train": "Train VSE++, VSE infinity, VSRN, SGR or SAF with LMH, LSH or LSEH; keeps the best validation score.",
    "eval": "R@1/5/10, medr, meanr in both directions and rsum of a checkpoint (or an --ensemble) on a split.",
    "predict": "Retrieve the best matches of each query from a dataset split; also writes OUT/predictions.jsonl.",
    "info": "Parameters per encoder, GFLOPs per pair, split sizes.",
    "sample": "Write a small synthetic precomputed dataset (for recipes/retrieve/demo.yaml and tests).",
})


def _lines(rows: list[dict]) -> None:
    import sys

    from zsk.core.progress import to_json

    for r in rows:
        sys.stdout.write(to_json(r) + "\n")
    sys.stdout.flush()


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
          nlist: Annotated[int, typer.Option("--nlist", help="FAISS IVF lists (>= 1; 0: 4 sqrt(N)).")] = 0,
          device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Encode a gallery once for fast repeated queries."""
    from zsk.core.progress import emit_result
    from zsk.tasks.retrieve.predict import build_index

    emit_result(build_index(checkpoint, out, images, captions, faiss_threshold, nlist, device), json_out,
                title="zsk retrieve index")


@app.command()
@guarded
def query(queries: Annotated[list[str], typer.Argument(
              help="Texts for an image index ('-' reads stdin); .npy features or image files for a caption index.")],
          index_dir: Annotated[Path, typer.Option("--index", help="Folder written by `zsk retrieve index`.")],
          top_k: TopKOpt = 10,
          nprobe: Annotated[int, typer.Option("--nprobe", help="FAISS IVF lists searched per query (>= 1).")] = 16,
          device: DeviceOpt = None,
          json_out: Annotated[bool, typer.Option("--json", help="Print results as JSON lines on stdout (the "
                                                 "default output of query, accepted like every verb's --json).")] = False,
          quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Search an index; prints one JSON line {"input", ["row"], "query", "matches"} per query."""
    from zsk.tasks.retrieve.predict import query_index

    _lines(query_index(index_dir, queries, top_k, nprobe, device))


@app.command()
@guarded
def lsa(recipe: RecipeOpt, set_: SetOpt = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: DATA/train_svd.txt).")] = None,
        json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Compute the training captions' LSA vectors (TF-IDF + SVD, cached) and write train_svd.txt."""
    from zsk.core.progress import emit_result
    from zsk.core.run import load_config
    from zsk.tasks.retrieve.lsa import write_lsa_file

    cfg, _ = load_config("retrieve", TASK.Config, recipe, set_, sample=TASK)
    emit_result(write_lsa_file(cfg, out), json_out, title="zsk retrieve lsa")
