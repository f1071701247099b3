"""`tmafbench study ...` through typer's CliRunner on real SQLite files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tmafbench.cli import app

from tiny_specs import study_toml

TINY = study_toml("cli", activations=("relu",))

runner = CliRunner()


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(TINY)
    return path


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def test_cells_and_dry_run_write_nothing(spec_file, tmp_path):
    db = tmp_path / "r.db"
    for cmd in (["study", "cells", str(spec_file)], ["study", "run", str(spec_file), "--dry-run",
                                                      "--storage", f"sqlite:///{db}"]):
        result = invoke(*cmd, "--set", "axes.seeds=3")
        assert result.exit_code == 0, result.output
        assert "3 cells" in result.output and "relu" in result.output
    assert not db.exists()


def test_bad_spec_exits_2_and_leaves_no_database(spec_file, tmp_path):
    db = tmp_path / "r.db"
    spec_file.write_text(TINY.replace('name = "relu"', 'name = "relu"\ncolour = "red"'))
    result = invoke("study", "run", str(spec_file), "--storage", f"sqlite:///{db}")
    assert result.exit_code == 2
    assert "error:" in result.output and "axes.activations[0].colour: unknown key" in result.output
    assert f"{spec_file}:12:" in result.output  # the line of `colour`
    assert not db.exists()
    result = invoke("study", "run", str(spec_file), "--set", "nokey", "--storage", f"sqlite:///{db}")
    assert result.exit_code == 2 and "--set expects key.path=value" in result.output


def test_devices_this_machine_lacks_are_refused_before_anything_is_written(spec_file, tmp_path):
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    db = tmp_path / "r.db"
    for command in (["study", "run", str(spec_file)], ["study", "worker", "cli"]):
        result = invoke(*command, "--devices", f"cuda:{count},cuda:{count + 1}", "--storage", f"sqlite:///{db}")
        assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
        assert result.output.startswith("error: --devices: device 'cuda:") and "requested but" in result.output
        assert not db.exists()


@pytest.mark.slow
def test_exit_status_says_whether_every_cell_is_done(spec_file, tmp_path):
    """0 when every cell is done; 3 when the study is finished but a cell failed for good."""
    from tmafbench.store.database import Database
    from tmafbench.store.repository import Limits, Repository
    from tmafbench.study.design import parse_design
    from tmafbench.study.lifecycle import prepare

    url = f"sqlite:///{tmp_path / 'r.db'}"
    info = prepare(parse_design(spec_file.read_text()), url)
    db = Database(url)
    repo = Repository(db)
    for _ in range(2):  # one cell failed max_retries times, as a cell whose training raises would
        claim = repo.claim_cell(info.id, Limits(), host="h", worker="w", device="cpu")
        repo.mark_failed(claim.run_id, "RuntimeError: boom")
    db.dispose()
    result = invoke("study", "run", str(spec_file), "--devices", "cpu", "--storage", url)
    assert result.exit_code == 3, result.output
    assert "1/2 cells done (0 diverged), 1 failed" in result.output and "failed for good" in result.output
    assert invoke("study", "worker", "cli", "--devices", "cpu", "--storage", url).exit_code == 3
    done = invoke("study", "run", str(spec_file), "--new-name", "cli-2", "--devices", "cpu", "--storage", url)
    assert done.exit_code == 0, done.output


@pytest.mark.slow
def test_run_list_status_show_delete(spec_file, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    monkeypatch.setenv("TMAFBENCH_STORAGE", url)  # every command reads it
    result = invoke("study", "run", str(spec_file), "--workers", "1", "--devices", "cpu")
    assert result.exit_code == 0, result.output
    assert "2/2 cells done" in result.output
    # not a terminal: no transient progress (no carriage return, no cursor code); the bar once, at the end
    assert "\r" not in result.output and "\x1b[" not in result.output
    assert sum(line.startswith("cells ") for line in result.output.splitlines()) == 1, result.output
    status = json.loads(invoke("study", "status", "cli", "--json").output)
    assert status == {"study": "cli", "total": 2, "done": 2, "diverged": 0, "running": 0, "failed": 0,
                      "crashed": 0, "pending": 0, "finished": True}
    assert "cli" in invoke("study", "list").output
    shown = invoke("study", "show", "cli").output
    assert "relu depth=1 width=8" in shown and "rel_l2" in shown
    # a changed design is refused with the two ways out
    result = invoke("study", "run", str(spec_file), "--set", "axes.seeds=3", "--devices", "cpu")
    assert result.exit_code == 2 and "--new-name" in result.output and "--force" in result.output
    # delete asks first
    assert invoke("study", "delete", "cli", input="n\n").exit_code == 1
    result = invoke("study", "delete", "cli", "--yes")
    assert result.exit_code == 0, result.output
    result = invoke("study", "status", "cli")
    assert result.exit_code == 2 and "no study 'cli'" in result.output
    import optuna

    assert "cli" not in [s.study_name for s in optuna.get_all_study_summaries(url)]


@pytest.mark.parametrize("command", ["run", "worker"])
def test_grace_shorter_than_two_heartbeats_is_refused_before_writing(spec_file, tmp_path, command):
    db = tmp_path / "r.db"
    target = str(spec_file) if command == "run" else "cli"
    result = invoke("study", command, target, "--grace", "5", "--heartbeat", "10", "--storage", f"sqlite:///{db}")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: --grace (5 s) must be at least twice --heartbeat (10 s)" in result.output
    assert not db.exists()


def test_list_never_cuts_a_long_name(tmp_path, monkeypatch):
    from tmafbench.study.design import parse_design
    from tmafbench.study.lifecycle import prepare

    url = f"sqlite:///{tmp_path / 'r.db'}"
    long_name = "paper-table-3-3-cifar10-cpu-reduced-with-a-much-longer-name"
    prepare(parse_design(TINY).renamed(long_name), url)
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal
    result = invoke("study", "list", "--storage", url)
    assert result.exit_code == 0, result.output
    assert long_name in result.output and "pending" in result.output


def test_unknown_study_and_missing_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'none.db'}"
    result = invoke("study", "status", "nope", "--storage", url)
    assert result.exit_code == 2 and "no results database at" in result.output
    result = invoke("study", "worker", "nope", "--storage", url)
    assert result.exit_code == 2 and "no results database at" in result.output
    assert not (tmp_path / "none.db").exists()
    empty = tmp_path / "empty.db"  # a file without our tables
    empty.touch()
    result = invoke("study", "status", "nope", "--storage", f"sqlite:///{empty}")
    assert result.exit_code == 2 and "no tmafbench results" in result.output


MISSING_DATA = """
name = "needs-mnist"
[defaults]
task = "mnist"
task_params = {{ data_dir = "{folder}", download = false, train_size = 64, test_size = 64 }}
model_params = {{ depth = 1, width = 8 }}
training = {{ epochs = 1 }}
[axes]
seeds = 1
[[axes.activations]]
name = "relu"
"""


def test_missing_data_is_one_line_and_writes_nothing(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    spec = tmp_path / "mnist.toml"
    spec.write_text(MISSING_DATA.format(folder=empty))
    db = tmp_path / "results.db"
    result = invoke("study", "run", str(spec), "--storage", f"sqlite:///{db}")
    assert result.exit_code == 2
    assert result.output.startswith("error: mnist data not found; looked in:") and str(empty) in result.output
    assert not db.exists()


@pytest.mark.parametrize("command", [("study", "list"), ("study", "status", "x"), ("results", "export", "--study", "x")])
def test_read_commands_do_not_create_a_database_at_a_mistyped_path(tmp_path, command):
    missing = tmp_path / "typo" / "results.db"
    result = invoke(*command, "--storage", f"sqlite:///{missing}")
    assert result.exit_code == 2
    assert result.output.startswith("error: no results database at") and not missing.parent.exists()


def test_a_malformed_storage_url_is_one_line_without_the_url(spec_file):
    result = invoke("study", "run", str(spec_file), "--storage", "not a url:secret@")
    assert result.exit_code == 2
    assert result.output.startswith("error: not a database URL") and "secret" not in result.output


EVERY_STORAGE_COMMAND = [("study", "status", "x"), ("study", "list"), ("study", "show", "x"), ("study", "worker", "x"),
                         ("study", "delete", "x", "--yes"), ("report", "build", "x"), ("results", "export", "--study", "x"),
                         ("results", "query", "select 1")]


@pytest.mark.parametrize("command", [*EVERY_STORAGE_COMMAND, ("study", "run", "SPEC")], ids=" ".join)
@pytest.mark.parametrize("url, says", [
    ("notadb://x", "unknown database backend 'notadb'"),
    ("postgresql://u:pw@127.0.0.1:1/x", "postgresql://u:***@127.0.0.1:1/x: connection failed"),
], ids=["unknown-backend", "unreachable-server"])
def test_every_storage_error_is_one_line(command, url, says, spec_file):
    args = [str(spec_file) if a == "SPEC" else a for a in command]
    result = invoke(*args, "--storage", url)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and says in result.output, result.output
    assert "Traceback" not in result.output and "pw@" not in result.output and len(result.output.splitlines()) == 1


TWO_TASKS = """
name = "offline"
[defaults]
model_params = {{ depth = 1, width = 8 }}
training = {{ epochs = 1, batch_size = 16 }}
[[axes.tasks]]
name = "mnist"
params = {{ data_dir = "{folder}", download = false, train_size = 32, test_size = 16 }}
[[axes.tasks]]
name = "sine-sum"
params = {{ n = 1, train_size = 32, test_size = 16 }}
[axes]
seeds = 1
[[axes.activations]]
name = "relu"
"""


@pytest.mark.slow
def test_resume_checks_data_only_for_cells_that_will_run(tmp_path, monkeypatch):
    """The MNIST cell ran while the data was there; without it, the sine-sum cell still runs, and a
    finished study resumes without data, without workers and without importing torch."""
    import subprocess
    import sys

    from fake_data import write_idx_set
    from tmafbench.study.design import parse_design
    from tmafbench.study.lifecycle import prepare
    from tmafbench.study.worker import WorkerOptions
    from tmafbench.study.loop import worker_loop

    data = tmp_path / "data"
    write_idx_set(data / "MNIST" / "raw")
    monkeypatch.setenv("TMAFBENCH_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "offline.toml"
    spec.write_text(TWO_TASKS.format(folder=data))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    prepare(parse_design(spec.read_text()), url)
    assert worker_loop("offline", url, options=WorkerOptions(max_runs=1)).completed == 1  # the MNIST cell
    import shutil

    shutil.rmtree(data)
    result = invoke("study", "run", str(spec), "--storage", url, "--devices", "cpu")
    assert result.exit_code == 0, result.output
    assert "resuming study 'offline'" in result.output and "2/2 cells done" in result.output
    code = ("import sys; from tmafbench.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, ['study', 'run', {str(spec)!r}, '--storage', {url!r}]); "
            "print(r.exit_code, 'torch' in sys.modules); print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("0 False"), out  # finished: nothing validated that needs torch, no worker started
    assert "is finished: every cell is final, nothing to run" in out


@pytest.mark.slow
def test_loss_reduction_from_the_study_file_and_set_is_stored_and_reported(spec_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    spec_file.write_text(TINY.replace("training = {", "training = { loss_reduction = \"sum\", evaluate_train = true,"))
    result = invoke("study", "run", str(spec_file), "--workers", "1", "--devices", "cpu", "--storage", url)
    assert result.exit_code == 0, result.output
    result = invoke("study", "run", str(spec_file), "--new-name", "cli-mean", "--set",
                    "defaults.training.loss_reduction=mean", "--workers", "1", "--devices", "cpu", "--storage", url)
    assert result.exit_code == 0, result.output
    stored = invoke("results", "query", "select s.name, c.config from tmaf_cell c join tmaf_study s on s.id = c.study_id",
                    "--format", "json", "--storage", url)
    reductions = {(row["name"], json.loads(row["config"])["training"]["loss_reduction"]) for row in json.loads(stored.output)}
    assert reductions == {("cli", "sum"), ("cli-mean", "mean")}
    finals = invoke("results", "export", "--study", "cli", "--storage", url).output
    assert "train_rel_l2" in finals.splitlines()[0]
    out = tmp_path / "report"
    result = invoke("report", "build", "cli", "--storage", url, "--out", str(out), "--format", "md")
    assert result.exit_code == 0, result.output
    text = (out / "index.md").read_text()
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| task |") and "loss reduction" in line)
    columns = [c.strip() for c in lines[header].split("|")]
    assert [c.strip() for c in lines[header + 2].split("|")][columns.index("loss reduction")] == "sum"
    assert "Final train_rel_l2 per group" in text  # the training-set error beside the test error
