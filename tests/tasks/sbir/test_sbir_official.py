"""`zsk sbir convert-official`: the four state dicts ACNet's train.py saves become one zsk checkpoint that
`eval` runs; wrong files are refused with one error line."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from zsk.cli import app
from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.sbir.config import Config
from zsk.tasks.sbir.data import write_sample
from zsk.tasks.sbir.train import build_model

SETS = ["model.generator_blocks=1", "model.emb_dim=16"]


def _save_official(model, prefix: Path) -> None:
    """The files of ACNet's train.py: extractor/generator/discriminator state dicts and the loss's {'W': (d, C)}."""
    torch.save(model.extractor.state_dict(), f"{prefix}_extractor.pth")
    torch.save(model.generator.state_dict(), f"{prefix}_generator.pth")
    torch.save(model.discriminator.state_dict(), f"{prefix}_discriminator.pth")
    torch.save({"W": model.proxies.detach().T.clone()}, f"{prefix}_proxies.pth")


def test_convert_official_then_eval(tmp_path: Path, one_error_line) -> None:
    root = write_sample(tmp_path / "data", sketches=2, photos=3, size=16)
    sets = [f"data.root={root}", *SETS]
    torch.manual_seed(0)
    model = build_model(parse_config(Config, load_recipe("sbir/demo", sets)), 6)
    prefix = tmp_path / "result" / "sketchy_resnet10t_16"
    prefix.parent.mkdir()
    _save_official(model, prefix)
    args = ["sbir", "convert-official", "--prefix", str(prefix), "--recipe", "sbir/demo",
            *[a for s in sets for a in ("--set", s)], "--json", "--quiet"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "official.pt")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["seen_classes"] == 6
    from zsk.tasks.sbir.cli import TASK

    loaded = TASK.load(tmp_path / "official.pt", device="cpu")
    assert loaded.extra["seen_classes"] == ["circle", "cross", "hbar", "square", "triangle", "vbar"]
    mine = model.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in loaded.model.state_dict().items())
    r = CliRunner().invoke(app, ["sbir", "eval", "-c", str(tmp_path / "official.pt"), "--json", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    # a wrong embedding size and a missing part are refused, naming the file or key
    r = CliRunner().invoke(app, [*args[:-2], "--set", "model.emb_dim=32", "--out", str(tmp_path / "x.pt")])
    one_error_line(r, ("proxies.pth", "model.emb_dim=16"))
    Path(f"{prefix}_generator.pth").unlink()
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "y.pt")])
    one_error_line(r, ("generator.pth",))
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()
