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
import multiprocessing as mp
import os
import signal
import socket
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field
from queue import Empty
from typing import Any, Callable

from sqlalchemy.exc import OperationalError

from tmafbench.core import FINAL_OK, RunStatus, TrialConfig, TrialResult
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database
from tmafbench.store.repository import Claim, Counts, Repository
from tmafbench.study.lifecycle import Phase, StudyInfo, info_of

TrialFn = Callable[..., Any]
ManyFn = Callable[..., list[Any]]  # (configs, on_epochs=None) -> a TrialResult or an exception per config


@dataclass(frozen=True)
class WorkerOptions:
    heartbeat_s: float = 10.0  # how often a running worker touches its run row
    grace_s: float = 60.0  # a run without heartbeat for this long is taken as dead
    poll_s: float = 1.0  # idle wait while other workers finish the last cells
    max_runs: int | None = None  # stop after this many runs (tests, benchmarks)
    pack: int | str = 1  # cells trained together as one packed model: K, or "auto" (training/packed.py)

    def __post_init__(self) -> None:
        if self.pack != "auto" and not (isinstance(self.pack, int) and not isinstance(self.pack, bool) and self.pack >= 1):
            raise TmafbenchError(f"--pack must be a positive integer or 'auto', got {self.pack!r}")
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


class Heartbeat:
    """Touch the claimed run rows every `interval_s` seconds from a daemon thread while they train."""

    def __init__(self, repo: Repository, run_ids: list[int], interval_s: float):
        self.repo, self.run_ids, self.interval_s = repo, list(run_ids), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.run_ids[0]}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.repo.heartbeat(self.run_ids)
            except OperationalError:  # a busy database delays one beat; the grace period covers it
                continue

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


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


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

    def retry(self, fn: Callable[[], Any], attempts: int = 20) -> Any:
        """Run fn; a "database is locked" error is counted and retried with backoff."""
        for i in range(attempts):
            try:
                return fn()
            except Exception as exc:  # OperationalError, or Optuna's StorageInternalError wrapping it
                if not _is_locked(exc) and not _is_locked(exc.__cause__ or exc):
                    raise
                self.stats.locked_errors += 1
                time.sleep(min(2.0, 0.05 * 2**i))
        raise TmafbenchError("the database stayed locked; use PostgreSQL for this many workers")

    def run_cells(self, claims: list[Claim], train_many: ManyFn | None = None,
                  trial_numbers: list[int | None] | None = None) -> list[TrialResult]:
        """Train claimed cells (packed where they can be) on this worker's device and store each result.

        The stored config is each cell's; only the device is this worker's. An exception in a cell's
        training is that cell's failed run (retried up to max_retries); Ctrl-C or SIGTERM marks every
        claimed run interrupted and re-raises. Time in training is added to the stats.
        """
        train_many = train_many or self.many_fn
        numbers = trial_numbers or [None] * len(claims)
        cell_start = time.perf_counter()
        configs = []
        for claim in claims:
            config = TrialConfig.from_dict(claim.config)
            configs.append(config.replace(training=config.training.replace(device=self.device)))
        start = time.perf_counter()
        try:
            with Heartbeat(self.repo, [c.run_id for c in claims], self.options.heartbeat_s):
                outcomes = train_many(configs)
                if _STOP.is_set():  # a Ctrl-C that Python swallowed during the trial
                    raise KeyboardInterrupt
        except (KeyboardInterrupt, SystemExit):
            for claim, number in zip(claims, numbers):
                self.repo.mark_interrupted(claim.run_id, f"stopped by {_STOP_REASON[0]}", optuna_trial_number=number)
            raise
        finally:
            self.stats.train_s += [(time.perf_counter() - start) / len(claims)] * len(claims)
        results = []
        for claim, number, outcome in zip(claims, numbers, outcomes):
            result = failed_result(outcome, self.device) if isinstance(outcome, BaseException) else outcome
            status = self.repo.finish_run(claim.run_id, result, optuna_trial_number=number)
            results.append(result if status == result.status else dataclasses.replace(result, status=status))
        self.stats.cell_s += [(time.perf_counter() - cell_start) / len(claims)] * len(claims)
        return results


