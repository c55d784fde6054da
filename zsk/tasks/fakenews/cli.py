"""``zsk fakenews``: COVID-19 fake-news detection (Ro-CT-BERT). The common verbs come from the task
contract; fakenews declares its extra options here."""

from __future__ import annotations

from typing import Annotated

import typer

from zsk.core.task import Option, TaskModules, task_app
from zsk.data.tables import TABLE_SUFFIXES

TASK = TaskModules(
    __package__,
    help="COVID-19 fake-news detection by fine-tuned transformers and their fusion.",
    predict_help="CSV/TSV/JSONL/text files, folders of them, globs, or - for lines of text on stdin.",
    input_suffixes=TABLE_SUFFIXES,
    stdin="texts",
    summary_keys=("accuracy", "f1_weighted", "precision_weighted", "recall_weighted", "f1_macro"),
    predict_options=(
        Option("fmt", Annotated[str, typer.Option("--format", help="Input format: auto (by suffix; stdin: plain lines) "
                                                  "| csv | tsv | jsonl | lines.")], "auto"),
        Option("batch_size", Annotated[int | None, typer.Option("--batch-size", min=1, help="Texts per batch "
                                                                "(default: eval.batch_size).")], None),
    ),
)

app = task_app(TASK, docs={
    "train": "Fine-tune every branch (heated softmax, FGM, new tokens), then the fusion MLP; writes RUN/best.pt, "
             "RUN/eval.json.",
    "eval": "Accuracy, weighted precision / recall / F1, macro F1 and the confusion matrix on a split (default: test).",
    "predict": "One result per text ({\"input\", \"line\", \"id\"?, \"text\", \"label\", \"score\", \"probabilities\"}), "
               "also written to OUT/<name>_predictions.jsonl per input (names unique per input).",
    "info": "Classes, splits, parameters per branch, the added tokens and GFLOPs per input.",
    "sample": "Write a small synthetic labelled corpus (Constraint_Train/Val.csv, english_test_with_labels.csv).",
})
