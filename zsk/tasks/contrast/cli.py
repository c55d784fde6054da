"""`zsk contrast`: MetAug, contrastive learning via meta feature augmentation (Li et al., ICML 2022). The common
verbs come from the task contract; contrast adds `linear` (the linear evaluation of a pretrained checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.options import CheckpointOpt, DebugOpt, DeviceOpt, JsonOpt, QuietOpt, SeedOpt, SetOpt, guarded
from zsk.core.task import Option, TaskModules, task_app

TASK = TaskModules(
    __package__,
    help="MetAug: contrastive learning with meta feature augmentation (multi-view Lab encoders, linear probe).",
    predict_help="Images (.jpg, .png, ...), folders of them, globs, or '-' to read paths from stdin.",
    input_suffixes=(".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"),
    summary_keys=("top1", "top5"),
    predict_options=(
        Option("embedding", Annotated[bool, typer.Option("--embedding", help="Also print the 3 views' embeddings "
                                                         "(L2-normalised, concatenated).")], False),
        Option("top_k", Annotated[int, typer.Option("--top-k", min=1, help="Probe classes per image.")], 5),
    ),
    sample_options=(
        Option("per_class", Annotated[int, typer.Option("--per-class", min=2, help="Training images per class "
                                                        "(validation: a third of it).")], 24),
    ),
)

app = task_app(TASK, docs={
    "train": "Pretrain MetAug (encoder step + second-order meta step), then the linear evaluation; writes "
             "RUN/best.pt, RUN/last.pt, RUN/eval.json (top1, top5, protocol).",
    "eval": "Top-1/top-5 accuracy (%) of the checkpoint's linear probe, with the protocol that trained it.",
    "predict": "Probe classes (top-k) of images, and with --embedding their MetAug embeddings; JSON lines, also "
               "OUT/predictions.jsonl.",
    "info": "Parameters per part, GFLOPs per image, memory-bank size and probe input of a recipe.",
    "sample": "Write a small synthetic image-folder set (train/, val/) for demo.yaml and tests.",
})


@app.command()
@guarded
def linear(checkpoint: CheckpointOpt,
           out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder for the probe (default: a new "
                                                    "folder under runs/contrast/).")] = None,
           set_: SetOpt = None, device: DeviceOpt = None, seed: SeedOpt = None, json_out: JsonOpt = False,
           quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Linear evaluation of a pretrained checkpoint (frozen encoder): trains a new probe (eval.protocol, eval.layer
    via --set) and writes RUN/best.pt, RUN/eval.json."""
    from zsk.core.progress import emit_result
    from zsk.tasks.contrast.linear import linear_evaluation

    emit_result(linear_evaluation(checkpoint, out, set_, device, seed), json_out, title="contrast linear")
