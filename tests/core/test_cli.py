"""The command-line contract: exit codes 0/1/2, results on stdout and logs on stderr, ``--json`` output,
``--version``, ``python -m zsk``, and ``zsk doctor`` / ``zsk recipes`` offline."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import zsk

SCRIPTS = Path(__file__).parent / "scripts"
ZSK = [sys.executable, "-m", "zsk"]


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a command offline, with stdout and stderr captured apart."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture(scope="module")
def cli_app():  # noqa: ANN201 - the Typer app of scripts/cli_app.py
    sys.path.insert(0, str(SCRIPTS))
    try:
        import cli_app
    finally:
        sys.path.remove(str(SCRIPTS))
    return cli_app.app


@pytest.fixture()
def recipes_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A recipes folder with two tasks, a shared base and a description inherited through ``base:``."""
    root = tmp_path / "recipes"
    (root / "_base").mkdir(parents=True)
    (root / "hsi").mkdir()
    (root / "segment").mkdir()
    (root / "_base" / "common.yaml").write_text("description: inherited one-liner\nruntime: {seed: 1}\n")
    (root / "hsi" / "demo.yaml").write_text("description: |\n  tiny HSI demo on sample cubes\n  second line\n")
    (root / "hsi" / "pavia.yaml").write_text("base: ../_base/common.yaml\ntrain: {lr: 1e-3}\n")
    (root / "segment" / "voc.yaml").write_text("description: ZegCLIP on VOC (Table 1)\n")
    monkeypatch.setenv("ZSK_RECIPES", str(root))
    return root


def test_version() -> None:
    proc = run([str(Path(sys.executable).parent / "zsk"), "--version"])  # the console script
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"zsk {zsk.__version__}"


def test_python_m_zsk_help() -> None:
    proc = run(ZSK + ["--help"])
    assert proc.returncode == 0, proc.stderr
    for command in ("recipes", "cache", "doctor", "demo", "bench"):
        assert command in proc.stdout
    assert "Traceback" not in proc.stderr


