"""The one worker loop: claim cells phase by phase, train them, store results, recover from dead workers.

Scheduling (DESIGN.md section 4):
- Our tables decide who runs what. A worker claims a cell by inserting its next run row; the
  unique (cell, attempt) constraint and the partial unique index "one completed run per cell"
  make a double run or a duplicate completion impossible, even near the end of the grid
  (tmafbench/store/queue.py). Optuna's own `enqueue_trial` + `ask` queue was measured against it
  (4 workers x 200 trials on SQLite): 2 duplicate cells and 11 `UpdateFinishedTrialError`s, where
  the claim queue gives 0 and 0.
- A study is one or two phases (lifecycle.py): its cells, or a tuned study's tuning slots then its
  evaluation cells. `worker_loop` drains them in order with one loop; what is done with a claimed
  cell is the phase's runner's (runners.py): a grid cell mirrored as an Optuna trial, or a tuning
  slot asked of its group's Optuna study.
- A worker's heartbeat thread touches its run row every `heartbeat_s`; a run whose heartbeat is
  older than `grace_s` (its worker was SIGKILLed, lost power, ...) is marked "lost" by any live
  worker, its Optuna trial is failed, and its cell is claimed again as the next attempt, up to
  `max_crashes` lost attempts (a cell that kills its worker every time must not kill them all).
- `tmafbench study worker NAME --storage URL` on another machine runs `worker_loop`, exactly what
  each local worker process runs.

This module imports no torch at import time: worker processes (spawn) set CUDA_VISIBLE_DEVICES first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import socket
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field
from enum import StrEnum
from logging.handlers import QueueHandler
from queue import Empty
from typing import Any, Callable

from tmafbench.core import FINAL_OK, RunStatus, TrialConfig, TrialResult
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database, database_error_message, redact
from tmafbench.store.repository import Claim, Counts, Repository
from tmafbench.store.resilience import DEFAULT_PATIENCE_S, DatabaseFault, Patience, error_detail, is_database_error
from tmafbench.study.lifecycle import Phase, StudyInfo, info_of

TrialFn = Callable[..., Any]
ManyFn = Callable[..., list[Any]]  # (configs, on_epochs=None) -> a TrialResult or an exception per config
log = logging.getLogger("tmafbench.worker")


@dataclass(frozen=True)
class WorkerOptions:
    heartbeat_s: float = 10.0  # how often a running worker touches its run row
    grace_s: float = 60.0  # a run without heartbeat for this long is taken as dead
    poll_s: float = 1.0  # idle wait while other workers finish the last cells
    max_runs: int | None = None  # stop after this many runs (tests, benchmarks)
    pack: int | str = 1  # cells trained together as one packed model: K, or "auto" (training/packed.py)
    db_patience_s: float = DEFAULT_PATIENCE_S  # how long a worker waits for a database that does not answer

    def __post_init__(self) -> None:
        if self.pack != "auto" and not (isinstance(self.pack, int) and not isinstance(self.pack, bool) and self.pack >= 1):
            raise TmafbenchError(f"--pack must be a positive integer or 'auto', got {self.pack!r}")
        if self.db_patience_s < 0:
            raise TmafbenchError(f"--db-patience must be >= 0 seconds, got {self.db_patience_s:g}")
        if self.heartbeat_s <= 0:
            raise TmafbenchError(f"--heartbeat must be > 0 seconds, got {self.heartbeat_s:g}")
        # A live run is silent for up to one heartbeat interval (longer on a loaded machine): a grace
        # shorter than two intervals takes live runs for dead and trains their cells twice.
        if self.grace_s < 2 * self.heartbeat_s:
            raise TmafbenchError(f"--grace ({self.grace_s:g} s) must be at least twice --heartbeat "
                                 f"({self.heartbeat_s:g} s), or live runs are taken for dead and run twice")


    def pack_size(self, device: str) -> int:
        """Cells per pack: the number given, or for "auto" 16 on a CPU (where 16 small MLPs train about
        as fast per step as one) and 64 on a GPU."""
        if self.pack != "auto":
            return int(self.pack)
        return AUTO_PACK_GPU if device.startswith("cuda") else AUTO_PACK_CPU


AUTO_PACK_CPU, AUTO_PACK_GPU = 16, 64


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
    reconnects: int = 0  # database calls retried after a lost or refused connection
    db_wait_s: float = 0.0  # seconds spent waiting for the database to come back
    abandoned: int = 0  # cells given up because the run was taken for dead while its worker was away
    redundant: int = 0  # late results for cells another run had completed (recorded as interrupted)
    stopped: str = ""  # why the worker stopped before the study was done (database unreachable, disk full)
    overhead_s: list[float] = field(default_factory=list)  # per run: loop time minus the cell's run (cell_s)
    train_s: list[float] = field(default_factory=list)  # per run: seconds in the trial itself
    cell_s: list[float] = field(default_factory=list)  # per run: the trial, its heartbeat and its stored result

    def record(self, status: str) -> None:
        """Count one finished run (its training time is in `train_s` already)."""
        self.runs += 1
        self.completed += status in FINAL_OK
        self.failed += status == RunStatus.FAILED
        self.interrupted += status == RunStatus.INTERRUPTED


# --- one cell ---------------------------------------------------------------------------------


class CellTaken(Exception):
    """Raised in the training loop when the run was taken for dead: its cell belongs to another run now."""


class Heartbeat:
    """Touch the claimed run rows every `interval_s` seconds from a daemon thread while they train.

    A beat that fails (the database is busy or away) is skipped: training goes on and the grace
    period covers the gap. A beat that finds a run no longer running (its worker was away past the
    grace period and the run was swept as lost) adds it to `taken`; `check(run_id)`, that cell's
    on_epoch callback, then stops its training at the end of the epoch.
    """

    def __init__(self, repo: Repository, run_ids: list[int], interval_s: float):
        self.repo, self.run_ids, self.interval_s = repo, list(run_ids), interval_s
        self.taken: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.run_ids[0]}", daemon=True)

    def _beat(self) -> None:
        failing_since: float | None = None
        while not self._stop.wait(self.interval_s):
            live = [r for r in self.run_ids if r not in self.taken]
            if not live:
                return
            try:
                if not self.repo.heartbeat(live):
                    self.taken |= set(live) - self.repo.still_running(live)
            except Exception as exc:
                if not is_database_error(exc):
                    raise
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("heartbeat of %s failed (%s); training goes on", self._label, error_detail(exc))
                continue
            if failing_since is not None:
                log.warning("heartbeat of %s is back after %.1f s", self._label, time.monotonic() - failing_since)
                failing_since = None

    @property
    def _label(self) -> str:
        return f"run {self.run_ids[0]}" if len(self.run_ids) == 1 else f"{len(self.run_ids)} runs"

    def check(self, run_id: int) -> Callable[[Any], None]:
        """The on_epoch callback of one cell: raises CellTaken once its run is no longer this worker's."""

        def on_epoch(_record: Any = None) -> None:
            if run_id in self.taken:
                raise CellTaken(f"run {run_id} was taken for dead while its worker was away")

        return on_epoch

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# Set by our SIGINT/SIGTERM handler. Python raises KeyboardInterrupt wherever the main thread happens
# to be, and where that is a weakref or GC callback the exception is printed and dropped ("Exception
# ignored in ..."): training then finishes as if nothing happened. The flag survives that.
_STOP = threading.Event()
_STOP_REASON = ["the user (Ctrl-C)"]
_SIGNAL_REASONS = {signal.SIGINT: "the user (Ctrl-C)", signal.SIGTERM: "SIGTERM (the job was stopped)"}


