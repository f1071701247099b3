"""Deleting a study while its workers run it, and `--force` after dropping cells, with real parts: real
SQLite files (and PostgreSQL where a server is given), real worker processes and the real CLI.

- `study delete` from another shell stops `study run` and `study worker` at the workers' next
  heartbeat, result or claim: one line, exit status 4, no traceback, nothing written after.
- `--force` removes the removed cells' Optuna trials with their cells, in one transaction, and
  numbers the trials left as Optuna would; a resumed run then mirrors each cell once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import spawn
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from typer.testing import CliRunner

from tmafbench.cli import app
from tmafbench.core import RunStatus
from tmafbench.store.database import Database
from tmafbench.store.repository import Limits, Repository, StudyDeleted
from tmafbench.store.schema import Cell, Run, Study
from tmafbench.store.scratch import scratch_database
from tmafbench.study.design import parse_design
from tmafbench.study.lifecycle import delete, prepare
from tmafbench.study.loop import worker_loop
from tmafbench.study.worker import WorkerOptions
from tmafbench.training.dispatch import default_trial_fn

from tiny_specs import study_toml

# One cell of about 400 s alone (2000 epochs of about 0.2 s): a worker that stopped within the
# test's 90 s wait noticed the deletion at a heartbeat, not when its cell was done.
ENDLESS = study_toml("doomed", train_size=2048, depth=2, width=32, epochs=2000, seeds=1, activations=("relu",))
FAST = dict(heartbeat_s=0.3, grace_s=5.0, poll_s=0.1)
FAST_ARGS = ["--devices", "cpu", "--heartbeat", "0.3", "--grace", "5"]

cli = CliRunner()


def query(url: str, statement):
    db = Database(url)
    try:
        with db.session() as s:
            return s.scalar(statement)
    finally:
        db.dispose()


def training(url: str) -> bool:
    """A run is running and has its Optuna trial: its worker is training. False before `study run` made
    the database (and no connection here may make the file first)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return False
    try:
        return query(url, select(func.count(Run.id)).where(Run.status == RunStatus.RUNNING,
                                                           Run.optuna_trial_number.is_not(None))) > 0
    except (OperationalError, ProgrammingError):  # the tables are not made yet
        return False


def optuna_trials(url: str, name: str) -> list:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).trials
    finally:
        storage.engine.dispose()


def optuna_study_names(url: str) -> list[str]:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        return [s.study_name for s in storage.get_all_studies()]
    finally:
        storage.engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    with scratch_database(request.getfixturevalue("postgres_url")) as pg:
        yield pg


# --- study delete while the study runs -------------------------------------------------------------


