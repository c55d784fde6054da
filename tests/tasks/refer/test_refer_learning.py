"""Learning test: the demo AlignFormer on the synthetic shapes set goes from chance to segmenting the referred
object (oIoU, prec@0.5 on val), and the reloaded checkpoint gives the same numbers."""

from __future__ import annotations

import torch

from zsk.core.run import start_run
from zsk.tasks.refer import evaluate, train
from zsk.tasks.refer.data import write_sample


def test_alignformer_learns_the_synthetic_references(tmp_path):
    root = write_sample(tmp_path / "data", num_images=40, size=64, seed=0)
    sets = [f"data.root={root}", "train.epochs=6", "train.lr=2e-3", "train.eval_every=1000", "train.log_every=7",
            "eval.max_refs=8"]
    ctx = start_run("refer", train.Config, "refer/demo", sets, out=tmp_path / "run", device="cpu", seed=0)
    cfg = ctx.cfg
    items = evaluate.refs_of(cfg, "val", 8)
    tok = train.make_tokenizer(cfg)
    torch.manual_seed(0)
    before = evaluate.evaluate_refs(train.build_model(cfg), cfg, items, tok, ctx.device)
    after = train.train(ctx)
    # an object covers 3-10 % of an image: masking everything would give an oIoU of about 6
    assert before["oIoU"] < 12 and after["oIoU"] > 20 and after["oIoU"] > before["oIoU"] + 10, (before, after)
    assert after["prec@0.5"] > before["prec@0.5"]
    loaded = evaluate.load(ctx.run_dir / "best.pt", device="cpu")
    again = evaluate.evaluate_refs(loaded.model, loaded.cfg, items, loaded.parts["tokenizer"], loaded.device)
    assert again["oIoU"] == after["oIoU"]
