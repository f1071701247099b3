"""`study create`, and creators that start at the same moment (store/setup_lock.py) on both backends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiny_specs import study_toml
from tmafbench.cli import app
from tmafbench.store.database import Database
from tmafbench.store.repository import Repository
from tmafbench.store.scratch import scratch_database


def test_create_makes_the_study_and_runs_nothing(tmp_path, tiny_spec_file):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    runner = CliRunner()
    first = runner.invoke(app, ["study", "create", str(tiny_spec_file), "--storage", url])
    assert first.exit_code == 0, first.output
    assert f"created study 'tiny' with 4 cells in {url}" in first.output
    assert f"tmafbench study worker tiny --storage '{url}'" in first.output
    again = runner.invoke(app, ["study", "create", str(tiny_spec_file), "--storage", url])
    assert again.exit_code == 0, again.output
    assert "study 'tiny' is already in" in again.output and "(0/4 cells final); nothing to create" in again.output
    db = Database(url)
    repo = Repository(db)
    study = repo.require_study("tiny")
    assert len(repo.cell_hashes(study.id)) == 4 and repo.runs_by_status(study.id) == {}
    db.dispose()


def test_create_hides_the_password_it_was_given(postgres_url, tiny_spec_file):
    with scratch_database(postgres_url) as url:
        secret = url.replace("postgres@", "postgres:hush-7c1@", 1)  # trust auth ignores it
        result = CliRunner().invoke(app, ["study", "create", str(tiny_spec_file), "--storage", secret])
        assert result.exit_code == 0, result.output
        assert "hush-7c1" not in result.output and "postgres:***@" in result.output
        assert "the password is not shown" in result.output


def test_create_a_tuned_study_makes_its_tuning_slots(tmp_path):
    spec = tmp_path / "tuned.toml"
    spec.write_text(study_toml("tuned", seeds=None, tail=(
        '[tune]\ntrials = 2\nseeds = 1\neval_seeds = 1\n'
        '[tune.space]\n"training.lr" = { low = 1e-3, high = 1e-2, log = true }\n')))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    result = CliRunner().invoke(app, ["study", "create", str(spec), "--storage", url])
    assert result.exit_code == 0, result.output
    assert "created tuned study 'tuned': 2 groups x 2 trials = 4 tuning slots" in result.output
    status = CliRunner().invoke(app, ["study", "status", "tuned", "--storage", url, "--json"])
    assert '"tuning": {' in status.output and '"pending": 4' in status.output


def test_create_refuses_a_changed_design(tmp_path, tiny_spec_file):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    CliRunner().invoke(app, ["study", "create", str(tiny_spec_file), "--storage", url])
    changed = CliRunner().invoke(app, ["study", "create", str(tiny_spec_file), "--storage", url,
                                       "--set", "axes.seeds=3"])
    assert changed.exit_code == 2 and "already exists with other cells" in changed.output


def _start_together(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Start every command at once (each waits on the same file to appear, so none gets a head start
    from Python's start-up), then wait for all."""
    go = cwd / "go"
    wrapper = ("import os, sys, time\n"
               f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
               "sys.argv = ['tmafbench'] + sys.argv[1:]\n"
               "from tmafbench.cli import main\n"
               "main()\n")
    procs = [subprocess.Popen([sys.executable, "-c", wrapper, *cmd], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
             for cmd in commands]
    time.sleep(1.0)  # every process reaches its wait loop (the wrapper imports nothing heavy before it)
    go.touch()
    results = []
    for cmd, proc in zip(commands, procs):
        out, _ = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, ""))
    return results


def _four_creators(url: str, spec: Path, cwd: Path) -> None:
    """Two `study create` and two `study run` of one file on a new database, started together: all exit 0,
    one creates the study, and every cell completes exactly once."""
    create = ["study", "create", str(spec), "--storage", url]
    run = ["study", "run", str(spec), "--storage", url, "--workers", "1", "--threads", "1"]
    results = _start_together([create, create, run, run], cwd)
    for r in results:
        assert r.returncode == 0, f"{' '.join(r.args)} exited {r.returncode}:\n{r.stdout}"
    created = [r for r in results if "created study 'tiny'" in r.stdout]
    assert len(created) == 1, [r.stdout for r in results]
    db = Database(url)
    try:
        repo = Repository(db)
        study = repo.require_study("tiny")
        assert repo.duplicate_completions(study.id) == 0
        assert repo.runs_by_status(study.id).get("completed") == 4
    finally:
        db.dispose()


@pytest.mark.slow
def test_four_creators_at_once_on_sqlite(tmp_path, tiny_spec_file):
    _four_creators(f"sqlite:///{tmp_path / 'new.db'}", tiny_spec_file, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_four_creators_at_once_on_postgres(postgres_url, tmp_path, tiny_spec_file):
    with scratch_database(postgres_url) as url:
        _four_creators(url, tiny_spec_file, tmp_path)