@contextlib.contextmanager
def stop_guard():
    """While a worker loop runs: Ctrl-C, and SIGTERM (a batch scheduler's stop, the parent ending its
    workers), raise KeyboardInterrupt and are remembered, so that the running cell is marked
    interrupted (it runs again, and does not count as a crash) even when the exception was swallowed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        _STOP_REASON[0] = _SIGNAL_REASONS.get(signum, f"signal {signum}")
        _STOP.set()
        raise KeyboardInterrupt

    _STOP.clear()
    previous = {sig: signal.getsignal(sig) for sig in _SIGNAL_REASONS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:  # started with it ignored (a background job): keep it so
            signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def default_trial_fn() -> TrialFn:
    from tmafbench.training import train_trial

    return train_trial


def failed_result(exc: BaseException, device: str) -> TrialResult:
    error = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return TrialResult(status=RunStatus.FAILED, metric_name="", metric_direction="minimize", device=device, error=error)


def one_by_one(trial_fn: TrialFn) -> ManyFn:
    """A `train_many` that trains each config alone with `trial_fn` (an exception is that cell's outcome)."""
    def train_many(configs: list[TrialConfig], on_epochs: list[Any] | None = None) -> list[Any]:
        outcomes: list[Any] = []
        for config, on_epoch in zip(configs, on_epochs or [None] * len(configs)):
            try:
                outcomes.append(trial_fn(config, on_epoch=on_epoch))
            except Exception as exc:  # noqa: BLE001 - the cell's own failure
                outcomes.append(exc)
        return outcomes

    return train_many


def default_many_fn(trial_fn: TrialFn | None) -> ManyFn:
    """Packed training (training/packed.py) for the real trainer; one by one for any other trial function."""
    if trial_fn is None:
        from tmafbench.training.packed import train_many

        return train_many
    return one_by_one(trial_fn)


@dataclass
class WorkerContext:
    """What one worker process holds while it drains a study: its store, device, options and stats."""

    repo: Repository
    device: str
    options: WorkerOptions
    stats: WorkerStats
    trial_fn: TrialFn  # one config -> TrialResult (the trainer, or a test's stand-in)
    many_fn: ManyFn  # configs -> outcomes, packed where possible
    host: str = field(default_factory=socket.gethostname)
    environment_id: int | None = None
    patience: Patience = field(init=False)

    def __post_init__(self) -> None:
        self.patience = worker_patience(self.repo.db.url, self.options, self.stats)

    def retry(self, fn: Callable[[], Any]) -> Any:
        """Run fn, a database call; a lost connection or a locked database is retried with backoff
        for up to `db_patience_s` (then DatabaseUnavailable); a full disk is a StorageFault."""
        try:
            return self.patience.call(fn)
        finally:
            self.stats.locked_errors = self.patience.retries["locked"]
            self.stats.reconnects = self.patience.retries["disconnected"]
            self.stats.db_wait_s = self.patience.waited_s

    def run_cells(self, claims: list[Claim], train_many: ManyFn | None = None,
                  trial_numbers: list[int | None] | None = None) -> list[TrialResult]:
        """Train claimed cells (packed where they can be) on this worker's device and store each result.

        The stored config is each cell's; only the device is this worker's. An exception in a cell's
        training is that cell's failed run (retried up to max_retries); Ctrl-C or SIGTERM marks every
        claimed run interrupted and re-raises. A run taken for dead while its worker was away is
        abandoned at the cell's next epoch (an "interrupted" result, nothing written: the run row is
        the sweep's). Each finished result is written with `retry`, so it waits for a database that
        blinks; a late result for a cell that another run completed is recorded as a redundant
        attempt. Time in training is added to the stats.
        """
        from tmafbench.training.packed import record_packs

        train_many = train_many or self.many_fn
        numbers = trial_numbers or [None] * len(claims)
        cell_start = time.perf_counter()
        configs = []
        for claim in claims:
            config = TrialConfig.from_dict(claim.config)
            configs.append(config.replace(training=config.training.replace(device=self.device)))
        start = time.perf_counter()
        try:
            with Heartbeat(self.repo, [c.run_id for c in claims], self.options.heartbeat_s) as beat:
                outcomes = train_many(configs, [beat.check(c.run_id) for c in claims])
                record_packs(configs, outcomes, [c.config_hash for c in claims])  # the "pack" artifact
                if _STOP.is_set():  # a Ctrl-C that Python swallowed during the trial
                    raise KeyboardInterrupt
        except (KeyboardInterrupt, SystemExit):
            for claim, number in zip(claims, numbers):
                self._mark_interrupted(claim.run_id, f"stopped by {_STOP_REASON[0]}", number)
            raise
        finally:
            self.stats.train_s += [(time.perf_counter() - start) / len(claims)] * len(claims)
        results = self._store_all(claims, numbers, outcomes)
        self.stats.cell_s += [(time.perf_counter() - cell_start) / len(claims)] * len(claims)
        return results

    def _store_all(self, claims: list[Claim], numbers: list[int | None], outcomes: list[Any]) -> list[TrialResult]:
        """Each cell's outcome as its run's result. The database away past the patience limit (while
        storing, or while a tuning slot reported to Optuna) stops the worker: what is not stored yet
        will run again."""
        results = []
        for k, (claim, number, outcome) in enumerate(zip(claims, numbers, outcomes)):
            try:
                if isinstance(outcome, DatabaseFault):
                    raise outcome
                results.append(self._store(claim, number, outcome))
            except DatabaseFault as exc:
                others = f" and {len(claims) - k - 1} more" if len(claims) - k > 1 else ""
                raise type(exc)(f"{exc}; the result of cell {claim.config_hash} (attempt {claim.attempt}){others} "
                                "was not stored and will run again") from exc
        return results

    def _store(self, claim: Claim, number: int | None, outcome: Any) -> TrialResult:
        """Write one cell's outcome, waiting for the database; an abandoned cell writes nothing."""
        if isinstance(outcome, CellTaken):
            return self._abandon(claim, str(outcome))
        result = failed_result(outcome, self.device) if isinstance(outcome, BaseException) else outcome
        status = self.retry(lambda: self.repo.finish_run(claim.run_id, result, optuna_trial_number=number))
        if status == RunStatus.INTERRUPTED and result.status != RunStatus.INTERRUPTED:
            self.stats.redundant += 1
            log.warning("cell %s attempt %d: another run completed the cell while this worker was away; "
                        "its late result is recorded as a redundant attempt", claim.config_hash, claim.attempt)
        return result if status == result.status else dataclasses.replace(result, status=status)

    def _abandon(self, claim: Claim, why: str) -> TrialResult:
        self.stats.abandoned += 1
        log.warning("cell %s attempt %d abandoned: %s; going on with the next cell", claim.config_hash,
                    claim.attempt, why)
        return TrialResult(status=RunStatus.INTERRUPTED, metric_name="", metric_direction="minimize",
                           device=self.device, error=f"abandoned: {why}")

    def _mark_interrupted(self, run_id: int, error: str, trial_number: int | None) -> None:
        """One try, no waiting: the user asked to stop. A run left running is swept as lost later."""
        try:
            self.repo.mark_interrupted(run_id, error, optuna_trial_number=trial_number)
        except Exception as exc:
            if not is_database_error(exc):
                raise


def worker_patience(url: str, options: WorkerOptions, stats: WorkerStats) -> Patience:
    """The worker's patience with its database; outages are logged with the worker's name."""

    def on_wait(kind: str, exc: BaseException) -> None:
        if kind == "disconnected":  # a locked SQLite database is routine: counted, not logged
            log.warning("%s: database unreachable (%s); retrying for up to %g s", stats.worker, error_detail(exc),
                        options.db_patience_s)

    def on_back(kind: str, seconds: float) -> None:
        if kind == "disconnected":
            log.warning("%s: database back after %.1f s", stats.worker, seconds)

    return Patience(redact(url), options.db_patience_s, on_wait=on_wait, on_back=on_back)


def drain(ctx: WorkerContext, phase: Phase, runner: Any, limits: Any) -> bool:
    """Claim and run the cells of one phase until every one is final; False when `max_runs` stopped it."""
    from tmafbench.training.packed import pack_key

    options, stats = ctx.options, ctx.stats
    pack = options.pack_size(ctx.device)
    if runner.max_pack:  # tuning slots: no more than the sampler can propose well at once
        pack = min(pack, runner.max_pack)
    last_sweep = -float("inf")
    while options.max_runs is None or stats.runs < options.max_runs:
        if options.max_runs is not None:
            pack = min(pack, options.max_runs - stats.runs)
        loop_start = time.perf_counter()
        # Lost runs only need finding about once per grace period (and whenever we are idle).
        if loop_start - last_sweep > options.grace_s / 2:
            lost = ctx.retry(lambda: ctx.repo.mark_stale_runs(phase.study_id, options.grace_s))
            if lost:
                stats.stale_marked += len(lost)
                ctx.retry(lambda: runner.reconcile(ctx))  # their Optuna trials: FAIL
            last_sweep = loop_start
        claims = ctx.retry(lambda: ctx.repo.claim_cells(
            phase.study_id, limits, host=ctx.host, worker=stats.worker, device=ctx.device,
            environment_id=ctx.environment_id, most=pack, key=pack_key))
        if not claims:
            if ctx.retry(lambda: ctx.repo.counts(phase.study_id, limits)).done:
                ctx.retry(lambda: runner.reconcile(ctx, final=True))  # trials a dead worker (or a retry) left RUNNING
                return True
            time.sleep(options.poll_s)  # others hold the last cells; take over any that go stale
            last_sweep = -float("inf")
            continue
        if any(c.attempt > 1 for c in claims):  # a retry: close what the last attempt left open first
            ctx.retry(lambda: runner.reconcile(ctx))
        in_cells = sum(stats.cell_s)
        results = runner.run(claims, ctx)
        for result in results:
            stats.record(result.status)
        overhead = time.perf_counter() - loop_start - (sum(stats.cell_s) - in_cells)
        stats.overhead_s += [overhead / len(claims)] * len(claims)
    return False


def worker_loop(study_name: str, url: str, *, device: str = "cpu", options: WorkerOptions = WorkerOptions(),
                trial_fn: TrialFn | None = None, worker: str | None = None) -> WorkerStats:
    """Claim and run the cells of `study_name`, phase by phase, until every cell is final.

    Returns this worker's stats. The one loop for every kind of study: the runner of each phase
    decides what a claimed cell means (runners.runner_for). A database that stays away longer
    than `options.db_patience_s`, refuses writes (a full disk) or fails otherwise stops the worker
    cleanly: `stats.stopped` says why in one line, and running the study again resumes it.
    """
    from tmafbench.activations.kernels import kernel_on
    from tmafbench.store.environment import collect
    from tmafbench.study.runners import runner_for

    stats = WorkerStats(worker=worker or f"pid {os.getpid()}")
    db = Database(url)
    try:
        repo = Repository(db)
        ctx = WorkerContext(repo, device, options, stats, trial_fn or default_trial_fn(), default_many_fn(trial_fn))
        ctx.retry(db.check_schema)
        info = ctx.retry(lambda: info_of(repo, study_name))
        environment = collect(device, kernel_on(device))  # after the worker process set its threads
        with stop_guard():
            ctx.environment_id = ctx.retry(lambda: repo.environment_id(environment))
            for phase in info.phases:
                runner = ctx.retry(lambda: runner_for(url, info, phase))
                try:
                    if not drain(ctx, phase, runner, info.limits):
                        break  # max_runs reached
                    runner.finish_phase(ctx)
                finally:
                    runner.close()
    except DatabaseFault as exc:
        stats.stopped = str(exc)
    except Exception as exc:  # any other error of the database (dropped, permissions revoked): one line too
        stats.stopped = database_error_message(exc, url) or ""
        if not stats.stopped:
            raise
    finally:
        db.dispose()
    return stats

# --- local workers ----------------------------------------------------------------------------


def resolve_devices(devices: str, workers: int | None) -> list[str]:
    """One device per worker: "cpu", "auto" (every visible GPU, else CPU) or "cuda:0,cuda:1".

    CUDA devices this machine does not have are refused here, before anything is written: a study
    would otherwise be created only to fail every cell.
    """
    items = parse_devices(devices, workers)
    cuda = sorted({d for d in items if d.startswith("cuda:")}, key=lambda d: int(d[5:]))
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--devices: device {cuda[0]!r} requested but CUDA is not available on this machine; "
                             "use --devices cpu (or auto)")
        count = torch.cuda.device_count()
        if int(cuda[-1][5:]) >= count:
            raise ValueError(f"--devices: device {cuda[-1]!r} requested but this machine has {count} CUDA "
                             f"device(s): cuda:0 to cuda:{count - 1}")
    return items


