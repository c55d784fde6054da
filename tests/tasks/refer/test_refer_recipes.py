"""The paper recipes resolve to the official LGFormer training settings (scrips/train_scripts/train_*.sh:
2 processes x ``--batch_size 16`` per process = 32 per step, lr 5e-5, wd 1e-2, 40 epochs, --amp, 480 px)."""

from __future__ import annotations

import pytest

from zsk.core.recipe import load_recipe, parse_config
from zsk.core.trainer import grad_accum_for
from zsk.tasks.refer.config import Config

RECIPES = {"refcoco": ("refcoco", "unc"), "refcoco+": ("refcoco+", "unc"), "refcocog_umd": ("refcocog", "umd"),
           "refcocog_google": ("refcocog", "google")}


@pytest.mark.parametrize("name", list(RECIPES))
def test_paper_recipes_carry_the_official_schedule(name: str) -> None:
    cfg = parse_config(Config, load_recipe(f"refer/{name}"))
    assert (cfg.data.dataset, cfg.data.split_by) == RECIPES[name]
    # zsk's batch_size is per process; the official DataLoader takes --batch_size 16 in each of 2 processes
    assert (cfg.train.batch_size, cfg.train.effective_batch) == (16, 2 * 16)
    assert grad_accum_for(cfg.train) == 2  # one process: two micro-batches of 16 per optimizer step
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.epochs) == (5e-5, 0.01, 40)
    assert (cfg.train.schedule, cfg.train.poly_power, cfg.train.optimizer) == ("poly", 0.9, "adamw")
    assert (cfg.data.image_size, cfg.data.max_tokens, cfg.eval.threshold) == (480, 20, 0.5)
    assert cfg.runtime.precision == "fp16"
    assert Config().train.batch_size == cfg.train.batch_size
