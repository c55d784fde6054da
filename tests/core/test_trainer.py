"""The trainer: exact resume after SIGTERM, NaN guard, LR schedules, accumulation, eval/best/logs, max_steps."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from zsk.core.checkpoint import load_checkpoint
from zsk.core.errors import ZskError, ZskFailure
from zsk.core.recipe import RuntimeConfig
from zsk.core.run import start_run
from zsk.core.trainer import TrainConfig, Trainer, batches_per_epoch, lr_factor, make_loader

SCRIPTS = Path(__file__).parent / "scripts"


# ------------------------------------------------------------------ exact resume (subprocesses)
def toy_run(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPTS / "toy_train.py"), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def reference_run(out: Path, *args: str) -> None:
    """The uninterrupted run, in this process (same script, same single thread: bitwise the same maths)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import toy_train
    finally:
        sys.path.remove(str(SCRIPTS))
    toy_train.main(["--out", str(out), *args])


@pytest.mark.parametrize(("accum", "kill_at"), [(1, 7), (2, 4)], ids=["mid-epoch", "accum2-epoch-end"])
def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path: Path, accum: int, kill_at: int) -> None:
    # 40 samples / batch 4 = 10 batches per epoch; 12 optimizer steps of `accum` batches each cross epoch
    # boundaries. With accum=2, step 4 ends with batch 10: the kill lands exactly on the end of epoch 0.
    sets = ["--set", f"train.grad_accum={accum}"]
    interrupted = toy_run(tmp_path / "run", *sets, "--kill-at", str(kill_at))
    reference_run(tmp_path / "ref", *sets)  # meanwhile
    code, err = finish(interrupted)
    assert code == 143, err
    assert "interrupted" in err and "--resume" in err
    stopped = load_checkpoint(tmp_path / "run" / "last.pt")
    assert stopped["step"] == kill_at + 1  # the step in progress was finished, then saved
    assert stopped["epoch"] == 0 and stopped["batch_in_epoch"] == (kill_at + 1) * accum
    assert not (tmp_path / "run" / "eval.json").exists()
    code, err = finish(toy_run(tmp_path / "run", *sets, "--resume"))
    assert code == 0, err
    assert f"resumed {tmp_path / 'run' / 'last.pt'} at step {kill_at + 1}" in err

    ref = load_checkpoint(tmp_path / "ref" / "last.pt")
    res = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ref["step"] == res["step"] == 12
    assert ref["model"].keys() == res["model"].keys()
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], res["model"][k]), k
    # the optimizer moments match too, and training really continued after the interruption
    for p_ref, p_res in zip(ref["optimizer"]["state"].values(), res["optimizer"]["state"].values(), strict=True):
        assert torch.equal(p_ref["exp_avg"], p_res["exp_avg"])
    assert not torch.equal(stopped["model"]["0.weight"], res["model"]["0.weight"])
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["acc"] == \
        json.loads((tmp_path / "ref" / "eval.json").read_text())["acc"]
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [12]
    # metrics.jsonl reads as one uninterrupted run: the same rows (no off-grid row at the kill, the same
    # averaged losses), timing aside
    ref_rows = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    untimed = [[{k: v for k, v in r.items() if k != "steps_per_s"} for r in rows] for rows in (evals, ref_rows)]
    assert untimed[0] == untimed[1]


def test_sigusr1_from_a_batch_scheduler_checkpoints_and_resume_auto_continues(tmp_path: Path) -> None:
    """SLURM's `--signal=USR1@90` warning: finish the step, write last.pt, exit 138 (128 + SIGUSR1); the
    requeued job's resume (`zsk <task> train ... --resume auto`) continues to the weights of an uninterrupted run."""
    interrupted = toy_run(tmp_path / "run", "--kill-at", "5", "--signal", "SIGUSR1")
    reference_run(tmp_path / "ref")
    code, err = finish(interrupted)
    assert code == 138, err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 6
    code, err = finish(toy_run(tmp_path / "run", "--resume"))
    assert code == 0, err
    ref = load_checkpoint(tmp_path / "ref" / "last.pt")
    res = load_checkpoint(tmp_path / "run" / "last.pt")
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], res["model"][k]), k


