"""Scheduler benchmarks (`tmafbench bench scheduler`): figures, never timed assertions.

- throughput: N local workers x M near-instant real trials (sine-sum, 16 samples, 1 epoch):
  "database is locked" errors seen, duplicate completed cells (both must be 0), median scheduler
  overhead per trial (a worker's loop time minus its training time);
- kill: two workers, one SIGKILLed mid-trial: seconds until its cell was retried, final counts;
- speed-up: one worker against two on a CPU study of small trials.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from tmafbench.store.database import Database, is_sqlite, normalize_url, redact
from tmafbench.store.repository import Repository, as_utc
from tmafbench.store.schema import Run
from tmafbench.study.scheduler import WorkerOptions, prepare_study, run_local
from tmafbench.study.spec import parse_spec

INSTANT = """
name = "{name}"
[defaults]
task = "sine-sum"
task_params = {{ n = 1, train_size = {train_size}, test_size = 16 }}
model_params = {{ depth = 1, width = 4 }}
training = {{ epochs = {epochs}, batch_size = 16, keep_predictions = false, keep_activation_params = false }}
[axes]
seeds = {seeds}
[[axes.activations]]
name = "relu"
"""


@dataclass
class ThroughputResult:
    backend: str
    workers: int
    trials: int
    completed: int
    locked_errors: int
    duplicates: int
    wall_s: float
    median_overhead_ms: float
    median_train_ms: float


def instant_spec(name: str, trials: int, train_size: int = 16, epochs: int = 1):
    return parse_spec(INSTANT.format(name=name, seeds=trials, train_size=train_size, epochs=epochs))


class scratch_database:
    """A fresh database per run: a temporary SQLite file, or a new PostgreSQL database on that server."""

    def __init__(self, base_url: str | None):
        self.base_url = normalize_url(base_url) if base_url else None
        self.url = ""

    def __enter__(self) -> str:
        if self.base_url is None or is_sqlite(self.base_url):
            self._tmp = tempfile.TemporaryDirectory(prefix="tmafbench-bench-")
            self.url = f"sqlite:///{Path(self._tmp.name) / 'bench.db'}"
            return self.url
        self._name = f"tmafbench_bench_{uuid.uuid4().hex[:8]}"
        self._admin = create_engine(self.base_url, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self._name}"'))
        self.url = make_url(self.base_url).set(database=self._name).render_as_string(hide_password=False)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        if self.base_url is None or is_sqlite(self.base_url):
            self._tmp.cleanup()
            return
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)'))
        self._admin.dispose()


def throughput(base_url: str | None, workers: int = 4, trials: int = 200) -> ThroughputResult:
    """N workers run `trials` near-instant real trials; count lock errors and duplicates."""
    with scratch_database(base_url) as url:
        info = prepare_study(instant_spec("bench-throughput", trials), url)
        outcome = run_local(info, url, ["cpu"] * workers, WorkerOptions(poll_s=0.2))
        db = Database(url)
        duplicates = Repository(db).duplicate_completions(info.id)
        db.dispose()
    overheads = [o for w in outcome.workers for o in w.overhead_s]
    trains = [t for w in outcome.workers for t in w.train_s]
    return ThroughputResult(
        backend=make_url(url).get_backend_name(), workers=workers, trials=trials,
        completed=outcome.counts.completed, locked_errors=sum(w.locked_errors for w in outcome.workers),
        duplicates=duplicates, wall_s=outcome.wall_s,
        median_overhead_ms=1000 * statistics.median(overheads) if overheads else float("nan"),
        median_train_ms=1000 * statistics.median(trains) if trials else float("nan"))


WORKER = (
    "import sys; from tmafbench.study.scheduler import worker_loop, WorkerOptions; "
    "worker_loop(sys.argv[1], sys.argv[2], options=WorkerOptions(heartbeat_s=float(sys.argv[3]), "
    "grace_s=float(sys.argv[4]), poll_s=0.2))"
)


def kill_recovery(base_url: str | None, cells: int = 4, heartbeat_s: float = 1.0, grace_s: float = 5.0) -> dict[str, Any]:
    """Two worker processes; SIGKILL one mid-trial; time until its cell runs again; final counts."""
    with scratch_database(base_url) as url:
        info = prepare_study(instant_spec("bench-kill", cells, train_size=1024, epochs=6), url)
        args = [sys.executable, "-c", WORKER, info.name, url, str(heartbeat_s), str(grace_s)]
        procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        db = Database(url)
        try:
            victim, cell_id = _wait_for_running(db, {p.pid for p in procs})
            os.kill(victim, signal.SIGKILL)
            killed_at = time.time()
            for p in procs:
                p.wait(timeout=600)
            with db.session() as s:
                retry = s.scalar(select(Run.started_at).where(Run.cell_id == cell_id, Run.attempt == 2))
                statuses = s.execute(text("select status, count(*) from tmaf_run group by status")).all()
            counts = Repository(db).counts(info.id, info.max_retries)
            duplicates = Repository(db).duplicate_completions(info.id)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            db.dispose()
    retried_after = (as_utc(retry).timestamp() - killed_at) if retry is not None else None
    return {"heartbeat_s": heartbeat_s, "grace_s": grace_s, "retried_after_s": retried_after,
            "cells": counts.total, "completed": counts.completed, "failed": counts.failed,
            "runs_by_status": dict(statuses), "duplicates": duplicates}


def _wait_for_running(db: Database, pids: set[int], timeout_s: float = 300) -> tuple[int, int]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with db.session() as s:
            row = s.execute(select(Run.worker, Run.cell_id).where(Run.status == "running")).first()
        if row is not None:
            pid = int(row[0].split()[-1])
            if pid in pids:
                time.sleep(0.3)  # mid-trial, not at the claim
                return pid, row[1]
        time.sleep(0.1)
    raise TimeoutError("no worker started a trial")


def speedup(base_url: str | None, cells: int = 8) -> dict[str, Any]:
    """Wall time of one worker against two on a CPU study of small (~1 s) trials."""
    walls = {}
    for workers in (1, 2):
        with scratch_database(base_url) as url:
            info = prepare_study(instant_spec(f"bench-speedup-{workers}", cells, train_size=512, epochs=4), url)
            outcome = run_local(info, url, ["cpu"] * workers, WorkerOptions(poll_s=0.2))
            busy = [sum(w.train_s) + sum(w.overhead_s) for w in outcome.workers]
            walls[workers] = (outcome.wall_s, max(busy) if busy else float("nan"))
    return {"cells": cells, "wall_1_s": walls[1][0], "wall_2_s": walls[2][0],
            "speedup_wall": walls[1][0] / walls[2][0],
            "speedup_excluding_startup": walls[1][1] / walls[2][1], "cores": os.cpu_count()}


def run_benchmarks(storage: str, workers: int, trials: int, what: list[str]) -> dict[str, Any]:
    """The figures asked for: storage "sqlite" (a temporary file) or a PostgreSQL server URL."""
    unknown = sorted(set(what) - {"throughput", "kill", "speedup"})
    if unknown:
        raise ValueError(f"--run: unknown {unknown}; choose from throughput, kill, speedup")
    base = None if storage == "sqlite" else storage
    out: dict[str, Any] = {"storage": "sqlite (temporary file)" if base is None else redact(base)}
    if "throughput" in what:
        out["throughput"] = throughput(base, workers, trials).__dict__
    if "kill" in what:
        out["kill"] = kill_recovery(base)
    if "speedup" in what:
        out["speedup"] = speedup(base)
    return out
