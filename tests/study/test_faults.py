"""The faults of a long study, with real parts: a PostgreSQL server behind a TCP proxy that the tests
cut (tests/tcp_proxy.py), worker processes that come back late, SQLite on a full disk, over a
file-size limit, or read-only.

After each fault the study must end clean: every cell completed, no cell completed twice, no run
left running and no Optuna trial left RUNNING.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from processes import run, spawn
from sqlalchemy import select

from tmafbench.store.database import Database
from tmafbench.store.repository import Repository
from tmafbench.store.schema import Run
from tmafbench.store.scratch import scratch_database
from tmafbench.study.design import parse_design
from tmafbench.study.lifecycle import StudyInfo, prepare
from tmafbench.core import Ending
from tmafbench.study.local import run_local
from tmafbench.study.worker import WorkerOptions

from tcp_proxy import TcpProxy
from run_records import runs_by_cell
from tiny_specs import study_toml

pytestmark = [pytest.mark.slow]

# 16 cells of about half a second each.
BLINK = study_toml("blink", train_size=256, epochs=25, batch_size=32, seeds=8)
# Two cells of about 30 s alone (150 epochs of about 0.2 s, measured 2026-12-03 on an idle 2-core machine;
# twice that with both workers training): a worker checks at each epoch whether its run is
# still its own. With `SHORT`, one cell of about 1 s.
SLOW = study_toml("slow", train_size=2048, depth=2, width=32, epochs=150, batch_size=32, seeds=2, activations=("relu",))
SHORT = ["axes.seeds=1", "defaults.training.epochs=20"]


def completed(url: str, info: StudyInfo, phase: int = -1) -> int:
    """Completed cells of a phase of the study (the last: a grid study's cells)."""
    db = Database(url)
    try:
        return Repository(db).counts(info.phases[phase].study_id, info.limits).completed
    finally:
        db.dispose()


def training(url: str, attempt: int = 1) -> bool:
    """True once a run of this attempt is running and has its Optuna trial: its worker is training."""
    db = Database(url)
    with db.session() as s:
        found = s.scalar(select(Run.id).where(Run.attempt == attempt, Run.status == "running",
                                              Run.optuna_trial_number.is_not(None)))
    db.dispose()
    return found is not None


def assert_clean(url: str, info: StudyInfo) -> None:
    """Every cell of every phase completed once, nothing left running, in our tables and in Optuna's."""
    import optuna

    db = Database(url)
    repo = Repository(db)
    for phase in info.phases:
        counts = repo.counts(phase.study_id, info.limits)
        assert counts.completed == counts.total > 0 and counts.failed == counts.crashed == 0, (phase, counts)
        assert repo.duplicate_completions(phase.study_id) == 0 and repo.running_runs(phase.study_id) == []
    db.dispose()
    storage = optuna.storages.RDBStorage(url)
    running = {s.study_name: [t.number for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
                              if t.state == optuna.trial.TrialState.RUNNING] for s in storage.get_all_studies()}
    trials = optuna.load_study(study_name=info.name, storage=storage).trials
    storage.engine.dispose()
    assert all(numbers == [] for numbers in running.values()), running
    if not info.tuned:  # one COMPLETE trial per cell
        completes = [t.user_attrs["cell"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert sorted(completes) == sorted(runs_by_cell(url))


def worker_process(url: str, name: str, options: str, env: dict | None = None, stderr=subprocess.PIPE) -> subprocess.Popen:
    """`worker_loop` in its own process; it prints its stats as JSON when it ends (stderr: a pipe or an open file)."""
    code = ("import dataclasses, json, sys; from tmafbench.study.loop import worker_loop\n"
            "from tmafbench.study.worker import WorkerOptions\n"
            f"stats = worker_loop({name!r}, sys.argv[1], options=WorkerOptions({options}))\n"
            "print(json.dumps({k: v for k, v in dataclasses.asdict(stats).items() if not isinstance(v, list)}))\n")
    return spawn([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (err or "")[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def wait_for(condition, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def cli(*args: str, env: dict | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "tmafbench", *args], timeout=timeout, env=env, **kwargs)


# --- PostgreSQL behind a proxy that the tests cut ---------------------------------------------------


@pytest.fixture
def proxied(postgres_url):
    """(direct URL, URL through a proxy, the proxy) for a fresh PostgreSQL database."""
    with scratch_database(postgres_url) as url:
        proxy, through = TcpProxy.to(url)
        try:
            yield url, through, proxy
        finally:
            proxy.close()


@pytest.mark.postgres
def test_a_blink_mid_study_is_ridden_out(proxied):
    """Two workers and the parent's progress display lose the server for 3 s: the study completes."""
    url, through, proxy = proxied
    info = prepare(parse_design(BLINK), through)
    outage = proxy.cut_for(3.0, when=lambda: completed(url, info) >= 2)
    seen = []
    outcome = run_local(info, through, ["cpu", "cpu"], WorkerOptions(heartbeat_s=0.5, grace_s=20, poll_s=0.2),
                        progress=lambda phases, eta: seen.append(phases), poll_s=0.2)
    outage.join()
    assert proxy.cuts == 1 and outcome.ending == Ending.DONE and outcome.stopped == ""
    assert sum(w.reconnects for w in outcome.workers) > 0 and max(w.db_wait_s for w in outcome.workers) > 1.0
    assert all(r == [(1, "completed")] for r in runs_by_cell(url).values())  # no attempt lost to the blink
    assert_clean(url, info)
    assert seen[-1][-1][1].completed == 16  # the progress display came back too


TUNED = study_toml("tuned", train_size=256, epochs=10, seeds=None, activations=("relu", "tmaf"), tail="""\
[tune]
trials = 5
seeds = 1
eval_seeds = 2
sampler_seed = 7
[tune.space]
"training.lr" = { low = 1e-3, high = 3e-2, log = true }
""")


@pytest.mark.postgres
def test_a_blink_while_tuning_is_ridden_out(proxied):
    """The same blink in a tuned study: the workers ask, report to and tell Optuna through it."""
    url, through, proxy = proxied
    info = prepare(parse_design(TUNED), through)
    outage = proxy.cut_for(3.0, when=lambda: completed(url, info, phase=0) >= 2)  # tuning slots
    outcome = run_local(info, through, ["cpu", "cpu"], WorkerOptions(heartbeat_s=0.5, grace_s=20, poll_s=0.2))
    outage.join()
    assert proxy.cuts == 1 and outcome.ending == Ending.DONE
    assert sum(w.reconnects for w in outcome.workers) > 0
    assert_clean(url, _load(url, "tuned"))


@pytest.mark.postgres
def test_an_outage_past_the_patience_limit_stops_with_one_line_then_resumes(proxied, tmp_path):
    """The server stays away longer than --db-patience: `study run` exits 4 with one line that says
    what to run; once the server is back, the same command finishes the study."""
    url, through, proxy = proxied
    spec = tmp_path / "blink.toml"
    spec.write_text(BLINK)
    command = ["study", "run", str(spec), "--storage", through, "--workers", "2", "--devices", "cpu",
               "--db-patience", "3", "--heartbeat", "0.5", "--grace", "2"]
    proc = spawn([sys.executable, "-m", "tmafbench", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    info = None

    def started() -> bool:
        nonlocal info
        db = Database(url)
        ready = db.has_tables() and Repository(db).get_study("blink") is not None
        db.dispose()
        if not ready:
            return False
        info = _load(url, "blink")
        return completed(url, info) >= 2

    wait_for(started, what="two completed cells")
    proxy.cut()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    stops = [line for line in err.splitlines() if line.startswith("stopped early")]
    assert len(stops) == 1 and "Traceback" not in err, err
    assert f"127.0.0.1:{proxy.port}" in stops[0] and "did not answer for 3 s" in stops[0]
    assert stops[0].endswith("run the same command again to resume")
    assert completed(url, info) < 16
    proxy.restore()
    again = cli(*command)
    assert again.returncode == 0, (again.stderr, run_errors(url))
    assert_clean(url, info)


def run_errors(url: str) -> list[tuple]:
    """(attempt, status, error) of every run: what to look at when a test fails."""
    db = Database(url)
    with db.session() as s:
        rows = [tuple(r) for r in s.execute(select(Run.cell_id, Run.attempt, Run.status, Run.error).order_by(Run.id))]
    db.dispose()
    return rows


def _load(url: str, name: str) -> StudyInfo:
    from tmafbench.study.lifecycle import load

    return load(name, url)


@pytest.mark.postgres
def test_a_result_finished_during_an_outage_is_written_when_the_server_is_back(proxied, tmp_path):
    url, through, proxy = proxied
    info = prepare(parse_design(SLOW, SHORT), through)
    log = tmp_path / "worker.err"
    with log.open("w") as err_file:
        worker = worker_process(through, "slow", "heartbeat_s=0.3, grace_s=30, poll_s=0.2", stderr=err_file)
        wait_for(lambda: training(url), what="the run to start")
        proxy.cut()
        # The outage lasts until the worker, done training, has met it writing its result (the heartbeat
        # does not log), however long training takes on a busy machine; then 2 s more.
        wait_for(lambda: "database unreachable" in log.read_text(), timeout=600, what="the worker to meet the outage")
        time.sleep(2.0)
        proxy.restore()
        stats, _ = finish(worker)
    err = log.read_text()
    assert stats["completed"] == 1 and stats["reconnects"] > 0 and stats["db_wait_s"] > 0
    assert list(runs_by_cell(url).values()) == [[(1, "completed")]]
    assert "database unreachable" in err and "database back after" in err
    assert_clean(url, info)


@pytest.mark.postgres
def test_a_late_worker_abandons_its_taken_cell_and_goes_on(proxied):
    """A worker loses the server for longer than --grace; its run is swept as lost and its cell given
    to another worker. Back again, it learns this at its next heartbeat, stops training the cell at
    the end of that epoch and takes the next cell."""
    url, through, proxy = proxied
    info = prepare(parse_design(SLOW), through)
    options = "heartbeat_s=0.3, grace_s=1.5, poll_s=0.2"
    late = worker_process(through, "slow", options)
    wait_for(lambda: training(url), what="the late worker's run")
    proxy.cut()
    time.sleep(2.5)  # past the grace period: the run is stale
    other = worker_process(url, "slow", options)  # sweeps the stale run and takes its cell as attempt 2
    wait_for(lambda: training(url, attempt=2), what="the cell to be taken over")
    proxy.restore()
    late_stats, late_err = finish(late)
    other_stats, _ = finish(other)
    assert late_stats["abandoned"] == 1 and late_stats["completed"] == 1  # the other cell
    assert other_stats["stale_marked"] == 1 and other_stats["completed"] == 1
    assert "abandoned" in late_err
    assert sorted(runs_by_cell(url).values()) == [[(1, "completed")], [(1, "lost"), (2, "completed")]]
    assert_clean(url, info)


@pytest.mark.postgres
def test_a_late_packed_worker_abandons_each_taken_cell_of_its_pack(proxied):
    """The same with both cells trained as one packed model: each cell's run was taken, each stops."""
    url, through, proxy = proxied
    info = prepare(parse_design(SLOW), through)
    options = "heartbeat_s=0.3, grace_s=1.5, poll_s=0.2"
    late = worker_process(through, "slow", options + ", pack=2")
    wait_for(lambda: training(url), what="the late worker's pack")
    assert sorted(runs_by_cell(url).values()) == [[(1, "running")]] * 2
    proxy.cut()
    time.sleep(2.5)
    other = worker_process(url, "slow", options)
    wait_for(lambda: training(url, attempt=2), what="a cell to be taken over")
    proxy.restore()
    late_stats, late_err = finish(late)
    other_stats, _ = finish(other)
    assert late_stats["abandoned"] == 2 and other_stats["stale_marked"] == 2
    assert late_stats["completed"] + other_stats["completed"] == 2  # the second cell: whoever came first
    assert sorted(runs_by_cell(url).values()) == [[(1, "lost"), (2, "completed")]] * 2
    assert_clean(url, info)


@pytest.mark.postgres
def test_a_late_result_for_a_cell_completed_elsewhere_is_recorded_as_redundant(proxied):
    url, through, proxy = proxied
    info = prepare(parse_design(SLOW, SHORT), through)
    options = "heartbeat_s=0.3, grace_s=1.5, poll_s=0.2"
    late = worker_process(through, "slow", options)
    wait_for(lambda: training(url), what="the late worker's run")
    proxy.cut()  # it finishes training meanwhile and waits to write its result
    time.sleep(2.5)
    other = worker_process(url, "slow", options)
    other_stats, _ = finish(other)  # took the cell over and completed it
    proxy.restore()
    late_stats, late_err = finish(late)
    assert other_stats["completed"] == 1 and late_stats["redundant"] == 1 and late_stats["completed"] == 0
    assert "redundant" in late_err
    assert list(runs_by_cell(url).values()) == [[(1, "interrupted"), (2, "completed")]]
    db = Database(url)
    with db.session() as s:
        assert s.scalar(select(Run.error).where(Run.attempt == 1)).startswith("redundant")
    db.dispose()
    assert_clean(url, info)


# --- SQLite on a full disk, over a file-size limit, read-only ------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str = "64m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (needs root with CAP_SYS_ADMIN; skips otherwise)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip() or 'mount failed'}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk but `leave` bytes with one file (created first, while there is room); returns it
    (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    with open(filler, "r+b") as out:
        out.truncate(max(0, filler.stat().st_size - leave))
    return filler


def integrity(url: str) -> str:
    import sqlite3

    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def one_stop_line(err: str, says: str) -> str:
    stops = [line for line in err.splitlines() if line.startswith("stopped early")]
    assert len(stops) == 1 and "Traceback" not in err and says in stops[0], err
    return stops[0]


def test_sqlite_on_a_disk_that_fills_up_mid_study_stops_with_one_line_then_resumes(tmp_path):
    """Deterministic: the disk is filled before the study runs, leaving room for a few results (about
    300 KB each) but not for all 16, so the study always meets a full disk part way, wherever the
    machine's load puts its workers."""
    with small_disk(tmp_path / "disk") as disk:
        url = f"sqlite:///{disk / 'results.db'}"
        info = prepare(parse_design(BLINK), url)
        filler = fill(disk, leave=1024 * 1024)
        command = ["study", "worker", "blink", "--storage", url, "--workers", "2", "--devices", "cpu",
                   "--heartbeat", "0.5", "--grace", "2"]
        stopped = cli(*command)
        assert stopped.returncode == 4, stopped.stderr
        one_stop_line(stopped.stderr, "the disk is full (database or disk is full); what it holds is intact: free some space")
        assert integrity(url) == "ok" and completed(url, info) < 16
        filler.unlink()
        again = cli(*command)
        assert again.returncode == 0, again.stderr
        assert_clean(url, _load(url, "blink"))


def test_sqlite_over_a_file_size_limit_stops_with_one_line_then_resumes(tmp_path):
    """The same fault where no filesystem can be mounted: a worker under a file-size limit (RLIMIT_FSIZE)."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    info = prepare(parse_design(BLINK), url)
    limit = (tmp_path / "results.db").stat().st_size + 1024 * 1024  # room for a few results (about 300 KB each)

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = ["study", "worker", "blink", "--storage", url, "--devices", "cpu", "--heartbeat", "0.5", "--grace", "2"]
    stopped = cli(*command, preexec_fn=limited)
    assert stopped.returncode == 4, stopped.stderr
    one_stop_line(stopped.stderr, "the disk refused a write")
    assert integrity(url) == "ok" and 0 < completed(url, info) < 16
    again = cli(*command)
    assert again.returncode == 0, again.stderr
    assert_clean(url, info)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make one file read-only: a read-only bind mount as root (which ignores file modes), else chmod."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    bind = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot make a file read-only as root here: {bind.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_database_file_is_one_line_and_the_study_resumes_once_writable(tmp_path, tiny_spec_file):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    info = prepare(parse_design(tiny_spec_file.read_text()), url)
    command = ["study", "run", str(tiny_spec_file), "--storage", url, "--devices", "cpu"]
    with read_only(tmp_path / "results.db"):
        refused = cli(*command)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.splitlines()[-1] == (
            f"error: cannot write to the results database {url}: the file or its folder is read-only (attempt to "
            "write a readonly database); what it holds is intact: make both writable")
        assert "Traceback" not in refused.stderr
        status = cli("study", "status", "tiny", "--storage", url)  # reading still works
        assert status.returncode == 0 and "pending=4" in status.stdout
    assert integrity(url) == "ok"
    again = cli(*command)
    assert again.returncode == 0, again.stderr
    assert_clean(url, info)