def test_rows_a_killed_run_wrote_after_its_checkpoint_are_dropped_on_resume(tmp_path: Path) -> None:
    """kill -9 after the checkpoint at step 6 but after rows for steps 7-8 were written: the resumed run's
    metrics.jsonl equals an uninterrupted run's."""
    sets = ["--set", "train.save_every=3", "--set", "train.steps=9"]
    reference_run(tmp_path / "ref", *sets)
    reference_run(tmp_path / "run", *sets, "--set", "train.max_steps=6")
    ref_rows = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    killed = [r for r in ref_rows if json.loads(r)["kind"] == "train" and json.loads(r)["step"] in (8,)]
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:  # what the killed process had appended
        f.write("".join(r + "\n" for r in killed) + '{"kind": "train", "st')
    reference_run(tmp_path / "run", *sets, "--resume")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in ref_rows]
    # the training rows (the stopped run's own evaluation at step 6 is a real row of it and stays)
    strip = [[{k: v for k, v in r.items() if k != "steps_per_s"} for r in rr if r["kind"] == "train"]
             for rr in (rows, ref)]
    assert [r["step"] for r in strip[0]] == [2, 4, 6, 8, 9]
    assert strip[0] == strip[1]


# ------------------------------------------------------------------ in-process helpers
@dataclass
class Config:
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


