"""``zsk adapt``: STAL / ILM-ASSL, self-training + active learning for domain-adaptive segmentation. The
common verbs come from the task contract; adapt declares their extra options here and adds ``select``
(one active-learning round from a checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.options import CheckpointOpt, DebugOpt, DeviceOpt, JsonOpt, QuietOpt, RecipeOpt, SetOpt, guarded
from zsk.core.task import Option, TaskModules, task_app

TASK = TaskModules(
    __package__,
    help="STAL (ILM-ASSL): self-training + active learning for GTAV/SYNTHIA -> Cityscapes segmentation.",
    predict_help="Images (.png, .jpg), folders of them, globs, or '-' to read paths from stdin.",
    input_suffixes=(".png", ".jpg", ".jpeg"),
    summary_keys=("mIoU", "mIoU16", "mIoU13"),
    eval_options=(
        Option("student", Annotated[bool, typer.Option("--student", help="Evaluate the student instead of the EMA "
                                                       "teacher (STAL keeps and reports the teacher).")], False),
        Option("center_crop", Annotated[bool, typer.Option("--center-crop", help="One centre crop of the window "
                                                           "size per image (STAL's validation during training) "
                                                           "instead of sliding windows over the full image.")], False),
    ),
    sample_options=(
        Option("num_source", Annotated[int, typer.Option("--source", help="Source (GTAV-layout) images.")], 12),
        Option("num_train", Annotated[int, typer.Option("--train", help="Target train images.")], 12),
        Option("num_val", Annotated[int, typer.Option("--val", help="Target val images.")], 4),
        Option("size", Annotated[str, typer.Option("--size", help="Target image size H,W.")], "64,128"),
    ),
)

app = task_app(TASK, docs={
    "train": "Train STAL's rounds (one stage each): mean-teacher self-training, then select and label the next "
             "budget with the teacher; writes RUN/labeled-round<k>.txt, best.pt, last.pt, eval.json.",
    "eval": "mIoU, mIoU16, mIoU13 and per-class IoU of the teacher on Cityscapes val (sliding 769 windows).",
    "predict": "Segment images: <name>_pred.png (trainIds, Cityscapes palette) and <name>_overlay.png per input.",
    "info": "Classes, rounds and budgets, parameter counts and GFLOPs per training crop.",
    "sample": "Write synthetic GTAV-layout source and Cityscapes-layout target sets with a domain shift.",
})


@app.command("select")
@guarded
def select(checkpoint: CheckpointOpt,
           budget: Annotated[int, typer.Option("--budget", help="Target images to add (STAL: 35 for 30 -> 65).")],
           out: Annotated[Path, typer.Option("--out", "-o", help="The new labelled list to write (STAL format); "
                                             "the montage goes beside it as <stem>-montage.png.")],
           labeled: Annotated[Path | None, typer.Option("--labeled", help="The current labelled list (default: "
                                                        "the one the checkpoint was trained with).")] = None,
           set_: SetOpt = None, device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
           debug: DebugOpt = False) -> None:
    """One active-learning round: score the unlabelled Cityscapes train images with the checkpoint's
    teacher (mean normalised entropy, or RIPU with --set train.al.selector=ripu) and add the budget under
    the city quotas."""
    from zsk.core.progress import emit_result
    from zsk.core.task import expand_checkpoints
    from zsk.tasks.adapt.selection import run_selection

    loaded = TASK.load(expand_checkpoints([checkpoint])[0], set_, device)  # a run folder stands for its best.pt
    emit_result(run_selection(loaded, budget, out, labeled), json_out, title="adapt select")


@app.command("import-official")
@guarded
def import_official(checkpoint: Annotated[Path, typer.Argument(help="STAL's ckpt_best.pth (the README's released "
                                                                "checkpoints, or one of your own runs).")],
                    recipe: RecipeOpt,
                    out: Annotated[Path, typer.Option("--out", "-o", help="The zsk checkpoint to write (a .pt file, "
                                                      "or a folder for <folder>/best.pt).")],
                    set_: SetOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
                    debug: DebugOpt = False) -> None:
    """Convert an official STAL / ILM-ASSL checkpoint (student and teacher) into a zsk checkpoint for
    eval / select / predict."""
    from zsk.core.progress import emit_result
    from zsk.tasks.adapt.evaluate import import_official as convert

    emit_result(convert(checkpoint, str(recipe), out, set_), json_out, title="adapt import-official")