def drain(ctx: WorkerContext, phase: Phase, runner: Any, limits: Any) -> bool:
    """Claim and run the cells of one phase until every one is final; False when `max_runs` stopped it."""
    from tmafbench.training.packed import pack_key

    options, stats = ctx.options, ctx.stats
    pack = options.pack_size(ctx.device)
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
                ctx.retry(lambda: runner.reconcile(ctx))  # trials a dead worker left RUNNING
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
    decides what a claimed cell means (runners.runner_for).
    """
    from tmafbench.store.environment import collect
    from tmafbench.study.runners import runner_for

    stats = WorkerStats(worker=worker or f"pid {os.getpid()}")
    db = Database(url)
    try:
        db.check_schema()
        repo = Repository(db)
        info = info_of(repo, study_name)
        ctx = WorkerContext(repo, device, options, stats, trial_fn or default_trial_fn(), default_many_fn(trial_fn))
        with stop_guard():
            ctx.environment_id = ctx.retry(lambda: repo.environment_id(collect(device)))
            for phase in info.phases:
                runner = runner_for(url, info, phase)
                try:
                    if not drain(ctx, phase, runner, info.limits):
                        break  # max_runs reached
                    runner.finish_phase(ctx)
                finally:
                    runner.close()
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


PhaseCounts = list[tuple[Phase, Counts]]


@dataclass
class StudyOutcome:
    """How a run of local workers left the study."""

    name: str
    phases: PhaseCounts
    wall_s: float
    workers: list[WorkerStats] = field(default_factory=list)
    interrupted: bool = False
    exit_codes: list[int | None] = field(default_factory=list)  # of the worker processes

    @property
    def counts(self) -> Counts:
        """The last phase's counts: a grid study's cells, a tuned study's evaluation cells."""
        return self.phases[-1][1]

    @property
    def done(self) -> bool:
        return all(c.done for _p, c in self.phases) and self.counts.total > 0


@dataclass
class ProcessesOutcome:
    workers: list[WorkerStats]
    interrupted: bool
    exit_codes: list[int | None]  # of the worker processes


def run_processes(study_name: str, url: str, devices: list[str], options: WorkerOptions,
                  on_poll: Callable[[], None] | None = None, poll_s: float = 0.5,
                  loop: Callable[..., WorkerStats] | None = None) -> ProcessesOutcome:
    """Run the worker loop in one spawn process per device entry until all exit.

    `on_poll()` is called every `poll_s` while they run. On Ctrl-C the workers got SIGINT too: each
    marks its run interrupted and exits; we wait for them, then stop any left with SIGTERM (which
    they also turn into an interruption).
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


def phase_counts(repo: Repository, info: StudyInfo) -> PhaseCounts:
    """Each phase with its cells by state."""
    return [(phase, repo.counts(phase.study_id, info.limits)) for phase in info.phases]


def run_local(info: StudyInfo, url: str, devices: list[str], options: WorkerOptions = WorkerOptions(),
              progress: Callable[[PhaseCounts, float | None], None] | None = None,
              poll_s: float = 0.5) -> StudyOutcome:
    """Run the study to the end with local workers; `progress(phases, eta_s)` is called as it goes."""
    db = Database(url)
    repo = Repository(db)
    start = time.perf_counter()

    def report() -> None:
        phases = phase_counts(repo, info)
        progress(phases, eta(repo, phases, len(devices)))

    try:
        phases = phase_counts(repo, info)
        if all(c.done for _p, c in phases) and phases[-1][1].total > 0:  # nothing to run: start no worker
            return StudyOutcome(info.name, phases, time.perf_counter() - start)
        run = run_processes(info.name, url, devices, options, report if progress else None, poll_s)
        phases = phase_counts(repo, info)
    finally:
        db.dispose()
    return StudyOutcome(info.name, phases, time.perf_counter() - start, run.workers, run.interrupted, run.exit_codes)


def _drain(queue: Any) -> list[WorkerStats]:
    out = []
    while True:
        try:
            out.append(WorkerStats(**queue.get_nowait()))
        except Empty:  # nothing more for now
            return out


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