N, BATCH = 16, 4  # 4 batches per epoch


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def build(tmp_path: Path, sets: list[str], step_fn: Any = None, eval_fn: Any = None,
          model: nn.Module | None = None, **kwargs: Any) -> Trainer:
    ctx = start_run("toy", Config, None, [f"train.batch_size={BATCH}", "train.log_every=1", *sets],
                    out=tmp_path / "run", device="cpu")
    data = dataset()
    model = model if model is not None else nn.Linear(3, 2)
    loss_fn = nn.CrossEntropyLoss()

    def default_step(m: nn.Module, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": loss_fn(m(x), y)}

    return Trainer(ctx, model, ctx.cfg.train, step_fn or default_step,
                   lambda epoch, start: make_loader(data, BATCH, epoch=epoch, seed=0, start_batch=start),
                   batches_per_epoch(N, BATCH), eval_fn=eval_fn, **kwargs)


def records(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ NaN guard
def test_nan_loss_stops_with_a_clear_message(tmp_path: Path) -> None:
    def step_fn(m: nn.Module, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x, y = batch
        ce = nn.functional.cross_entropy(m(x), y)
        reg = torch.tensor(float("nan")) if step == 2 else torch.tensor(0.0)
        return {"loss": ce + reg, "ce": ce, "reg": reg}

    trainer = build(tmp_path, ["train.steps=10"], step_fn=step_fn)
    with pytest.raises(ZskFailure) as e:
        trainer.fit()
    msg = str(e.value)
    assert "diverged" in msg and "non-finite" in msg
    assert "step 3" in msg  # detected right after the step that produced it (0-based step 2)
    assert "reg" in msg and "loss" in msg and "ce," not in msg  # names the bad terms, not the finite one
    assert "train.lr" in msg  # and what to try
    assert not (tmp_path / "run" / "last.pt").exists()  # no NaN weights were checkpointed


def test_inf_loss_is_caught_too(tmp_path: Path) -> None:
    def step_fn(m: nn.Module, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x, _ = batch
        return {"loss": m(x).sum() * float("inf")}

    with pytest.raises(ZskFailure, match="non-finite loss"):
        build(tmp_path, ["train.steps=5"], step_fn=step_fn).fit()


# ------------------------------------------------------------------ LR schedules
def expected_lr(t: int, T: int, base: float, schedule: str, *, power: float = 0.9, min_lr: float = 0.0,
                milestones: tuple[int, ...] = (), gamma: float = 0.1, warmup: int = 0, ratio: float = 1e-6) -> float:
    """The schedules written out independently (mmseg/mmcv conventions)."""
    if schedule == "constant":
        lr = base
    elif schedule == "poly":  # mmcv PolyLrUpdater: (base - min) * (1 - t/T)^p + min
        lr = (base - min_lr) * (1 - t / T) ** power + min_lr
    elif schedule == "cosine":  # annealing_cos(base, min, t/T)
        lr = min_lr + (base - min_lr) * (math.cos(math.pi * t / T) + 1) / 2
    elif schedule == "step":
        lr = base * gamma ** len([m for m in milestones if t >= m])
    else:
        raise AssertionError(schedule)
    if t < warmup:  # linear warmup from ratio * lr at t=0 to lr at t=warmup
        lr *= ratio + (1 - ratio) * t / warmup
    return lr


SCHEDULES = [
    ("constant", [], {}),
    ("poly", ["train.poly_power=2.0", "train.min_lr=0.01"], {"power": 2.0, "min_lr": 0.01}),
    ("cosine", ["train.min_lr=0.005"], {"min_lr": 0.005}),
    ("step", ["train.milestones=[3, 7]", "train.gamma=0.5"], {"milestones": (3, 7), "gamma": 0.5}),
    ("poly", ["train.warmup_steps=4", "train.warmup_ratio=0.1"], {"warmup": 4, "ratio": 0.1}),
    ("cosine", ["train.warmup_steps=3"], {"warmup": 3}),
    ("step", ["train.milestones=[5]", "train.warmup_steps=2", "train.warmup_ratio=0.25"],
     {"milestones": (5,), "gamma": 0.1, "warmup": 2, "ratio": 0.25}),
]


@pytest.mark.parametrize(("schedule", "sets", "kw"), SCHEDULES)
def test_lr_factor_matches_the_formulas(schedule: str, sets: list[str], kw: dict) -> None:
    from zsk.core.recipe import load_recipe, parse_config

    cfg = parse_config(TrainConfig, load_recipe(None, [f"train.schedule={schedule}", "train.lr=0.1", *sets])["train"],
                       prefix="train")
    for t in (0, 1, 2, 3, 4, 5, 7, 9, 10):
        assert lr_factor(t, 10, cfg) * 0.1 == pytest.approx(expected_lr(t, 10, 0.1, schedule, **kw), abs=1e-12), t


@pytest.mark.parametrize(("schedule", "sets", "kw"), SCHEDULES)
def test_optimizer_lr_follows_the_schedule(tmp_path: Path, schedule: str, sets: list[str], kw: dict) -> None:
    seen: list[tuple[int, float, float]] = []
    holder: dict[str, Trainer] = {}

    def step_fn(m: nn.Module, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        groups = holder["t"].optimizer.param_groups
        seen.append((step, groups[0]["lr"], groups[1]["lr"]))
        x, y = batch
        return {"loss": nn.functional.cross_entropy(m(x), y)}

    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[1].parameters()), "lr_mult": 10.0}]
    trainer = build(tmp_path, [f"train.schedule={schedule}", "train.lr=0.1", "train.steps=10", "train.optimizer=sgd",
                               *sets], step_fn=step_fn, model=model, param_groups=groups)
    holder["t"] = trainer
    trainer.fit()
    assert [s for s, _, _ in seen] == list(range(10))
    # metrics.jsonl logs, at step s (s steps done), the lr that step s-1 used
    logged = {r["step"]: r["lr"] for r in records(tmp_path) if r["kind"] == "train"}
    assert logged == pytest.approx({s + 1: lr for s, lr, _ in seen})
    for step, lr, lr_head in seen:
        want = expected_lr(step, 10, 0.1, schedule, **kw)
        assert lr == pytest.approx(want, abs=1e-12), step
        # lr_mult scales the group's base lr; min_lr stays an absolute floor in every group (mmcv)
        assert lr_head == pytest.approx(expected_lr(step, 10, 1.0, schedule, **kw), abs=1e-11), step


def test_schedule_is_over_total_steps_and_clamps_after(tmp_path: Path) -> None:
    cfg = TrainConfig(lr=1.0, schedule="poly", poly_power=1.0)
    assert lr_factor(5, 10, cfg) == pytest.approx(0.5)
    assert lr_factor(10, 10, cfg) == 0.0 and lr_factor(15, 10, cfg) == 0.0


# ------------------------------------------------------------------ accumulation and clipping
def test_grad_accum_averages_micro_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    w0 = [p.detach().clone() for p in model.parameters()]
    trainer = build(tmp_path, ["train.optimizer=sgd", "train.momentum=0", "train.lr=0.5", "train.steps=1",
                               "train.grad_accum=2"], model=model)
    trainer.fit()
    # the two micro-batches are the first two batches of epoch 0 in make_loader's order
    x, y = dataset().tensors
    batches = list(make_loader(dataset(), BATCH, epoch=0, seed=0))[:2]
    ref = nn.Linear(3, 2)
    with torch.no_grad():
        for p, w in zip(ref.parameters(), w0, strict=True):
            p.copy_(w)
    loss = sum(nn.functional.cross_entropy(ref(bx), by) for bx, by in batches) / 2
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for p, w, g in zip(model.parameters(), w0, grads, strict=True):
        torch.testing.assert_close(p.detach(), w - 0.5 * g, rtol=0, atol=1e-6)
    assert trainer.step == 1 and trainer.batch_in_epoch == 2


def test_effective_batch_is_accumulated_by_the_trainer(tmp_path: Path) -> None:
    """train.effective_batch 8 at batch 4 on one process: the Trainer itself accumulates 2 micro-batches, the
    same update as train.grad_accum=2 (any task's recipe, not only those that resolve it)."""
    sets = ["train.optimizer=sgd", "train.momentum=0", "train.lr=0.5", "train.steps=1"]
    weights = []
    for name, extra in (("accum", "train.grad_accum=2"), ("effective", "train.effective_batch=8")):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        trainer = build(tmp_path / name, [*sets, extra], model=model)
        trainer.fit()
        assert trainer.cfg.grad_accum == 2 and trainer.batch_in_epoch == 2
        weights.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*weights, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ZskError, match=r"train.effective_batch=6 is not a multiple of train.batch_size x GPUs = 4"):
        build(tmp_path / "odd", [*sets, "train.effective_batch=6"])
    with pytest.raises(ZskError, match=r"train.effective_batch must be >= 1"):
        build(tmp_path / "zero", [*sets, "train.effective_batch=0"])


def test_clip_grad_norm_limits_the_update(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    w0 = torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    def step_fn(m: nn.Module, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x, _ = batch
        return {"loss": 1000.0 * m(x).square().mean()}  # a huge gradient

    build(tmp_path, ["train.optimizer=sgd", "train.momentum=0", "train.lr=1.0", "train.steps=1",
                     "train.clip_grad_norm=0.01"], step_fn=step_fn, model=model).fit()
    w1 = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (w1 - w0).norm().item() == pytest.approx(0.01, rel=1e-4)  # lr * clipped norm


# ------------------------------------------------------------------ eval, best.pt, logs
def test_eval_every_best_checkpoint_and_run_files(tmp_path: Path) -> None:
    scores = iter([0.5, 0.9, 0.7])  # evaluations at steps 2, 4 and the final one at 6
    calls: list[bool] = []

    def eval_fn(m: nn.Module) -> dict[str, float]:
        calls.append(m.training)
        return {"mIoU": next(scores), "loss": 1.0}

    trainer = build(tmp_path, ["train.steps=6", "train.eval_every=2", "train.log_every=3"], eval_fn=eval_fn,
                    extra={"class_names": ["neg", "pos"]})
    final = trainer.fit()
    assert final == {"mIoU": 0.7, "loss": 1.0}
    assert calls == [False, False, False]  # evaluated in eval mode
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"recipe.yaml", "metrics.jsonl", "last.pt", "best.pt", "eval.json"}
    best = load_checkpoint(run / "best.pt")
    assert best["step"] == 4 and best["best"] == {"metric": "mIoU", "value": 0.9, "step": 4}
    assert best["extra"] == {"class_names": ["neg", "pos"]} and best["task"] == "toy"
    assert best["recipe"]["train"]["eval_every"] == 2
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 6 and last["metrics"] == {"mIoU": 0.7, "loss": 1.0}
    summary = json.loads((run / "eval.json").read_text())
    assert summary["step"] == 6 and summary["mIoU"] == 0.7 and summary["best"]["value"] == 0.9
    recs = records(tmp_path)
    # in the order they happened: log_every=3 gives train records at 3 and 6, eval_every=2 evals at 2, 4, end
    assert [(r["kind"], r["step"]) for r in recs] == [("eval", 2), ("train", 3), ("eval", 4), ("train", 6),
                                                      ("eval", 6)]
    assert all("loss" in r and "lr" in r for r in recs if r["kind"] == "train")
    assert [r["mIoU"] for r in recs if r["kind"] == "eval"] == [0.5, 0.9, 0.7]


def test_best_mode_min_and_unknown_best_metric(tmp_path: Path) -> None:
    losses = iter([3.0, 1.0, 2.0])
    trainer = build(tmp_path / "a", ["train.steps=6", "train.eval_every=2", "train.best_metric=val_loss",
                                     "train.best_mode=min"], eval_fn=lambda m: {"acc": 0.1, "val_loss": next(losses)})
    trainer.fit()
    assert load_checkpoint(tmp_path / "a" / "run" / "best.pt")["best"] == {"metric": "val_loss", "value": 1.0,
                                                                            "step": 4}
    trainer = build(tmp_path / "b", ["train.steps=2", "train.best_metric=mIoU"], eval_fn=lambda m: {"acc": 0.1})
    with pytest.raises(ZskError, match="mIoU"):
        trainer.fit()


def test_epochs_evaluate_once_per_epoch(tmp_path: Path) -> None:
    trainer = build(tmp_path, ["train.epochs=2", "train.log_every=100"], eval_fn=lambda m: {"acc": 0.5})
    trainer.fit()
    recs = records(tmp_path)
    assert [r["step"] for r in recs if r["kind"] == "eval"] == [4, 8]  # 4 batches per epoch
    assert trainer.step == 8


def test_max_steps_stops_early(tmp_path: Path) -> None:
    calls: list[int] = []

    def step_fn(m: nn.Module, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        calls.append(step)
        x, y = batch
        return {"loss": nn.functional.cross_entropy(m(x), y)}

    trainer = build(tmp_path, ["train.steps=100", "train.max_steps=3", "train.schedule=cosine", "train.lr=0.1"],
                    step_fn=step_fn, eval_fn=lambda m: {"acc": 1.0})
    trainer.fit()
    assert calls == [0, 1, 2]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["step"] == 3
    # the schedule still spans train.steps: after 3 of 100 cosine steps the lr has barely moved
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr(3, 100, 0.1, "cosine"))


def test_no_eval_fn_still_writes_best_and_eval_json(tmp_path: Path) -> None:
    build(tmp_path, ["train.steps=2"]).fit()
    run = tmp_path / "run"
    assert load_checkpoint(run / "best.pt")["step"] == 2
    assert json.loads((run / "eval.json").read_text())["step"] == 2


def test_bad_train_settings_are_zsk_errors(tmp_path: Path) -> None:
    with pytest.raises(ZskError, match="train.steps"):
        build(tmp_path / "a", [])  # neither steps nor epochs
    with pytest.raises(ZskError, match="grad_accum"):
        build(tmp_path / "b", ["train.steps=1", "train.grad_accum=0"])
    with pytest.raises(ZskError, match="batch_size"):
        ctx = start_run("toy", Config, None, ["train.steps=1"], out=tmp_path / "c", device="cpu")
        Trainer(ctx, nn.Linear(3, 2), ctx.cfg.train, lambda m, b, s: {}, lambda e, s: [], steps_per_epoch=0)


def test_extra_mutated_during_training_is_restored_on_resume(tmp_path: Path) -> None:
    """A task may keep growing state in ``trainer.extra``; --resume brings back the saved value, not the
    one the task passed at construction."""
    holder: dict[str, Trainer] = {}

    def step_fn(m: nn.Module, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        holder["t"].extra["seen_steps"].append(step)
        x, y = batch
        return {"loss": nn.functional.cross_entropy(m(x), y)}

    first = build(tmp_path, ["train.steps=6", "train.max_steps=3"], step_fn=step_fn,
                  extra={"seen_steps": [], "classes": ["a", "b"]})
    holder["t"] = first
    first.fit()
    ctx = first.ctx
    ctx.resume = True
    second = Trainer(ctx, nn.Linear(3, 2), ctx.cfg.train, step_fn, first.loader_fn, first.batches_per_epoch,
                     extra={"seen_steps": [], "classes": ["a", "b"]})
    second.load(second.last_path)
    assert second.extra == {"seen_steps": [0, 1, 2], "classes": ["a", "b"]}


@pytest.mark.parametrize("sharded", [True, False])
def test_eval_loader_leaves_the_global_rng_alone(sharded: bool) -> None:
    """An evaluation between training steps must not shift the random stream training draws from
    (else a resumed run differs); a plain DataLoader does shift it, which is what this guards."""
    from torch.utils.data import DataLoader

    from zsk.core.trainer import make_eval_loader

    data = dataset()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    batches = list(make_eval_loader(data, 7, sharded=sharded))
    assert sum(len(b[0]) for b in batches) == N
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(5)
    list(DataLoader(data, batch_size=7))
    assert not torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------- loaders and callbacks


class _RandomAugment(torch.utils.data.Dataset):
    """Item i is (i, a random draw): the draw stands for a random augmentation done in a worker."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), float(torch.rand(()))])


def test_worker_count_is_capped_at_the_usable_cores(monkeypatch) -> None:  # noqa: ANN001
    from zsk.core import trainer as core_trainer

    monkeypatch.setattr(core_trainer.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert core_trainer.worker_count(4) == 1 and core_trainer.worker_count(0) == 0
    monkeypatch.setattr(core_trainer.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert core_trainer.worker_count(4) == 4


def test_worker_loaders_persist_and_seed_each_sample_from_seed_epoch_and_position(monkeypatch) -> None:  # noqa: ANN001
    from zsk.core import trainer as core_trainer

    monkeypatch.setattr(core_trainer, "worker_count", lambda n: min(n, 1))
    ds = _RandomAugment()
    first = make_loader(ds, 4, epoch=0, seed=5, workers=1)
    epoch0 = [b.clone() for b in first]
    second = make_loader(ds, 4, epoch=1, seed=5, workers=1)
    assert second is first  # the same DataLoader (and worker processes) serves the next epoch
    epoch1 = [b.clone() for b in second]
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))
    # resuming mid-epoch loads exactly the batches an uninterrupted epoch loads, random draws included
    resumed = [b.clone() for b in make_loader(ds, 4, epoch=1, seed=5, workers=1, start_batch=1)]
    assert all(torch.equal(a, b) for a, b in zip(epoch1[1:], resumed, strict=True))
    # and the same epoch again gives the same draws (they depend on (seed, epoch, position) only)
    again = [b.clone() for b in make_loader(ds, 4, epoch=0, seed=5, workers=1)]
    assert all(torch.equal(a, b) for a, b in zip(epoch0, again, strict=True))


class _PairItems(torch.utils.data.Dataset):
    """Items addressed by (index, seed) pairs, as medseg's two-stream batch sampler yields them."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        return torch.tensor([index, seed], dtype=torch.float64)


def test_worker_loaders_pass_a_batch_samplers_pair_items_through(monkeypatch) -> None:  # noqa: ANN001
    """A batch sampler yielding (index, seed) pairs works with worker processes (it failed on int(pair))."""
    from zsk.core import trainer as core_trainer

    monkeypatch.setattr(core_trainer, "worker_count", lambda n: min(n, 1))
    sampler = [[(0, 11), (3, 12)], [(5, 13), (6, 14)]]
    batches = [b.clone() for b in make_loader(_PairItems(), 2, workers=1, batch_sampler=sampler)]
    assert [b.tolist() for b in batches] == [[[0, 11], [3, 12]], [[5, 13], [6, 14]]]


def test_worker_loaders_leave_the_main_rng_alone(monkeypatch) -> None:  # noqa: ANN001
    """Iterating a loader with worker processes draws nothing from the main process's torch RNG (its
    iterators seed from the loader's own generator; the samples' draws happen in the workers), so dropout in
    the training step sees the same stream whatever the number of workers."""
    from zsk.core import trainer as core_trainer

    monkeypatch.setattr(core_trainer, "worker_count", lambda n: min(n, 1))
    ds = _RandomAugment()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for epoch in range(2):
        list(make_loader(ds, 4, epoch=epoch, seed=5, workers=1))
    assert torch.equal(torch.get_rng_state(), state)


def test_callbacks_see_every_optimizer_step_and_evaluation(tmp_path) -> None:  # noqa: ANN001
    from zsk.core.trainer import Callback

    seen: dict[str, list] = {"steps": [], "evals": []}

    class Record(Callback):
        def on_step_end(self, trainer: Trainer, out: dict) -> None:
            seen["steps"].append((trainer.step, float(out["loss"].detach())))
            trainer.extra["pool"] = trainer.extra.get("pool", 0) + 1  # state that survives a resume

        def on_eval_end(self, trainer: Trainer, metrics: dict) -> None:
            seen["evals"].append((trainer.step, metrics["acc"]))

    ctx = start_run("toy", Config, None, ["train.steps=4", "train.eval_every=2", "train.grad_accum=2"],
                    out=tmp_path / "run", device="cpu")
    x = torch.randn(8, 3)
    trainer = Trainer(ctx, nn.Linear(3, 1), ctx.cfg.train, lambda m, b, s: {"loss": m(b).square().mean()},
                      lambda e, s: [x[:4], x[4:]][s:], 2, eval_fn=lambda m: {"acc": 0.5}, callbacks=[Record()])
    trainer.fit()
    assert [s for s, _ in seen["steps"]] == [1, 2, 3, 4]  # once per optimizer step, not per micro-batch
    assert [s for s, _ in seen["evals"]] == [2, 4]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["extra"]["pool"] == 4


# ------------------------------------------------------------------ a parameter group listed twice ("repeat")
def _loop_clip(params: list[nn.Parameter], max_norm: float) -> float:
    """torch 1.7's clip_grad_norm_ written out: one norm and one multiplication per list entry."""
    total = math.sqrt(sum(float(p.grad.double().square().sum()) for p in params))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for p in params:
            p.grad.mul_(coef)
    return total


def _loop_adam(params: list[nn.Parameter], state: dict, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """torch 1.7's for-loop Adam written out: every list entry is one full update of its parameter."""
    b1, b2 = betas
    for p in params:
        st = state.setdefault(id(p), {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
        st["step"] += 1
        g = p.grad
        st["m"].mul_(b1).add_(g, alpha=1 - b1)
        st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (st["v"].sqrt() / math.sqrt(1 - b2 ** st["step"])).add_(eps)
        with torch.no_grad():
            p.addcdiv_(st["m"], denom, value=-lr / (1 - b1 ** st["step"]))


def _two_layers() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


@pytest.mark.parametrize("clip", [None, 0.05], ids=["no-clip", "clip"])
def test_repeated_group_equals_a_for_loop_adam_over_a_list_with_duplicates(tmp_path: Path, clip) -> None:
    model, ref = _two_layers(), _two_layers()
    seen: list[list[torch.Tensor]] = []

    def step_fn(m: nn.Module, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        seen.append([t.clone() for t in batch])
        x, y = batch
        return {"loss": nn.functional.cross_entropy(m(x), y)}

    sets = ["train.optimizer=adam", "train.lr=0.05", "train.steps=3"] + ([f"train.clip_grad_norm={clip}"] if clip else [])
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "repeat": 2}]
    trainer = build(tmp_path, sets, step_fn=step_fn, model=model, param_groups=groups)
    trainer.fit()

    # the official list: first layer once, second layer twice (as VSRN_LSEH lists its captioner)
    listed = [*ref[0].parameters(), *ref[2].parameters(), *ref[2].parameters()]
    state: dict = {}
    norms = []
    for x, y in seen:
        for p in ref.parameters():
            p.grad = None
        nn.functional.cross_entropy(ref(x), y).backward()
        if clip:
            norms.append(_loop_clip(listed, clip))
        _loop_adam(listed, state, lr=0.05)
    assert len(seen) == 3
    for got, want in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=0, atol=1e-6)
    steps = [int(trainer.optimizer.state[p]["step"]) for p in model.parameters()]
    assert steps == [3, 3, 6, 6]  # Adam's step count advanced twice per iteration for the listed-twice layer
    if clip:
        assert min(norms) > clip  # the clip was active in every step
    # a list without the duplicates gives other weights: the test tells the two apart
    once = _two_layers()
    state = {}
    for x, y in seen:
        for p in once.parameters():
            p.grad = None
        nn.functional.cross_entropy(once(x), y).backward()
        if clip:
            _loop_clip(list(once.parameters()), clip)
        _loop_adam(list(once.parameters()), state, lr=0.05)
    assert (once[2].weight - model[2].weight).abs().max() > 1e-3


def test_repeated_clip_counts_the_group_twice_and_scales_it_twice() -> None:
    from zsk.core.trainer import clip_grad_norm_repeated_

    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0, 2.0])  # norms 5 and 3
    total = clip_grad_norm_repeated_([{"params": [a]}, {"params": [b], "repeat": 2}], 1.0)
    assert float(total) == pytest.approx(math.sqrt(25 + 2 * 9), rel=1e-6)  # b counted twice
    coef = 1.0 / (math.sqrt(43) + 1e-6)
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0]) * coef)
    torch.testing.assert_close(b.grad, torch.tensor([1.0, 2.0, 2.0]) * coef * coef)  # scaled once per entry
    a.grad, b.grad = torch.tensor([0.3, 0.4]), torch.tensor([0.1, 0.2, 0.2])  # below the threshold: untouched
    clip_grad_norm_repeated_([{"params": [a]}, {"params": [b], "repeat": 2}], 1.0)
    torch.testing.assert_close(b.grad, torch.tensor([0.1, 0.2, 0.2]))


def test_repeat_below_one_is_refused(tmp_path: Path) -> None:
    model = _two_layers()
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "repeat": 0}]
    with pytest.raises(ZskFailure, match="repeat"):
        build(tmp_path, ["train.steps=1"], model=model, param_groups=groups)
