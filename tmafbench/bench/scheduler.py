"""Scheduler benchmarks (`tmafbench bench scheduler`): figures, never timed assertions.

- throughput: N local workers x M near-instant real trials (sine-sum, 16 samples, 1 epoch):
  "database is locked" errors seen, duplicate completed cells (both must be 0), median scheduler
  overhead per trial (a worker's loop time outside the cell's run: claim, Optuna mirror, sweeps),
  and apart from it the time to store each result;
- kill: two workers, one SIGKILLed mid-trial: seconds until its cell was retried, final counts;
- speed-up: one worker against two on a CPU study of small trials.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url

from tmafbench.store.database import Database, redact
from tmafbench.store.repository import Repository
from tmafbench.store.scratch import scratch_database
from tmafbench.study.design import parse_design
from tmafbench.study.lifecycle import prepare
from tmafbench.study.local import run_local
from tmafbench.study.worker import WorkerOptions

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
    median_overhead_ms: float  # per trial: the loop (claim, Optuna mirror, sweeps) outside the cell's run
    median_train_ms: float  # per trial: the trial function itself
    median_store_ms: float  # per trial: the cell's run less its training (heartbeat thread, the result's write)


def instant_design(name: str, trials: int, train_size: int = 16, epochs: int = 1):
    return parse_design(INSTANT.format(name=name, seeds=trials, train_size=train_size, epochs=epochs))


def throughput(base_url: str | None, workers: int = 4, trials: int = 200) -> ThroughputResult:
    """N workers run `trials` near-instant real trials; count lock errors and duplicates."""
    with scratch_database(base_url) as url:
        info = prepare(instant_design("bench-throughput", trials), url)
        outcome = run_local(info, url, ["cpu"] * workers, WorkerOptions(poll_s=0.2))
        db = Database(url)
        duplicates = Repository(db).duplicate_completions(info.id)
        db.dispose()
    overheads = [o for w in outcome.workers for o in w.overhead_s]
    trains = [t for w in outcome.workers for t in w.train_s]
    stores = [c - t for w in outcome.workers for c, t in zip(w.cell_s, w.train_s)]
    return ThroughputResult(
        backend=make_url(url).get_backend_name(), workers=workers, trials=trials,
        completed=outcome.counts.completed, locked_errors=sum(w.locked_errors for w in outcome.workers),
        duplicates=duplicates, wall_s=outcome.wall_s,
        median_overhead_ms=1000 * statistics.median(overheads) if overheads else float("nan"),
        median_train_ms=1000 * statistics.median(trains) if trains else float("nan"),
        median_store_ms=1000 * statistics.median(stores) if stores else float("nan"))


WORKER = (
    "import sys; from tmafbench.study.loop import worker_loop; from tmafbench.study.worker import WorkerOptions; "
    "worker_loop(sys.argv[1], sys.argv[2], options=WorkerOptions(heartbeat_s=float(sys.argv[3]), "
    "grace_s=float(sys.argv[4]), poll_s=0.2))"
)


def kill_recovery(base_url: str | None, cells: int = 4, heartbeat_s: float = 1.0, grace_s: float = 5.0) -> dict[str, Any]:
    """Two worker processes; SIGKILL one mid-trial; time until its cell runs again; final counts."""
    with scratch_database(base_url) as url:
        info = prepare(instant_design("bench-kill", cells, train_size=1024, epochs=6), url)
        args = [sys.executable, "-c", WORKER, info.name, url, str(heartbeat_s), str(grace_s)]
        procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        db = Database(url)
        repo = Repository(db)
        try:
            victim, cell_id = _wait_for_running(repo, info.id, {p.pid for p in procs})
            os.kill(victim, signal.SIGKILL)
            killed_at = time.time()
            for p in procs:
                p.wait(timeout=600)
            retry = repo.attempt_started(cell_id, 2)
            statuses = repo.runs_by_status(info.id)
            counts = repo.counts(info.id, info.limits)
            duplicates = repo.duplicate_completions(info.id)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            db.dispose()
    retried_after = (retry.timestamp() - killed_at) if retry is not None else None
    return {"heartbeat_s": heartbeat_s, "grace_s": grace_s, "retried_after_s": retried_after,
            "cells": counts.total, "completed": counts.completed, "failed": counts.failed,
            "runs_by_status": statuses, "duplicates": duplicates}


def _wait_for_running(repo: Repository, study_id: int, pids: set[int], timeout_s: float = 300) -> tuple[int, int]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for _run_id, worker, cell_id in repo.running_runs(study_id):
            pid = int((worker or "pid 0").split()[-1])
            if pid in pids:
                time.sleep(0.3)  # mid-trial, not at the claim
                return pid, cell_id
        time.sleep(0.1)
    raise TimeoutError("no worker started a trial")


def speedup(base_url: str | None, cells: int = 8) -> dict[str, Any]:
    """Wall time of one worker against two on a CPU study of small (~1 s) trials."""
    walls = {}
    for workers in (1, 2):
        with scratch_database(base_url) as url:
            info = prepare(instant_design(f"bench-speedup-{workers}", cells, train_size=512, epochs=4), url)
            outcome = run_local(info, url, ["cpu"] * workers, WorkerOptions(poll_s=0.2))
            busy = [sum(w.cell_s) + sum(w.overhead_s) for w in outcome.workers]
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