def start(command: str, url: str, tmp_path: Path) -> subprocess.Popen:
    """`study run FILE` or `study worker NAME` (on a study created first) in its own process group."""
    path = tmp_path / "doomed.toml"
    path.write_text(ENDLESS)
    if command == "worker":
        prepare(parse_design(ENDLESS), url)
        args = ["study", "worker", "doomed"]
    else:
        args = ["study", "run", str(path)]
    return spawn([sys.executable, "-m", "tmafbench", *args, "--storage", url, *FAST_ARGS],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_training(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not training(url):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the worker never started training"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "worker"])
def test_delete_while_a_cell_trains_stops_the_workers_with_one_line(command, url, tmp_path):
    proc = start(command, url, tmp_path)
    wait_until_training(proc, url)
    deleted = cli.invoke(app, ["study", "delete", "doomed", "--yes", "--storage", url])
    assert deleted.exit_code == 0 and deleted.output == "deleted study 'doomed'\n", deleted.output
    out, err = proc.communicate(timeout=90)  # the cell alone would train for minutes
    assert proc.returncode == 4, err[-3000:]
    lines = err.strip().splitlines()
    says = "study 'doomed' was deleted while it ran (by `tmafbench study delete`); nothing more to run"
    assert lines[-1] == says and sum(says in line for line in lines) == 1, err
    for misleading in ("Traceback", "Error", "completed", "abandoned", "exited with an error", "resume", "0/0"):
        assert misleading not in out + err, err
    # nothing written after the delete: no run, cell or study of ours, no Optuna study
    assert query(url, select(func.count(Study.id))) == 0 and query(url, select(func.count(Run.id))) == 0
    assert optuna_study_names(url) == []


def test_delete_during_a_cell_stops_the_worker_at_its_result(url):
    """The cell finishes after the delete: its result finds no run to go to, and the worker stops (it does
    not log a cell "completed elsewhere", and trains no other cell)."""
    info = prepare(parse_design(study_toml("gone", seeds=2)), url)
    train = default_trial_fn()

    def trial(config, on_epoch=None):
        delete("gone", url)
        return train(config, on_epoch=on_epoch)

    stats = worker_loop("gone", url, trial_fn=trial, options=WorkerOptions(**FAST))
    assert stats.study_deleted and stats.stopped.startswith("study 'gone' was deleted while it ran")
    assert (stats.runs, stats.redundant, stats.abandoned) == (0, 0, 0)
    db = Database(url)
    with pytest.raises(StudyDeleted):  # the claim of a worker that comes after says so too
        Repository(db).claim_cells(info.id, Limits(), host="h", worker="w", device="cpu")
    db.dispose()


def test_a_worker_that_starts_after_the_delete_stops_with_the_same_line(url):
    prepare(parse_design(study_toml("gone", seeds=1)), url)
    delete("gone", url)
    stats = worker_loop("gone", url, options=WorkerOptions(**FAST))
    assert stats.study_deleted and stats.runs == 0 and "was deleted while it ran" in stats.stopped


def test_a_cell_removed_by_force_while_it_trains_is_dropped_and_the_worker_goes_on(url, caplog):
    """`--force` removes one cell while a worker trains it: the worker drops its result, says why, and
    trains the other cells (the study is not gone)."""
    text = study_toml("shrinks", seeds=2, activations=("relu",))
    prepare(parse_design(text), url)
    train = default_trial_fn()

    def trial(config, on_epoch=None):
        if config.seed == 0:
            prepare(parse_design(text, ["axes.seeds=[1, 2]"]), url, force=True)  # seed 0 removed
        return train(config, on_epoch=on_epoch)

    with caplog.at_level("WARNING", logger="tmafbench.worker"):
        stats = worker_loop("shrinks", url, trial_fn=trial, options=WorkerOptions(**FAST))
    assert not stats.study_deleted and not stats.stopped
    assert (stats.interrupted, stats.completed, stats.abandoned, stats.redundant) == (1, 2, 0, 0)
    assert "was removed from the study (`study run --force`) while it trained" in caplog.text
    assert "completed the cell" not in caplog.text and "taken for dead" not in caplog.text
    db = Database(url)
    with db.session() as s:
        assert sorted(s.scalars(select(Cell.seed))) == [1, 2]
        assert sorted(s.scalars(select(Run.status))) == ["completed", "completed"]
    db.dispose()


# --- --force after dropping cells --------------------------------------------------------------------


def check_mirror(url: str, name: str) -> list[str]:
    """The Optuna study mirrors the study's runs: every trial is of a cell still in the study, numbered
    0..n-1 in creation order, and each run's trial number leads to a trial of its own cell. Returns
    the cells of the COMPLETE trials."""
    from optuna.trial import TrialState

    trials = optuna_trials(url, name)
    assert [t.number for t in trials] == list(range(len(trials)))
    db = Database(url)
    with db.session() as s:
        cells = set(s.scalars(select(Cell.config_hash)))
        runs = s.execute(select(Cell.config_hash, Run.optuna_trial_number).join(Run)).all()
    db.dispose()
    assert {t.user_attrs["cell"] for t in trials} <= cells
    by_number = {t.number: t.user_attrs["cell"] for t in trials}
    assert all(by_number[number] == cell for cell, number in runs), (runs, by_number)
    return [t.user_attrs["cell"] for t in trials if t.state == TrialState.COMPLETE]


def test_force_removes_the_optuna_trials_of_the_cells_it_removes(url, tmp_path):
    """4 cells (relu, tanh x 2 seeds) run; relu is dropped and silu added with `study run --force`; the
    Optuna study then holds the trials of the tanh cells only (numbered 0 and 1 again), and the run
    that follows adds one trial per new cell: 4 COMPLETE trials for 4 cells, not 6 (or 8)."""
    before = study_toml("mirror", activations=("relu", "tanh"))
    prepare(parse_design(before), url)
    stats = worker_loop("mirror", url, options=WorkerOptions(**FAST))
    assert stats.completed == 4 and len(check_mirror(url, "mirror")) == 4
    tanh = set(query_hashes(url, "tanh"))

    path = tmp_path / "mirror.toml"
    path.write_text(study_toml("mirror", activations=("tanh", "silu")))
    created = cli.invoke(app, ["study", "create", str(path), "--force", "--storage", url])
    assert created.exit_code == 0 and "kept 2 cells, removed 2, added 2" in created.output, created.output
    assert sorted(check_mirror(url, "mirror")) == sorted(tanh)  # the relu trials are gone, the tanh ones renumbered

    stats = worker_loop("mirror", url, options=WorkerOptions(**FAST))
    assert stats.completed == 2
    completes = check_mirror(url, "mirror")
    assert sorted(completes) == sorted(query_hashes(url, "tanh") + query_hashes(url, "silu"))
    assert len(optuna_trials(url, "mirror")) == 4


def query_hashes(url: str, activation: str) -> list[str]:
    db = Database(url)
    try:
        with db.session() as s:
            return list(s.scalars(select(Cell.config_hash).where(Cell.activation == activation)))
    finally:
        db.dispose()


@pytest.mark.slow
def test_force_through_study_run_then_the_run_completes(tmp_path):
    """The same through `study run --force` and its worker process: 4 cells, an activation dropped."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    prepare(parse_design(study_toml("mirror", activations=("relu", "tanh"))), url)
    worker_loop("mirror", url, options=WorkerOptions(**FAST))
    path = tmp_path / "mirror.toml"
    path.write_text(study_toml("mirror", activations=("tanh", "silu")))
    result = cli.invoke(app, ["study", "run", str(path), "--force", "--storage", url, *FAST_ARGS])
    assert result.exit_code == 0, result.output
    assert "removed 2, added 2" in result.output and "4/4 cells done" in result.output
    assert sorted(check_mirror(url, "mirror")) == sorted(query_hashes(url, "tanh") + query_hashes(url, "silu"))
    assert len(optuna_trials(url, "mirror")) == 4
