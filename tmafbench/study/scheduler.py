"""Run a study: create or load it, start workers, claim cells, train, store, show progress.

Scheduling (DESIGN.md section 4):
- Our tables decide who runs what. A worker claims a cell by inserting its next run row; the
  unique (cell, attempt) constraint and the partial unique index "one completed run per cell"
  make a double run or a duplicate completion impossible, even near the end of the grid.
- Optuna mirrors every run as a trial of an Optuna study of the same name, in the same database,
  with one categorical parameter "cell" (the config hash). No sampler is consulted, so no
  GridSampler seed or revisiting issue arises; optuna-dashboard shows the study as it runs.
- A worker's heartbeat thread touches its run row every `heartbeat_s`; a run whose heartbeat is
  older than `grace_s` (its worker was SIGKILLed, lost power, ...) is marked "interrupted" by any
  live worker and its cell is claimed again as the next attempt.
- `tmafbench study worker NAME --storage URL` on another machine runs `worker_loop`, exactly what
  each local worker process runs.

This module imports no torch at import time: worker processes (spawn) set CUDA_VISIBLE_DEVICES first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from queue import Empty
from typing import Any, Callable

from sqlalchemy.exc import OperationalError

from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database, add_sqlite_pragmas, is_sqlite, normalize_url
from tmafbench.store.repository import FINAL_OK, Claim, Counts, Repository
from tmafbench.study.cells import cells_hash, expand
from tmafbench.study.spec import StudySpec
from tmafbench.study.validate import check_data

TrialFn = Callable[..., Any]


class SpecChangedError(TmafbenchError):
    """The study exists with other cells than the study file now gives."""


@dataclass(frozen=True)
class WorkerOptions:
    heartbeat_s: float = 10.0  # how often a running worker touches its run row
    grace_s: float = 60.0  # a run without heartbeat for this long is taken as dead
    poll_s: float = 1.0  # idle wait while other workers finish the last cells
    max_runs: int | None = None  # stop after this many runs (tests, benchmarks)

    def __post_init__(self) -> None:
        if self.heartbeat_s <= 0:
            raise TmafbenchError(f"--heartbeat must be > 0 seconds, got {self.heartbeat_s:g}")
        # A live run is silent for up to one heartbeat interval (longer on a loaded machine): a grace
        # shorter than two intervals takes live runs for dead and trains their cells twice.
        if self.grace_s < 2 * self.heartbeat_s:
            raise TmafbenchError(f"--grace ({self.grace_s:g} s) must be at least twice --heartbeat "
                                 f"({self.heartbeat_s:g} s), or live runs are taken for dead and run twice")


@dataclass
class WorkerStats:
    """What one worker did; the benchmark aggregates these."""

    worker: str = ""
    runs: int = 0
    completed: int = 0
    failed: int = 0
    interrupted: int = 0
    stale_marked: int = 0
    locked_errors: int = 0  # "database is locked" seen (and retried)
    overhead_s: list[float] = field(default_factory=list)  # per run: loop time minus training time
    train_s: list[float] = field(default_factory=list)

    def record(self, status: str, train_s: float) -> None:
        """Count one finished run of `train_s` seconds."""
        self.runs += 1
        self.completed += status in FINAL_OK
        self.failed += status == "failed"
        self.interrupted += status == "interrupted"
        self.train_s.append(train_s)

    def merged(self, other: "WorkerStats") -> "WorkerStats":
        """Both workers' counts and times, under this one's name."""
        out = dataclasses.replace(self)
        for f in ("runs", "completed", "failed", "interrupted", "stale_marked", "locked_errors"):
            setattr(out, f, getattr(self, f) + getattr(other, f))
        out.overhead_s = self.overhead_s + other.overhead_s
        out.train_s = self.train_s + other.train_s
        return out


@dataclass(frozen=True)
class StudyInfo:
    id: int
    name: str
    max_retries: int
    created: bool
    message: str = ""


# --- create or load --------------------------------------------------------------------------


def git_commit() -> str | None:
    """The checkout's commit (None outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def optuna_storage(url: str):
    """Optuna's RDB storage on the same URL; on SQLite with our pragmas (IMMEDIATE writes, WAL)."""
    import optuna

    url = normalize_url(url)
    if is_sqlite(url):
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        add_sqlite_pragmas(storage.engine)
        storage.engine.dispose()  # connections opened before the listeners existed
        return storage
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def prepare_study(spec: StudySpec, url: str, *, new_name: str | None = None, force: bool = False,
                  kind: str = "grid", parent_id: int | None = None) -> StudyInfo:
    """Create the tables and the study (or load it); refuse a changed design unless `force`."""
    import optuna

    from tmafbench import __version__

    name = new_name or spec.name
    cells = expand(spec)
    check_data(cell.config for cell in cells)  # missing data: one clear error, nothing written
    design = cells_hash(cells)
    spec_dict = {**spec.to_dict(), "name": name}
    reference = spec.reference.model_dump(mode="json") if spec.reference else None
    db = Database(url)
    try:
        db.create_all()  # once, in the parent, before any worker starts
        repo = Repository(db)
        existing = repo.get_study(name)
        if existing is None:
            study_id = repo.create_study(name=name, description=spec.description, spec=spec_dict, spec_hash=design,
                                         reference=reference, version=__version__, git_commit=git_commit(),
                                         cells=cells, kind=kind, parent_id=parent_id)
            message, created = f"created study {name!r} with {len(cells)} cells", True
        elif existing.spec_hash != design:
            if not force:
                raise SpecChangedError(
                    f"study {name!r} already exists with other cells ({len(repo.cell_hashes(existing.id))} stored, "
                    f"{len(cells)} in the file); use --new-name NAME for a separate study, or --force to keep the "
                    "results of matching cells, drop the others and add the new ones")
            kept, removed, added = repo.replace_design(existing.id, spec=spec_dict, spec_hash=design,
                                                       reference=reference, cells=cells)
            study_id, created = existing.id, False
            message = f"study {name!r} redesigned: kept {kept} cells, removed {removed}, added {added}"
        else:
            study_id, created = existing.id, False
            updated = repo.refresh_documentation(study_id, description=spec.description, reference=reference,
                                                 spec=spec_dict, spec_hash=design)
            message = f"resuming study {name!r} ({len(cells)} cells)" + (
                f"; updated its {' and '.join(updated)} from the file" if updated else "")
        storage = optuna_storage(url)
        optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="minimize")
        storage.engine.dispose()
        return StudyInfo(study_id, name, spec.max_retries, created, message)
    finally:
        db.dispose()