def test_doctor_json_offline(tmp_path: Path) -> None:
    proc = run(ZSK + ["doctor", "--json"], env={"ZSK_CACHE": str(tmp_path / "c"), "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["zsk"] == zsk.__version__
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report["cache"] == str(tmp_path / "c")
    assert any(d.startswith("cpu") for d in report["devices"])
    assert isinstance(report["tasks"], list) and report["weights"]
    for w in report["weights"]:
        assert set(w) >= {"what", "id", "found", "where"}
    hf = [w for w in report["weights"] if w["id"] == "FacebookAI/roberta-large"]
    assert hf and hf[0]["found"] is False  # an empty HF_HOME has nothing


def test_recipes_json_offline(recipes_root: Path) -> None:
    from zsk.cli import app

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py
    res = CliRunner().invoke(app, ["recipes", "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [r["recipe"] for r in rows] == ["hsi/demo", "hsi/pavia", "segment/voc"]  # _base is not a task
    by_name = {r["recipe"]: r for r in rows}
    assert by_name["hsi/demo"]["description"] == "tiny HSI demo on sample cubes"  # the first line only
    assert by_name["hsi/pavia"]["description"] == "inherited one-liner"
    assert by_name["segment/voc"]["task"] == "segment"
    assert Path(by_name["segment/voc"]["path"]) == recipes_root / "segment" / "voc.yaml"


def test_recipes_for_one_task_and_table(recipes_root: Path) -> None:
    from zsk.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["recipes", "hsi", "--json"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["recipe"] for x in res.stdout.splitlines()] == ["hsi/demo", "hsi/pavia"]
    res = runner.invoke(app, ["recipes"])
    assert res.exit_code == 0 and "segment/voc" in res.stdout and "ZegCLIP on VOC" in res.stdout


def test_bad_usage_exits_2_with_one_error_line(recipes_root: Path) -> None:
    from zsk.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["recipes", "no-such-task"])
    assert res.exit_code == 2 and res.stdout == ""
    err = res.stderr.strip().splitlines()
    assert err[-1].startswith("error: ") and "no-such-task" in err[-1] and "hsi" in err[-1]
    assert "Traceback" not in res.stderr
    res = runner.invoke(app, ["bench", "--recipe", str(recipes_root / "missing.yaml")])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines()[-1].startswith("error: recipe not found")
    bad_section = recipes_root / "hsi" / "typo.yaml"
    bad_section.write_text("trian: {lr: 0.1}\n")
    res = runner.invoke(app, ["bench", "--recipe", str(bad_section)])
    assert res.exit_code == 2 and "trian" in res.stderr and "valid sections" in res.stderr
    demo = Path(__file__).resolve().parents[2] / "recipes" / "contrast" / "demo.yaml"
    res = runner.invoke(app, ["bench", "--recipe", str(demo), "--steps", "1", "--batch-size", "1"])
    assert res.exit_code == 2 and res.stderr.strip().splitlines()[-1] == (  # torch's BatchNorm error, named
        "error: --batch-size 1: contrast's model trains BatchNorm layers, which need at least 2 samples per batch; "
        "use --batch-size 2 or more")
    res = runner.invoke(app, ["recipes", "--no-such-option"])
    assert res.exit_code == 2  # click's own usage errors are exit 2 too
    res = runner.invoke(app, ["demo", "no-such-task"])
    assert res.exit_code == 2 and "no-such-task" in res.stderr


def test_long_error_is_one_line_without_traceback() -> None:
    proc = run([sys.executable, str(SCRIPTS / "cli_app.py"), "bad"], env={"COLUMNS": "80"})
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # not wrapped at the terminal width, even though it is > 80 characters
    assert lines[0].startswith("error: data.root: ") and lines[0].endswith("--set data.root=/path/to/VOC2012")


def test_unexpected_failure_exits_1_without_traceback() -> None:
    proc = run([sys.executable, str(SCRIPTS / "cli_app.py"), "crash"])
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unexpected RuntimeError: boom"), proc.stderr
    assert "--debug" in lines[0] and proc.stdout == ""


def test_exit_codes_in_process(cli_app, tmp_path: Path) -> None:  # noqa: ANN001
    runner = CliRunner()
    res = runner.invoke(cli_app, ["ok"])  # a table, not JSON, without --json
    assert res.exit_code == 0
    assert "metric" in res.stdout and "0.7500" in res.stdout
    assert "log line" in res.stderr and "log line" not in res.stdout
    res = runner.invoke(cli_app, ["ok", "--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout) == {"metric": "acc", "value": 0.75, "per_class": [0.5, 1.0]}
    assert "log line" in res.stderr and "log line" not in res.stdout
    res = runner.invoke(cli_app, ["ok", "--json", "--quiet"])
    assert res.exit_code == 0 and res.stderr == ""  # --quiet silences logs, never results
    assert json.loads(res.stdout)["value"] == 0.75
    res = runner.invoke(cli_app, ["bad"])
    assert res.exit_code == 2 and res.stdout == "" and res.stderr.startswith("error: data.root")
    res = runner.invoke(cli_app, ["fail"])
    assert res.exit_code == 1 and res.stderr.strip() == "error: training diverged: non-finite loss by step 3"
    res = runner.invoke(cli_app, ["crash"])
    assert res.exit_code == 1 and "unexpected RuntimeError" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(cli_app, ["crash", "--debug"])
    assert res.exit_code == 1 and "Traceback" in res.stderr and "boom in the middle" in res.stderr
    res = runner.invoke(cli_app, ["stop"])
    assert res.exit_code == 143 and "interrupted" in res.stderr
    res = runner.invoke(cli_app, ["ckpt", "--checkpoint", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "checkpoint not found" in res.stderr
    res = runner.invoke(cli_app, ["recipe", "--recipe", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "recipe not found" in res.stderr


def test_bad_input_after_start_run_leaves_no_empty_run_dir(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A run that stops on bad input right after ``start_run`` removes the folder it just created,
    but never a folder that existed before (a resumed run's directory)."""
    import typer

    from zsk.core.errors import ZskError
    from zsk.core.options import guarded
    from zsk.core.run import start_run

    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    try:
        from cli_app import config_cls
    finally:
        sys.path.pop(0)

    @guarded
    def train(out: Path) -> None:
        start_run("toy", config_cls(), None, None, out=out)
        raise ZskError("data.root: no such folder")

    fresh = tmp_path / "fresh"
    with pytest.raises(typer.Exit) as info:
        train(out=fresh)
    assert info.value.exit_code == 2
    assert not fresh.exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(typer.Exit):
        train(out=existing)
    assert existing.is_dir() and (existing / "recipe.yaml").is_file()


def test_a_closed_pipe_is_a_normal_end(tmp_path) -> None:  # noqa: ANN001
    """`zsk ... | head -1`: the reader closed the pipe; zsk ends with exit 0 and no traceback (`true` closes
    its end at once, before zsk has started, so zsk's first write meets a closed pipe)."""
    import shutil
    import subprocess

    zsk = shutil.which("zsk") or str(Path(sys.executable).parent / "zsk")
    for cmd in (f"'{zsk}' recipes --json | true", f"'{zsk}' recipes | true", f"'{zsk}' recipes --json | head -1"):
        proc = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (cmd, proc.stderr)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr and "error" not in proc.stderr


def test_result_tables_are_not_cut_in_a_pipe(tmp_path) -> None:  # noqa: ANN001
    """stdout that is not a terminal gets whole cells, however long (rich would cut them at 80 columns)."""
    from zsk.core.progress import emit_result

    long_value = "x" * 150 + "-end"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        emit_result({"path": long_value}, as_json=False, title="t")
    assert "-end" in buf.getvalue() and "…" not in buf.getvalue()


def test_usage_mistakes_are_one_error_line_and_exit_2() -> None:
    """What the option parser catches (unknown option, missing argument, a bad number) ends like every bad
    input: exit 2, one `error:` line naming the option and the help to read; help itself is exit 0."""
    import subprocess

    for args, fragment in ((["medseg", "eval", "--bogus"], "--bogus"), (["medseg", "predict"], "inputs"),
                           (["bench", "--recipe", "medseg/demo", "--steps", "x"], "--steps"),
                           (["bench", "--recipe", "medseg/demo", "--steps", "0"], "--steps"),
                           (["nosuchtask"], "nosuchtask")):
        proc = subprocess.run([sys.executable, "-m", "zsk", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (args, proc.stderr)
    for args in (["--help"], ["medseg"], ["medseg", "train", "--help"]):
        proc = subprocess.run([sys.executable, "-m", "zsk", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "Usage" in proc.stdout, (args, proc.stderr)


def test_a_bad_input_found_in_a_dataloader_worker_is_still_one_line(capsys, monkeypatch) -> None:  # noqa: ANN001
    import torch

    from zsk.core import trainer as core_trainer
    from zsk.core.errors import ZskError
    from zsk.core.options import report_error

    class Broken(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> torch.Tensor:
            raise ZskError(f"mask_{i}.png: label ids [21] exceed the 21 classes")

    monkeypatch.setattr(core_trainer, "worker_count", lambda n: 1)
    with pytest.raises(ZskError) as err:
        next(iter(core_trainer.make_loader(Broken(), 2, workers=1)))
    assert "\n" in str(err.value)  # torch put the worker's traceback into the message
    assert report_error(err.value) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: mask_0.png: label ids [21] exceed the 21 classes"]
