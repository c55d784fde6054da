"""Recipes: ``base:`` chains, ``--set`` overrides, strict validation, and the exit-2 error from the CLI."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig, config_to_dict, load_recipe, parse_config
from zsk.core.run import load_config
from zsk.core.trainer import TrainConfig

SCRIPTS = Path(__file__).parent / "scripts"


@dataclass
class DataConfig:
    root: str = "data"
    crop: list[int] = field(default_factory=lambda: [64, 64])
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    aug: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: Literal["tiny", "base"] = "tiny"
    depth: int = 2
    dropout: float = 0.1
    pretrained: str | None = "imagenet"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def chain(tmp_path: Path) -> Path:
    """grand (in _base/) <- mid (in _base/, relative base) <- top (in toy/, ../_base/ base)."""
    write(tmp_path / "_base" / "grand.yaml", """
data:
  root: /grand
  crop: [32, 32]
  aug: {flip: 0.5, scale: 1.0}
model: {name: tiny, depth: 1, dropout: 0.2}
train: {lr: 1e-4, milestones: [10, 20, 30], batch_size: 2}
""")
    write(tmp_path / "_base" / "mid.yaml", """
base: grand.yaml
data:
  crop: [48]
  aug: {scale: 2.0}
model: {depth: 3}
train: {milestones: [5]}
""")
    return write(tmp_path / "toy" / "top.yaml", """