def delete_study(name: str, url: str) -> None:
    """Delete our rows of the study (cells, runs, metrics) and its Optuna study."""
    import optuna

    db = Database(url)
    try:
        db.check_schema()
        repo = Repository(db)
        repo.require_study(name)
        repo.delete_study(name)
        storage = optuna_storage(url)
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:  # never reached the Optuna side
            pass
        storage.engine.dispose()
    finally:
        db.dispose()


# --- one cell ---------------------------------------------------------------------------------


class Heartbeat:
    """Touch the run row every `interval_s` seconds from a daemon thread while a trial trains."""

    def __init__(self, repo: Repository, run_id: int, interval_s: float):
        self.repo, self.run_id, self.interval_s = repo, run_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.repo.heartbeat(self.run_id)
            except OperationalError:  # a busy database delays one beat; the grace period covers it
                continue

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def default_trial_fn() -> TrialFn:
    from tmafbench.training import train_trial

    return train_trial


def failed_result(config: Any, exc: BaseException, device: str) -> Any:
    from tmafbench.training.result import TrialResult

    tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return TrialResult(status="failed", metric_name="", metric_direction="minimize", device=device, error=tb)


# Set by our SIGINT handler. Python raises KeyboardInterrupt wherever the main thread happens to be,
# and where that is a weakref or GC callback the exception is printed and dropped ("Exception
# ignored in ..."): training then finishes as if nothing happened. The flag survives that.
_CTRL_C = threading.Event()


