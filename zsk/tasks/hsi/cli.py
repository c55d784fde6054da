"""`zsk hsi`: hyperspectral image segmentation with a band-group CNN and a deep CRF (Alam et al. 2019). The
common verbs come from the task contract; hsi declares its extra options here."""

from __future__ import annotations

from typing import Annotated

import typer

from zsk.core.task import Option, TaskModules, task_app

TASK = TaskModules(
    __package__,
    help="Hyperspectral image segmentation with a band-group CNN and a deep CRF.",
    predict_help="Cubes (.h5, .mat, .npy, ENVI .hdr), folders of them, globs; '-' reads a .npy from stdin.",
    input_suffixes=(".mat", ".h5", ".hdf5", ".he5", ".hdr", ".npy"),  # zsk.data.cubes.CUBE_SUFFIXES
    stdin="bytes",
    summary_keys=("OA", "AA", "kappa", "per_class"),
    predict_options=(
        Option("key", Annotated[str | None, typer.Option("--key", help="Array name inside .mat/.h5 inputs.")], None),
        Option("probs", Annotated[bool, typer.Option("--probs", help="Also write <name>_probs.npy (H x W x K).")], False),
        Option("preview", Annotated[bool, typer.Option("--preview/--no-preview", help="Write <name>_preview.png.")], True),
    ),
    sample_options=(
        Option("size", Annotated[int, typer.Option("--size", min=16, help="Rows and columns.")], 64),
        Option("bands", Annotated[int, typer.Option("--bands", min=4, help="Spectral bands.")], 48),
    ),
)

app = task_app(TASK, docs={
    "train": "Train on the recipe's scene (piecewise CRF, then refinement); writes RUN/best.pt, RUN/last.pt, "
             "RUN/eval.json.",
    "eval": "OA, AA, kappa and per-class accuracy on the split (with --out, the confusion matrix as CSV too).",
    "predict": "Per-pixel class maps for whole cubes (label PNG with the palette, .npy, preview with a legend).",
    "info": "Parameters, GFLOPs per pixel and the class table of a recipe.",
    "sample": "Write a small synthetic scene (HDF5, MATLAB, ENVI, NumPy, with labels) for demo.yaml and tests.",
})