base: ../_base/mid.yaml
description: a three-level chain
model: {name: base}
train: {batch_size: 16}
""")


def test_base_chain_merges_deeply(chain: Path) -> None:
    r = load_recipe(chain)
    # nested dicts merge through two levels of inheritance ...
    assert r["data"]["root"] == "/grand"
    assert r["data"]["aug"] == {"flip": 0.5, "scale": 2.0}
    assert r["model"] == {"name": "base", "depth": 3, "dropout": 0.2}
    # ... lists are replaced, not concatenated
    assert r["data"]["crop"] == [48]
    assert r["train"]["milestones"] == [5]
    assert r["train"] == {"lr": 1e-4, "milestones": [5], "batch_size": 16}
    assert isinstance(r["train"]["lr"], float)  # YAML 1.1 would read 1e-4 as a string
    assert "base" not in r
    assert r["task"] == "toy"  # the folder name of the recipe
    assert r["description"] == "a three-level chain"


def test_base_list_later_entries_win_and_file_wins_over_bases(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "model: {depth: 1, dropout: 0.3}\ntrain: {lr: 0.1}\n")
    write(tmp_path / "b.yaml", "model: {depth: 2}\n")
    top = write(tmp_path / "top.yaml", "base: [a.yaml, b.yaml]\ntrain: {lr: 0.5}\n")
    r = load_recipe(top)
    assert r["model"] == {"depth": 2, "dropout": 0.3}
    assert r["train"] == {"lr": 0.5}


def test_base_errors_name_the_file(tmp_path: Path) -> None:
    top = write(tmp_path / "top.yaml", "base: missing.yaml\n")
    with pytest.raises(ZskError, match="missing.yaml"):
        load_recipe(top)
    write(tmp_path / "x.yaml", "base: y.yaml\n")
    write(tmp_path / "y.yaml", "base: x.yaml\n")
    with pytest.raises(ZskError, match="inherits from itself"):
        load_recipe(tmp_path / "x.yaml")
    with pytest.raises(ZskError, match="not valid YAML"):
        load_recipe(write(tmp_path / "bad.yaml", "train: {lr: [\n"))
    with pytest.raises(ZskError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_set_overrides_nested_keys_with_yaml_types(chain: Path) -> None:
    r = load_recipe(chain, [
        "train.lr=2e-4",
        "train.batch_size=7",
        "model.dropout=0.25",
        "data.crop=[8, 16]",
        "runtime.deterministic=true",
        "model.pretrained=null",
        "data.aug.rotate=15",         # a new key inside an inherited nested dict
        "data.root=/data/VOC2012",
        "train.gamma=1",
    ])
    assert r["train"]["lr"] == 2e-4 and isinstance(r["train"]["lr"], float)
    assert r["train"]["batch_size"] == 7 and isinstance(r["train"]["batch_size"], int)
    assert r["model"]["dropout"] == 0.25
    assert r["data"]["crop"] == [8, 16]
    assert r["runtime"]["deterministic"] is True
    assert r["model"]["pretrained"] is None
    assert r["data"]["aug"] == {"flip": 0.5, "scale": 2.0, "rotate": 15}
    assert r["data"]["root"] == "/data/VOC2012"
    assert r["train"]["milestones"] == [5]  # untouched keys keep their merged values
    cfg = parse_config(Config, r)
    assert cfg.train.lr == 2e-4 and cfg.train.batch_size == 7
    assert cfg.train.gamma == 1.0 and isinstance(cfg.train.gamma, float)  # ints are accepted for floats
    assert cfg.data.crop == [8, 16]
    assert cfg.model.pretrained is None and cfg.model.name == "base"
    assert cfg.runtime.deterministic is True
    assert cfg.data.aug == {"flip": 0.5, "scale": 2.0, "rotate": 15.0}
    assert cfg.runtime.seed == 0  # defaults fill what the recipe leaves out
    assert config_to_dict(cfg)["data"]["mean"] == [0.5, 0.5, 0.5]


def test_set_without_a_recipe_and_bad_set_syntax() -> None:
    assert load_recipe(None, ["train.lr=1e-3", "model.depth=4"]) == {"train": {"lr": 1e-3}, "model": {"depth": 4}}
    with pytest.raises(ZskError, match="key=value"):
        load_recipe(None, ["train.lr"])
    with pytest.raises(ZskError, match="train.lr"):
        load_recipe(None, ["train.lr=1", "train.lr.x=2"])  # train.lr is a value, not a section


def test_unknown_key_names_the_key_and_the_valid_keys() -> None:
    with pytest.raises(ZskError) as e:
        parse_config(Config, {"train": {"lrr": 0.1}})
    msg = str(e.value)
    assert "train.lrr" in msg
    for valid in ("lr", "batch_size", "max_steps", "warmup_steps"):
        assert valid in msg
    with pytest.raises(ZskError) as e:
        parse_config(Config, {"model": {"depht": 3}})
    assert "model.depht" in str(e.value) and "depth" in str(e.value) and "dropout" in str(e.value)
    with pytest.raises(ZskError) as e:
        load_recipe(None, ["trian.lr=0.1"])
    assert "trian" in str(e.value) and "train" in str(e.value) and "runtime" in str(e.value)
    with pytest.raises(ZskError) as e:
        parse_config(Config, {"eval": {}})  # a known recipe section this Config does not have
    assert "eval" in str(e.value) and "model" in str(e.value)


@pytest.mark.parametrize(("override", "key"), [
    ("train.batch_size=big", "train.batch_size"),
    ("train.batch_size=2.5", "train.batch_size"),
    ("train.lr=fast", "train.lr"),
    ("train.lr=true", "train.lr"),
    ("runtime.deterministic=1", "runtime.deterministic"),
    ("data.crop=64", "data.crop"),
    ("data.crop=[64, x]", "data.crop[1]"),
    ("data.mean=[0.5, 0.5]", "data.mean"),
    ("model.name=huge", "model.name"),
    ("train.schedule=linear", "train.schedule"),
    ("model=3", "model"),
])
def test_wrong_type_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ZskError) as e:
        parse_config(Config, load_recipe(None, [override]))
    assert key in str(e.value)


def test_literal_error_lists_the_choices() -> None:
    with pytest.raises(ZskError) as e:
        parse_config(Config, {"train": {"schedule": "linear"}})
    for choice in ("constant", "poly", "cosine", "step"):
        assert choice in str(e.value)


def test_load_config_applies_seed_and_device_and_checks_the_task(chain: Path) -> None:
    cfg, recipe = load_config("toy", Config, chain, ["train.lr=0.3"], seed=11, device="cpu")
    assert cfg.runtime.seed == 11 and cfg.runtime.device == "cpu" and cfg.train.lr == 0.3
    assert recipe["task"] == "toy"
    with pytest.raises(ZskError, match="zsk toy"):
        load_config("other", Config, chain)


def test_cli_unknown_key_exits_2_with_one_error_line(chain: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPTS / "cli_app.py"), "recipe", "--recipe", str(chain),
                           "--set", "train.lrr=0.1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "train.lrr" in lines[0] and "batch_size" in lines[0] and "warmup_steps" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_wrong_type_exits_2_and_valid_recipe_exits_0(chain: Path) -> None:
    from typer.testing import CliRunner

    sys.path.insert(0, str(SCRIPTS))
    try:
        from cli_app import app
    finally:
        sys.path.remove(str(SCRIPTS))
    runner = CliRunner()
    res = runner.invoke(app, ["recipe", "--recipe", str(chain), "--set", "train.batch_size=big"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "train.batch_size" in lines[0]
    assert "Traceback" not in res.stderr and res.stdout == ""
    res = runner.invoke(app, ["recipe", "--recipe", str(chain), "--set", "model.name=huge"])
    assert res.exit_code == 2 and "model.name" in res.stderr and "'tiny'" in res.stderr
    res = runner.invoke(app, ["recipe", "--recipe", str(chain), "--set", "train.lr=2e-4"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "lr=0.0002 batch_size=16 crop=[48]"


def test_recipes_dir_honours_env_then_source_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zsk.core import recipe
    from zsk.core.recipe import recipes_dir, resolve_recipe_path

    monkeypatch.setenv("ZSK_RECIPES", str(tmp_path))
    assert recipes_dir() == tmp_path
    monkeypatch.delenv("ZSK_RECIPES")
    repo = Path(recipe.__file__).resolve().parents[2]
    assert recipes_dir() == repo / "recipes"  # source checkout / editable install: the top-level folder
    assert resolve_recipe_path("segment/voc") == repo / "recipes" / "segment" / "voc.yaml"
    assert resolve_recipe_path("medseg/demo.yaml").is_file()


def test_recipes_dir_prefers_the_recipes_shipped_in_the_package(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from zsk.core import recipe
    from zsk.core.recipe import recipes_dir, resolve_recipe_path

    monkeypatch.delenv("ZSK_RECIPES", raising=False)
    site = tmp_path / "site-packages"  # a wheel's layout: zsk/core/recipe.py next to zsk/recipes/<task>/
    (site / "zsk" / "core").mkdir(parents=True)
    (site / "zsk" / "recipes" / "_base").mkdir(parents=True)
    (site / "zsk" / "recipes" / "_base" / "b.yaml").write_text("train: {lr: 0.5}\n")
    (site / "zsk" / "recipes" / "demo").mkdir()
    (site / "zsk" / "recipes" / "demo" / "x.yaml").write_text("base: ../_base/b.yaml\ntrain: {batch_size: 3}\n")
    (site / "recipes").mkdir()  # the source-checkout fallback (beside the package) must not win
    monkeypatch.setattr(recipe, "__file__", str(site / "zsk" / "core" / "recipe.py"))
    assert recipes_dir() == site / "zsk" / "recipes"
    path = resolve_recipe_path("demo/x")
    assert path == site / "zsk" / "recipes" / "demo" / "x.yaml"
    assert load_recipe(path)["train"] == {"lr": 0.5, "batch_size": 3}


def test_a_shipped_recipe_name_with_a_dot_resolves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """adapt/gtav2cs_2.2 is gtav2cs_2.2.yaml (not gtav2cs_2.yaml, which with_suffix would give)."""
    from zsk.core.recipe import resolve_recipe_path

    (tmp_path / "adapt").mkdir()
    (tmp_path / "adapt" / "gtav2cs_2.yaml").write_text("task: adapt\n")
    (tmp_path / "adapt" / "gtav2cs_2.2.yaml").write_text("task: adapt\n")
    monkeypatch.setenv("ZSK_RECIPES", str(tmp_path))
    assert resolve_recipe_path("adapt/gtav2cs_2.2") == tmp_path / "adapt" / "gtav2cs_2.2.yaml"
    assert resolve_recipe_path("adapt/gtav2cs_2") == tmp_path / "adapt" / "gtav2cs_2.yaml"
