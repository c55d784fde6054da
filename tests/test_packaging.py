"""Packaging: a built wheel carries the recipes (``zsk.recipes``) and the CLI finds them from a fresh venv."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE_SUFFIXES = (".yaml", ".md")


def _pyproject() -> dict:
    """The parsed pyproject.toml of the repository."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _repo_recipe_files() -> set[str]:
    """Every recipe file (and README) under the top-level ``recipes/``, relative to it."""
    root = REPO / "recipes"
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and p.suffix in RECIPE_SUFFIXES and "__pycache__" not in p.parts}


def test_pyproject_lists_every_zsk_package() -> None:
    """The explicit package list (needed for the ``zsk.recipes`` mapping) must not miss a new subpackage."""
    cfg = _pyproject()["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "zsk").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    listed = set(cfg["packages"])
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    assert listed - found == {"zsk.recipes"}
    assert cfg["package-dir"] == {"zsk.recipes": "recipes"}


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build a wheel from a copy of the sources, install it into a fresh venv; return (wheel, venv)."""
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None:
        pytest.skip("setuptools and pip are needed to build the wheel")
    tmp = tmp_path_factory.mktemp("packaging")
    # Build from a copy: an in-tree build writes build/ and *.egg-info into the working tree.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("zsk", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    dist = tmp / "dist"
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist),
                    str(src)], check=True, cwd=tmp, timeout=300)
    (wheel,) = dist.glob("zsk-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, cwd=tmp, timeout=300)
    # The heavy dependencies (torch, ...) come from this interpreter's site-packages through a .pth line:
    # a directory named in a .pth joins sys.path without its own .pth files being run, so the editable
    # install's finder for zsk there is not installed, and the fresh site-packages comes first anyway.
    site_dirs = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    fresh_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True).stdout.strip())
    (fresh_site / "_zsk_test_deps.pth").write_text("".join(f"{d}\n" for d in site_dirs), encoding="utf-8")
    return wheel, venv


def _env(venv: Path, cache: Path) -> dict[str, str]:
    """A clean environment for the fresh venv: its bin first, no repo on the path, a private cache."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "ZSK_RECIPES", "ZSK_DEVICE", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", ZSK_CACHE=str(cache), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    return env


def _zsk(venv: Path, tmp_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the fresh venv's ``zsk`` console script with cwd outside the repository."""
    return subprocess.run([str(venv / "bin" / "zsk"), *args], cwd=tmp_path, env=_env(venv, tmp_path / "cache"),
                          capture_output=True, text=True, timeout=timeout)


def _json_lines(stdout: str) -> list[dict]:
    """The JSON objects printed one per line."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_wheel_carries_every_recipe(wheel_venv: tuple[Path, Path]) -> None:
    """Every file under recipes/ (tasks, ``_base``, README) is in the wheel as ``zsk/recipes/...``."""
    wheel, _ = wheel_venv
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("zsk/recipes/") for n in names if n.startswith("zsk/recipes/")}
    assert shipped == _repo_recipe_files()
    assert "zsk/cli.py" in names and "zsk/tasks/medseg/cli.py" in names
    assert not [n for n in names if n.startswith("recipes/")], "recipes must not become a top-level package"


def test_wheel_imports_its_own_zsk(wheel_venv: tuple[Path, Path], tmp_path: Path) -> None:
    """The fresh venv imports the wheel's zsk, not the repository's, and finds recipes inside it."""
    _, venv = wheel_venv
    code = "import zsk, torch; from zsk.core.recipe import recipes_dir; print(zsk.__file__); print(recipes_dir())"
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path,
                          env=_env(venv, tmp_path / "cache"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    zsk_file, recipes = (Path(line) for line in proc.stdout.split())
    assert zsk_file.resolve().is_relative_to(venv.resolve())
    assert recipes.resolve() == zsk_file.resolve().parent / "recipes"


def test_wheel_lists_recipes(wheel_venv: tuple[Path, Path], tmp_path: Path) -> None:
    """``zsk recipes --json`` from the wheel lists every task's recipes and no ``_base`` fragments."""
    _, venv = wheel_venv
    proc = _zsk(venv, tmp_path, "recipes", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = _json_lines(proc.stdout)
    names = {r["recipe"] for r in rows}
    expected = {f.removesuffix(".yaml") for f in _repo_recipe_files()
                if f.endswith(".yaml") and f.count("/") == 1 and not f.startswith("_")}
    assert names == expected
    assert {"segment/voc", "medseg/demo", "hsi/demo"} <= names
    assert not [n for n in names if "_base" in n]
    assert all(Path(r["path"]).resolve().is_relative_to(venv.resolve()) for r in rows)


def test_wheel_resolves_shipped_recipes(wheel_venv: tuple[Path, Path], tmp_path: Path) -> None:
    """``--recipe TASK/NAME`` resolves from the wheel, including recipes that inherit from ``../_base``."""
    _, venv = wheel_venv
    proc = _zsk(venv, tmp_path, "medseg", "info", "--recipe", "medseg/la_16", "--json")
    assert proc.returncode == 0, proc.stderr
    assert _json_lines(proc.stdout)[-1]["task"] == "medseg"
    proc = _zsk(venv, tmp_path, "segment", "info", "--recipe", "segment/voc", "--json")
    assert proc.returncode == 0, proc.stderr
    assert _json_lines(proc.stdout)[-1]["dataset"] == "voc"


def test_wheel_runs_demo(wheel_venv: tuple[Path, Path], tmp_path: Path) -> None:
    """``zsk demo gzsl`` from the wheel: demo recipe plus ``@sample`` data written into ``$ZSK_CACHE``; the
    figure equals the source checkout's (the demo table of README.md)."""
    _, venv = wheel_venv
    proc = _zsk(venv, tmp_path, "demo", "gzsl", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = _json_lines(proc.stdout)
    assert row["task"] == "gzsl" and row["metric"] == "hit@1"
    assert row["value"] == pytest.approx(0.375)  # the source checkout's demo figure
    assert any((tmp_path / "cache").iterdir()), "the sample data should have been written into the cache"