def parse_devices(devices: str, workers: int | None) -> list[str]:
    """The device of each worker as written ("auto" resolved, nothing checked against the machine)."""
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


def physical_gpu(device: str, visible: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES entry for "cuda:N": entry N of the visible list the parent inherited
    (a machine or job that already restricts the GPUs), else N itself."""
    index = int(device.split(":", 1)[1])
    entries = [e.strip() for e in visible.split(",") if e.strip()] if visible else []
    if not entries:
        return str(index)
    if index >= len(entries):
        raise TmafbenchError(f"{device} requested but CUDA_VISIBLE_DEVICES={visible!r} shows {len(entries)} GPU(s)")
    return entries[index]


def _worker_process(loop: Callable[..., WorkerStats], study_name: str, url: str, device: str, threads: int,
                    options: WorkerOptions, queue: Any) -> None:
    """Entry point of a local worker process (spawn): pin the GPU or the thread count, then run `loop`.

    The worker's log lines (a database outage, an abandoned cell) travel to the parent on `queue`,
    which shows them with its progress display; its stats follow when it ends.
    """
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = physical_gpu(device, os.environ.get("CUDA_VISIBLE_DEVICES"))
        device = "cuda:0"  # the one GPU this process sees (set before CUDA initialises)
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    log.addHandler(QueueHandler(queue))
    log.propagate = False
    try:
        stats = loop(study_name, url, device=device, options=options)
    except KeyboardInterrupt:
        stats = WorkerStats(worker=f"pid {os.getpid()}", interrupted=1)
    queue.put(dataclasses.asdict(stats))


PhaseCounts = list[tuple[Phase, Counts]]


class Ending(StrEnum):
    """How a run of the study ended, for a scheduler or a script (the CLI maps each to an exit code)."""

    DONE = "done"  # every cell completed or diverged
    CELLS_FAILED = "cells failed"  # every cell is final, but some failed for good (max_retries, max_crashes)
    STOPPED = "stopped"  # cells are left: a worker stopped early (database away, disk full) or died
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM


@dataclass
class StudyOutcome:
    """How a run of local workers left the study."""

    name: str
    phases: PhaseCounts
    wall_s: float
    workers: list[WorkerStats] = field(default_factory=list)
    interrupted: bool = False
    exit_codes: list[int | None] = field(default_factory=list)  # of the worker processes
    stopped: str = ""  # why the run stopped before the study was done, when a worker or the parent knows

    @property
    def counts(self) -> Counts:
        """The last phase's counts: a grid study's cells, a tuned study's evaluation cells."""
        return self.phases[-1][1]

    @property
    def done(self) -> bool:
        return all(c.done for _p, c in self.phases) and self.counts.total > 0

    @property
    def ending(self) -> Ending:
        if self.interrupted:
            return Ending.INTERRUPTED
        if not self.done:
            return Ending.STOPPED
        if any(c.failed or c.crashed for _p, c in self.phases):
            return Ending.CELLS_FAILED
        return Ending.DONE


@dataclass
class ProcessesOutcome:
    workers: list[WorkerStats]
    interrupted: bool
    exit_codes: list[int | None]  # of the worker processes


def run_processes(study_name: str, url: str, devices: list[str], options: WorkerOptions,
                  on_poll: Callable[[], None] | None = None, poll_s: float = 0.5,
                  loop: Callable[..., WorkerStats] | None = None,
                  on_event: Callable[[str], None] | None = None) -> ProcessesOutcome:
    """Run the worker loop in one spawn process per device entry until all exit.

    `on_poll()` is called every `poll_s` while they run, `on_event(line)` with each worker's log
    line (default: this process's logging). On Ctrl-C the workers got SIGINT too: each marks its
    run interrupted and exits; we wait for them, then stop any left with SIGTERM (which they also
    turn into an interruption). A SIGTERM to this process (a batch scheduler's stop) is passed on
    to them at once. Either way the outcome says `interrupted`.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    procs = [ctx.Process(target=_worker_process, args=(loop or worker_loop, study_name, url, d, threads, options, queue),
                         name=f"tmafbench-worker-{i}", daemon=False) for i, d in enumerate(devices)]
    for p in procs:
        p.start()
    stats: list[WorkerStats] = []
    interrupted = False
    try:
        with stop_guard():
            while any(p.is_alive() for p in procs):
                stats += _drain(queue, on_event)
                if on_poll is not None:
                    on_poll()
                time.sleep(poll_s)
    except KeyboardInterrupt:
        interrupted = True
        if _STOP_REASON[0] == _SIGNAL_REASONS[signal.SIGTERM]:  # sent to us alone: pass it on
            for p in procs:
                p.terminate()
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        stats += _drain(queue, on_event)
    return ProcessesOutcome(stats, interrupted, [p.exitcode for p in procs])


def phase_counts(repo: Repository, info: StudyInfo) -> PhaseCounts:
    """Each phase with its cells by state."""
    return [(phase, repo.counts(phase.study_id, info.limits)) for phase in info.phases]


def run_local(info: StudyInfo, url: str, devices: list[str], options: WorkerOptions = WorkerOptions(),
              progress: Callable[[PhaseCounts, float | None], None] | None = None,
              poll_s: float = 0.5, on_event: Callable[[str], None] | None = None) -> StudyOutcome:
    """Run the study to the end with local workers; `progress(phases, eta_s)` is called as it goes,
    `on_event(line)` with the workers' log lines.

    While the database is away the progress display skips its updates: the workers wait for it
    themselves, each up to `options.db_patience_s`, and stop when it stays away longer. The
    outcome's `stopped` then says why.
    """
    db = Database(url)
    repo = Repository(db)
    patience = Patience(redact(url), options.db_patience_s)
    start = time.perf_counter()
    last_seen: PhaseCounts = []  # the latest counts read: they stand if the database is away at the end

    def report() -> None:
        nonlocal last_seen
        phases = patience.quiet(lambda: phase_counts(repo, info))
        if phases is not None:
            last_seen = phases
            progress(phases, patience.quiet(lambda: eta(repo, phases, len(devices))))

    try:
        phases = last_seen = patience.call(lambda: phase_counts(repo, info))
        if all(c.done for _p, c in phases) and phases[-1][1].total > 0:  # nothing to run: start no worker
            return StudyOutcome(info.name, phases, time.perf_counter() - start)
        run = run_processes(info.name, url, devices, options, report if progress else None, poll_s, on_event=on_event)
        phases, stopped = _final_counts(repo, info, patience, run, last_seen)
    finally:
        db.dispose()
    return StudyOutcome(info.name, phases, time.perf_counter() - start, run.workers, run.interrupted, run.exit_codes,
                        stopped)


def _final_counts(repo: Repository, info: StudyInfo, patience: Patience, run: ProcessesOutcome,
                  last_seen: PhaseCounts) -> tuple[PhaseCounts, str]:
    """The counts once the workers are gone, and why they stopped early (if one said so).

    A blink is waited out, unless the workers gave up on the database or the user stopped them:
    then one try. Without an answer the last counts seen stand.
    """
    stopped = next((w.stopped for w in run.workers if w.stopped), "")
    try:
        read = patience.quiet if stopped or run.interrupted else patience.call
        phases = read(lambda: phase_counts(repo, info))
    except DatabaseFault as exc:
        return last_seen, stopped or str(exc)
    return (last_seen if phases is None else phases), stopped


def _drain(queue: Any, on_event: Callable[[str], None] | None = None) -> list[WorkerStats]:
    """The stats of the workers that ended; their log lines go to `on_event` (else to logging)."""
    out = []
    while True:
        try:
            item = queue.get_nowait()
        except Empty:  # nothing more for now
            return out
        if not isinstance(item, logging.LogRecord):
            out.append(WorkerStats(**item))
        elif on_event is not None:
            on_event(item.getMessage())
        else:
            log.handle(item)


def eta(repo: Repository, phases: PhaseCounts, workers: int) -> float | None:
    """Seconds left in the current phase: median run time x cells left / workers (None before a run ends)."""
    current = next(((p, c) for p, c in phases if not c.done), None)
    if current is None:
        return 0.0
    phase, counts = current
    durations = repo.completed_durations(phase.study_id)
    if not durations:
        return None
    left = counts.pending + counts.running / 2
    return statistics.median(durations) * left / max(1, workers)