@contextlib.contextmanager
def ctrl_c_guard():
    """While a worker loop runs: Ctrl-C raises KeyboardInterrupt as usual and is also remembered,
    so that `run_cell` stops after the trial even when the exception itself was swallowed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        _CTRL_C.set()
        raise KeyboardInterrupt

    _CTRL_C.clear()
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # started with Ctrl-C ignored (a background job): keep it so
        yield
        return
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_cell(repo: Repository, claim: Claim, *, device: str, heartbeat_s: float, trial_fn: TrialFn | None = None,
             on_epoch: Callable[[Any], None] | None = None, trial_number: int | None = None) -> Any:
    """Train one claimed cell on `device` and store its result; returns the TrialResult.

    The stored config is the cell's; only the device is this worker's. An exception in training
    is a failed run (retried up to max_retries); Ctrl-C marks the run interrupted and re-raises.
    Reusable by the tuning phase: the claim may come from any study kind.
    """
    from tmafbench.training.config import TrialConfig

    trial_fn = trial_fn or default_trial_fn()
    config = TrialConfig.from_dict(claim.config)
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, device=device))
    try:
        with Heartbeat(repo, claim.run_id, heartbeat_s):
            try:
                result = trial_fn(config, on_epoch=on_epoch)
                if _CTRL_C.is_set():  # a Ctrl-C that Python swallowed during the trial
                    raise KeyboardInterrupt
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # a bug or bad data in this cell: a failed attempt, not a dead worker
                result = failed_result(config, exc, device)
    except (KeyboardInterrupt, SystemExit):
        repo.mark_interrupted(claim.run_id, "stopped by the user (Ctrl-C)", optuna_trial_number=trial_number)
        raise
    status = repo.finish_run(claim.run_id, result, optuna_trial_number=trial_number)
    if status != result.status:
        result = dataclasses.replace(result, status=status)
    return result


# --- the worker loop -------------------------------------------------------------------------


class OptunaMirror:
    """Each run as an Optuna trial, so optuna-dashboard can follow the study.

    The cell's hash is a user attribute, not a parameter: a categorical parameter's choices are
    fixed for an Optuna study's life, and `--force` adds cells to a running study.
    """

    def __init__(self, url: str, study_name: str):
        self.storage = optuna_storage(url)
        self.study_id = self.storage.get_study_id_from_name(study_name)

    def start(self, claim: Claim, user_attrs: dict[str, Any]) -> tuple[int, int]:
        """Create the RUNNING trial; returns (trial id, trial number)."""
        from optuna.trial import FrozenTrial, TrialState

        template = FrozenTrial(
            number=0, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(), datetime_complete=None,
            params={}, distributions={},
            user_attrs={"cell": claim.config_hash, "attempt": claim.attempt, **user_attrs}, system_attrs={},
            intermediate_values={}, trial_id=0)
        trial_id = self.storage.create_new_trial(self.study_id, template_trial=template)
        return trial_id, self.storage.get_trial_number_from_id(trial_id)

    def finish(self, trial_id: int, status: str, value: float | None) -> None:
        from optuna.trial import TrialState

        if status == "completed" and value is not None and value == value and abs(value) != float("inf"):
            self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values=[value])
            return
        self.storage.set_trial_user_attr(trial_id, "status", status)  # diverged, failed or interrupted
        self.storage.set_trial_state_values(trial_id, TrialState.FAIL)

    def close(self) -> None:
        self.storage.engine.dispose()


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def _retry_locked(stats: WorkerStats, fn: Callable[[], Any], attempts: int = 20) -> Any:
    """Run fn; a "database is locked" error is counted and retried with backoff."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # OperationalError, or Optuna's StorageInternalError wrapping it
            if not _is_locked(exc) and not _is_locked(exc.__cause__ or exc):
                raise
            stats.locked_errors += 1
            time.sleep(min(2.0, 0.05 * 2**i))
    raise TmafbenchError("the database stayed locked; use PostgreSQL for this many workers")


@ctrl_c_guard()
def worker_loop(study_name: str, url: str, *, device: str = "cpu", options: WorkerOptions = WorkerOptions(),
                trial_fn: TrialFn | None = None, worker: str | None = None) -> WorkerStats:
    """Claim and run cells of `study_name` until every cell is final. Returns this worker's stats."""
    from tmafbench.store.environment import collect

    stats = WorkerStats(worker=worker or f"pid {os.getpid()}")
    host = socket.gethostname()
    db = Database(url)
    try:
        db.check_schema()
        repo = Repository(db)
        study = repo.require_study(study_name)
        max_retries = int(study.spec.get("max_retries", 2))
        mirror = OptunaMirror(url, study_name)
        env_id = _retry_locked(stats, lambda: repo.environment_id(collect(device)))
        trial_fn = trial_fn or default_trial_fn()
        last_stale_check = -float("inf")
        while options.max_runs is None or stats.runs < options.max_runs:
            loop_start = time.perf_counter()
            # Stale runs only need finding about once per grace period (and whenever we are idle).
            if loop_start - last_stale_check > options.grace_s / 2:
                stats.stale_marked += _retry_locked(stats, lambda: repo.mark_stale_runs(study.id, options.grace_s))
                last_stale_check = loop_start
            claim = _retry_locked(stats, lambda: repo.claim_cell(study.id, max_retries, host=host, worker=stats.worker,
                                                                 device=device, environment_id=env_id))
            if claim is None:
                if _retry_locked(stats, lambda: repo.counts(study.id, max_retries)).done:
                    break
                time.sleep(options.poll_s)  # others hold the last cells; take over any that go stale
                last_stale_check = -float("inf")
                continue
            trial_id, number = _retry_locked(stats, lambda: mirror.start(claim, {"host": host, "worker": stats.worker}))
            train_start = time.perf_counter()
            result = run_cell(repo, claim, device=device, heartbeat_s=options.heartbeat_s, trial_fn=trial_fn,
                              trial_number=number)
            train_s = time.perf_counter() - train_start
            _retry_locked(stats, lambda: mirror.finish(trial_id, result.status, result.final_metric))
            stats.record(result.status, train_s)
            stats.overhead_s.append(time.perf_counter() - loop_start - train_s)
        mirror.close()
    finally:
        db.dispose()
    return stats


