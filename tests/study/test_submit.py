"""`study submit` (study/submit.py): its parsing, the job's storage URL, a clean stop near the time
limit, and the local executor end to end (the Slurm executor: tests/study/test_slurm.py)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from tmafbench.cli import app
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database
from tmafbench.store.repository import Repository
from tmafbench.study import submit


@pytest.mark.parametrize("text, minutes", [("10", 10), ("90:30", 91), ("1:00:00", 60), ("2-0", 2880),
                                           ("1-02:03", 1563), ("0-00:00:01", 1)])
def test_parse_time_takes_slurms_formats(text, minutes):
    assert submit.parse_time(text) == minutes


@pytest.mark.parametrize("text", ["soon", "1:2:3:4", "-5", "a-1"])
def test_parse_time_refuses_what_slurm_would(text):
    with pytest.raises(TmafbenchError, match="is not a Slurm time"):
        submit.parse_time(text)


def test_sbatch_options_become_submitit_parameters():
    assert submit.sbatch_options(["--account=abc", "#SBATCH --qos high", "--exclusive"]) == {
        "account": "abc", "qos": "high", "exclusive": True}
    with pytest.raises(TmafbenchError, match="long sbatch option"):
        submit.JobResources(sbatch=("-A abc",))


def test_the_job_takes_the_password_from_its_environment_only():
    masked = "postgresql://u:***@db/x"
    full = "postgresql://u:secret@db/x"
    assert submit.job_storage_url(masked, {"TMAFBENCH_STORAGE": full}) == full
    assert submit.job_storage_url("postgresql://u@db/x", {}) == "postgresql://u@db/x"  # pgpass / service
    with pytest.raises(submit.WorkerJobError, match="is not set in this job"):
        submit.job_storage_url(masked, {})
    with pytest.raises(submit.WorkerJobError, match="names another database"):
        submit.job_storage_url(masked, {"TMAFBENCH_STORAGE": "postgresql://u:secret@db/other"})


def test_checkpoint_from_the_signal_handler_stops_the_worker_at_once(monkeypatch):
    """submitit calls `checkpoint` from its SIGUSR2 handler while `__call__` waits on the worker; a
    Popen.wait there would miss the exit until STOP_WAIT_S (it did on Slurm: 45 s per stop)."""
    job = submit.WorkerJob("x", "sqlite:///x.db")
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))\n"
             "print('ready', flush=True)\n"
             "time.sleep(120)\n")
    monkeypatch.setattr(job, "command", lambda: [sys.executable, "-c", child])
    took: list[float] = []

    def on_usr2(*_: object) -> None:
        start = time.perf_counter()
        job.checkpoint()
        took.append(time.perf_counter() - start)
        raise SystemExit(0)

    previous = signal.signal(signal.SIGUSR2, on_usr2)
    timer = threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGUSR2))
    timer.start()
    try:
        with pytest.raises(SystemExit):
            job()
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR2, previous)
    assert took and took[0] < submit.STOP_WAIT_S / 3, took


@pytest.mark.slow
def test_submit_local_runs_the_study_and_keeps_the_password_off_disk(postgres_url, tmp_path, tiny_spec_file):
    from tmafbench.store.scratch import scratch_database

    with scratch_database(postgres_url) as url:
        secret = url.replace("postgres@", "postgres:pw-local-91b@", 1)  # trust auth ignores it
        runner = CliRunner()
        created = runner.invoke(app, ["study", "create", str(tiny_spec_file), "--storage", secret])
        assert created.exit_code == 0, created.output
        folder = tmp_path / "jobs"
        result = runner.invoke(app, ["study", "submit", "tiny", "--executor", "local", "--jobs", "2", "--storage",
                                     secret, "--folder", str(folder), "--wait"])
        assert result.exit_code == 0, result.output
        assert "submitted 2 worker job(s) for study 'tiny' to local" in result.output
        db = Database(url)
        try:
            repo = Repository(db)
            study = repo.require_study("tiny")
            assert repo.runs_by_status(study.id).get("completed") == 4 and repo.duplicate_completions(study.id) == 0
        finally:
            db.dispose()
        for path in folder.rglob("*"):
            if path.is_file():
                assert b"pw-local-91b" not in path.read_bytes(), path


def test_submit_refuses_a_study_that_does_not_exist(tmp_path, tiny_spec_file):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert CliRunner().invoke(app, ["study", "create", str(tiny_spec_file), "--storage", url]).exit_code == 0
    result = CliRunner().invoke(app, ["study", "submit", "nope", "--executor", "local", "--storage", url,
                                      "--folder", str(tmp_path / "jobs")])
    assert result.exit_code == 2 and "nope" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "jobs").exists()  # nothing submitted
