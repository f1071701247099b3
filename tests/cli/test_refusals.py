"""Inputs refused up front with one line, before anything is written (issue 25's list), and the
line an unexpected exception (a bug) gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tmafbench.cli import app
from tmafbench.study.local import cpu_cores

from tiny_specs import study_toml

TINY = study_toml("cli", activations=("relu",))
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line(result, says: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.output


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize("option, value, says", [
    ("--grace", "nan", "--grace must be a number of seconds from 0 to"),
    ("--grace", "1e15", "--grace must be a number of seconds from 0 to"),
    ("--db-patience", "nan", "--db-patience must be a number of seconds"),
    ("--heartbeat", "inf", "--heartbeat must be a number of seconds"),
])
@pytest.mark.parametrize("command", ["run", "worker"])
def test_durations_that_are_not_finite_or_huge_are_refused(spec_file, tmp_path, command, option, value, says):
    db = tmp_path / "r.db"
    target = str(spec_file) if command == "run" else "cli"
    one_line(invoke("study", command, target, option, value, "--storage", f"sqlite:///{db}"), says)
    assert not db.exists()


@pytest.mark.slow  # the forced run trains the study with more workers than cores (about a minute on 2 cores)
def test_workers_above_the_cpu_cores_are_refused_unless_forced(spec_file, tmp_path):
    db = tmp_path / "r.db"
    too_many = str(cpu_cores() + 1)
    one_line(invoke("study", "run", str(spec_file), "--workers", too_many, "--devices", "cpu", "--storage", f"sqlite:///{db}"),
             f"--workers {too_many} is more than the {cpu_cores()} CPU core(s)")
    assert not db.exists()
    result = invoke("study", "run", str(spec_file), "--workers", too_many, "--devices", "cpu", "--oversubscribe",
                    "--storage", f"sqlite:///{db}")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [["study", "list"], ["study", "status", "cli"], ["results", "query", "select 1"]])
def test_an_empty_storage_is_refused_not_taken_for_the_default(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    one_line(invoke(*command, "--storage", ""), "--storage is empty")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("old, new, says", [
    ("epochs = 1,", "epochs = 1, lr = inf,", "lr must be a finite number, got inf"),
    ("n = 1,", 'n = "abc",', "n must be an integer, got str 'abc'"),
    ("train_size = 64", "train_size = 0", "train_size must be a positive integer, got 0"),
    ('name = "relu"', 'name = "prelu"\nparams = { init = "abc" }', "init must be a finite number, got str 'abc'"),
])
def test_study_cells_refuses_what_run_would_with_file_and_line(tmp_path, old, new, says):
    """A non-finite lr, parameters against their annotations, a size of 0: caught by `study cells`."""
    text = study_toml("typed", activations=("relu",))
    assert old in text
    path = tmp_path / "typed.toml"
    path.write_text(text.replace(old, new, 1))
    result = invoke("study", "cells", str(path))
    one_line(result, says)
    assert f"{path}:" in result.output


def test_a_study_name_longer_than_every_backend_stores_is_refused(spec_file, tmp_path):
    one_line(invoke("study", "cells", str(spec_file), "--set", f"name={'a' * 250}"), "at most 100 characters")
    db = tmp_path / "r.db"
    one_line(invoke("study", "run", str(spec_file), "--new-name", "b" * 150, "--storage", f"sqlite:///{db}"),
             "at most 100 characters")
    assert not db.exists()


def test_out_of_the_wrong_kind_is_refused(tmp_path):
    a_file, a_folder = tmp_path / "file.txt", tmp_path / "folder"
    a_file.write_text("x")
    a_folder.mkdir()
    url = f"sqlite:///{tmp_path / 'none.db'}"
    one_line(invoke("report", "build", "s", "--out", str(a_file), "--storage", url), f"--out {a_file} is a file")
    one_line(invoke("results", "ship", "s", "--out", str(a_file), "--storage", url), f"--out {a_file} is a file")
    one_line(invoke("results", "export", "--study", "s", "--out", str(a_folder), "--storage", url),
             f"--out {a_folder} is a folder")
    one_line(invoke("report", "build", "s", "--out", str(a_file / "inside"), "--storage", url), "is a file, not a folder")
    assert a_file.read_text() == "x" and list(a_folder.iterdir()) == []


def test_an_unexpected_error_is_called_a_bug_with_a_debug_hint(monkeypatch):
    """Only tmafbench's own errors are a user's; a KeyError or ValueError from inside is a bug."""
    import tmafbench.cli.lists as lists

    def broken(*_args, **_kwargs):
        raise KeyError("internal")

    monkeypatch.setattr("tmafbench.study.files.packaged_studies", broken)
    result = invoke("studies")
    one_line(result, "unexpected KeyError: 'internal' (a bug in tmafbench; rerun with `tmafbench --debug", code=1)
    assert "Traceback" not in result.output and lists is not None
    debug = runner.invoke(app, ["--debug", "studies"])
    assert isinstance(debug.exception, KeyError)  # --debug lets the traceback through


def test_every_read_command_takes_a_shipped_db_gz(spec_file, tmp_path):
    import gzip
    import shutil

    from tmafbench.study.design import load_design
    from tmafbench.study.lifecycle import prepare

    db = tmp_path / "r.db"
    prepare(load_design(spec_file), f"sqlite:///{db}")
    packed = tmp_path / "r.db.gz"
    with open(db, "rb") as plain, gzip.open(packed, "wb") as out:
        shutil.copyfileobj(plain, out)
    db.unlink()
    url = f"sqlite:///{packed}"
    for command in (["study", "list"], ["study", "status", "cli"], ["study", "show", "cli"],
                    ["results", "query", "select count(*) as n from tmaf_cell"], ["results", "export", "--study", "cli"]):
        result = invoke(*command, "--storage", url)
        assert result.exit_code == 0 and "error" not in result.output, (command, result.output)
    assert "total=2" in invoke("study", "status", "cli", "--storage", url).output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.toml", "r.db.gz"]  # read as it is, nothing written beside it