# --- local workers ----------------------------------------------------------------------------


def resolve_devices(devices: str, workers: int | None) -> list[str]:
    """One device per worker: "cpu", "auto" (every visible GPU, else CPU) or "cuda:0,cuda:1"."""
    devices = devices.strip()
    if devices == "auto":
        import torch

        count = torch.cuda.device_count()
        devices = ",".join(f"cuda:{i}" for i in range(count)) if count else "cpu"
    if devices == "cpu":
        n = 1 if workers is None else workers
        if n < 1:
            raise ValueError(f"--workers must be >= 1, got {n}")
        return ["cpu"] * n
    items = [d.strip() for d in devices.split(",") if d.strip()]
    for d in items:
        if not (d.startswith("cuda:") and d[5:].isdigit()):
            raise ValueError(f"--devices: {d!r} is not cpu, auto or cuda:N")
    n = len(items) if workers is None else workers
    if n < 1:
        raise ValueError(f"--workers must be >= 1, got {n}")
    return [items[i % len(items)] for i in range(n)]


def _worker_process(loop: Callable[..., WorkerStats], study_name: str, url: str, device: str, threads: int,
                    options: WorkerOptions, queue: Any) -> None:
    """Entry point of a local worker process (spawn): pin the GPU or the thread count, then run `loop`."""
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]  # before CUDA initialises
        device = "cuda:0"
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        stats = loop(study_name, url, device=device, options=options)
    except KeyboardInterrupt:
        stats = WorkerStats(worker=f"pid {os.getpid()}", interrupted=1)
    queue.put(dataclasses.asdict(stats))


@dataclass
class StudyOutcome:
    counts: Counts
    wall_s: float
    workers: list[WorkerStats]
    interrupted: bool = False
    exit_codes: list[int | None] = field(default_factory=list)  # of the worker processes


@dataclass
class ProcessesOutcome:
    workers: list[WorkerStats]
    interrupted: bool
    exit_codes: list[int | None]  # of the worker processes


def run_processes(loop: Callable[..., WorkerStats], study_name: str, url: str, devices: list[str],
                  options: WorkerOptions, on_poll: Callable[[], None] | None = None, poll_s: float = 0.5,
                  process_name: str = "tmafbench-worker") -> ProcessesOutcome:
    """Run `loop` (a module-level worker loop) in one spawn process per device entry until all exit.

    `on_poll()` is called every `poll_s` while they run. On Ctrl-C the workers got SIGINT too: each
    marks its run interrupted and exits; we wait for them, then terminate any left.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    procs = [ctx.Process(target=_worker_process, args=(loop, study_name, url, d, threads, options, queue),
                         name=f"{process_name}-{i}", daemon=False) for i, d in enumerate(devices)]
    for p in procs:
        p.start()
    stats: list[WorkerStats] = []
    interrupted = False
    try:
        while any(p.is_alive() for p in procs):
            stats += _drain(queue)
            if on_poll is not None:
                on_poll()
            time.sleep(poll_s)
    except KeyboardInterrupt:
        interrupted = True
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        stats += _drain(queue)
    return ProcessesOutcome(stats, interrupted, [p.exitcode for p in procs])


def run_local(info: StudyInfo, url: str, devices: list[str], options: WorkerOptions = WorkerOptions(),
              progress: Callable[[Counts, float], None] | None = None, poll_s: float = 0.5) -> StudyOutcome:
    """Run the study to the end with local workers; `progress(counts, eta_s)` is called as it goes."""
    db = Database(url)
    repo = Repository(db)
    start = time.perf_counter()

    def report() -> None:
        counts = repo.counts(info.id, info.max_retries)
        progress(counts, eta(repo, info.id, counts, len(devices)))

    try:
        run = run_processes(worker_loop, info.name, url, devices, options, report if progress else None, poll_s)
        counts = repo.counts(info.id, info.max_retries)
    finally:
        db.dispose()
    return StudyOutcome(counts, time.perf_counter() - start, run.workers, run.interrupted, run.exit_codes)


def _drain(queue: Any) -> list[WorkerStats]:
    out = []
    while True:
        try:
            out.append(WorkerStats(**queue.get_nowait()))
        except Empty:  # nothing more for now
            return out


def eta(repo: Repository, study_id: int, counts: Counts, workers: int) -> float | None:
    """Seconds left: median run time x cells left / workers (None before the first run ends)."""
    durations = repo.completed_durations(study_id)
    if not durations:
        return None
    left = counts.pending + counts.running / 2
    return statistics.median(durations) * left / max(1, workers)
