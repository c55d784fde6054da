"""Recipes: YAML files with ``base:`` inheritance, ``--set`` overrides and strict dataclass validation."""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from zsk.core.errors import ZskError

C = TypeVar("C")

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as users write learning rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?$"
               r"|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with scientific-notation floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


TOP_LEVEL_KEYS = ("base", "task", "description", "data", "model", "train", "eval", "runtime")


@dataclasses.dataclass
class RuntimeConfig:
    """Keys every task accepts under ``runtime:``."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 0
    workers: int = 2  # DataLoader worker processes
    # autocast dtype; fp32 by default, as the official code of every built paper trains (DTC's k = 1500
    # transform layer loses its gradient direction in bf16); auto: bf16 (or fp16) on CUDA, fp32 on CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    deterministic: bool = False  # torch.use_deterministic_algorithms
    # experiment trackers next to metrics.jsonl (always on): jsonl, tensorboard, wandb, mlflow
    loggers: list[str] = dataclasses.field(default_factory=lambda: ["jsonl"])
    # segmentation-like tasks: image | ground truth | prediction panels sent to those trackers per evaluation
    preview_images: int = 4

    def __post_init__(self) -> None:
        from zsk.core.loggers import validate

        self.loggers = validate(list(self.loggers))
        if self.workers < 0:
            raise ZskError(f"runtime.workers must be >= 0, got {self.workers}")
        if self.seed < 0:
            raise ZskError(f"runtime.seed must be >= 0, got {self.seed}")
        if self.preview_images < 0:
            raise ZskError(f"runtime.preview_images must be >= 0 (0: none), got {self.preview_images}")


def recipes_dir() -> Path:
    """The shipped recipes: ``$ZSK_RECIPES``, else ``zsk/recipes`` (wheel) or the repository's ``recipes/``."""
    import os

    env = os.environ.get("ZSK_RECIPES")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]  # .../zsk
    installed = package / "recipes"  # a wheel / `pip install .` ships them as package data (zsk.recipes)
    if installed.is_dir():
        return installed
    return package.parent / "recipes"  # source checkout or editable install: the top-level folder


def resolve_recipe_path(path: str | Path) -> Path:
    """A recipe file path, or a shipped recipe name such as ``hsi/demo``."""
    p = Path(path)
    if p.is_file():
        return p
    # adapt/gtav2cs_2.2 names gtav2cs_2.2.yaml: append the suffix, do not replace the ".2"
    for candidate in (recipes_dir() / p, recipes_dir() / f"{p}.yaml", recipes_dir() / p.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    raise ZskError(f"recipe not found: {path} (give a YAML file path or a shipped name; `zsk recipes` lists them)")


def deep_merge(base: dict, override: dict) -> dict:
    """Merge ``override`` into a copy of ``base``: nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ZskError(f"cannot read recipe {path}: {e.strerror}") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        raise ZskError(f"recipe {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ZskError(f"recipe {path} must be a mapping of sections (data, model, train, eval, runtime)")
    return data


def _load_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ZskError(f"recipe {path} inherits from itself through base: {' -> '.join(map(str, chain))}")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ZskError(f"recipe {path}: base must be a path or a list of paths")
    merged: dict = {}
    for b in bases:
        base_path = (path.parent / b) if not Path(b).is_absolute() else Path(b)
        if not base_path.is_file():
            raise ZskError(f"recipe {path}: base file {b} not found (looked at {base_path})")
        merged = deep_merge(merged, _load_with_bases(base_path, chain + (path,)))
    return deep_merge(merged, data)


def apply_set(recipe: dict, assignment: str) -> dict:
    """Apply one ``key.sub=value`` override; the value is parsed as YAML (``2e-4``, ``[1,2]``, ``null``)."""
    if "=" not in assignment:
        raise ZskError(f"--set expects key=value, got {assignment!r} (e.g. --set train.lr=2e-4)")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key:
        raise ZskError(f"--set {assignment!r}: empty key")
    try:
        value = yaml_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ZskError(f"--set {key}: value {raw!r} is not valid YAML: {e}") from None
    out = copy.deepcopy(recipe)
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part, {}), dict):
            raise ZskError(f"--set {key}: {part} is not a section")
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_recipe(path: str | Path | None, sets: list[str] | None = None) -> dict:
    """Read a recipe with its ``base:`` chain deep-merged, then apply ``--set`` overrides."""
    recipe: dict = {}
    if path is not None:
        resolved = resolve_recipe_path(path)
        recipe = _load_with_bases(resolved)
        recipe.setdefault("task", resolved.resolve().parent.name)
        recipe["_source"] = str(resolved)
    for assignment in sets or []:
        recipe = apply_set(recipe, assignment)
    unknown = [k for k in recipe if k not in TOP_LEVEL_KEYS and k != "_source"]
    if unknown:
        raise ZskError(f"unknown recipe section {unknown[0]!r}; valid sections: {', '.join(TOP_LEVEL_KEYS)}")
    return recipe


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one value against a type annotation; raise ZskError naming ``key``."""
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ZskError as e:
                errors.append(str(e))
        raise ZskError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ZskError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ZskError(f"{key}: expected a section (mapping), got {value!r}")
        return parse_config(tp, value, prefix=key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ZskError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ZskError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ZskError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ZskError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ZskError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ZskError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ZskError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ZskError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    return value


def parse_config(config_cls: type[C], data: dict, prefix: str = "") -> C:
    """Build ``config_cls`` (a dataclass) from a dict, strictly: unknown keys and wrong types are
    ``ZskError`` naming the dotted key and the valid choices."""
    hints = typing.get_type_hints(config_cls)
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("task", "description", "_source") and not prefix:
            continue
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ZskError(f"unknown recipe key {dotted!r}; valid keys{' in ' + prefix if prefix else ''}: "
                           f"{', '.join(sorted(fields))}")
        kwargs[key] = _convert(value, hints[key], dotted)
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ZskError(f"recipe section {prefix or '(top)'}: {e}") from None


def config_to_dict(cfg: Any) -> dict:
    """A dataclass config as plain YAML/JSON-friendly data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def dump_recipe(recipe: dict, path: Path) -> None:
    """Write a resolved recipe as YAML (the run directory's ``recipe.yaml``)."""
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if k != "_source"}, sort_keys=False))


def recipe_description(path: Path) -> str:
    """The one-line ``description:`` of a recipe (after inheritance), for ``zsk recipes``."""
    try:
        return str(_load_with_bases(path).get("description", "")).strip().splitlines()[0]
    except (ZskError, IndexError):
        return ""
