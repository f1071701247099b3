"""One worker's means: its options and stats, the cell executor, the heartbeat and the signal guard.

`CellExecutor` trains a worker's claimed cells (packed where they can be) and stores each result,
riding out a database that blinks; the phase loop (loop.py) decides which cells to claim, and a
phase's runner (runners.py) what a claimed cell means. While cells train:
- a heartbeat thread touches their run rows every `heartbeat_s`; a run whose heartbeat is older
  than `grace_s` (its worker was SIGKILLed, lost power, ...) is marked "lost" by any live worker and
  its cell claimed again, and a worker that comes back learns at its next beat that its run was
  taken (`CellTaken`);
- Ctrl-C and SIGTERM are remembered and held back while the database is written (signals.py), so
  the running cells are marked interrupted even when Python swallowed the KeyboardInterrupt.

This module imports no torch at import time: worker processes (spawn) set CUDA_VISIBLE_DEVICES first.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from tmafbench.core import FINAL_OK, EpochRecord, Outcome, RunStatus, TrialConfig, TrialResult
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import redact
from tmafbench.store.repository import Claim, Repository, StudyDeleted
from tmafbench.store.resilience import DEFAULT_PATIENCE_S, DatabaseFault, Patience, error_detail, is_database_error
from tmafbench.study.signals import pause_point, signals_held, stop_reason, stop_requested
from tmafbench.training.dispatch import ManyFn

T = TypeVar("T")
log = logging.getLogger("tmafbench.worker")

AUTO_PACK_CPU, AUTO_PACK_GPU = 16, 64
MAX_DURATION_S = 30 * 24 * 3600.0  # a heartbeat, grace or patience longer than 30 days is a typo (1e15 overflows sleeps)


@dataclass(frozen=True)
class WorkerOptions:
    heartbeat_s: float = 10.0  # how often a running worker touches its run row
    grace_s: float = 60.0  # a run without heartbeat for this long is taken as dead
    poll_s: float = 1.0  # idle wait while other workers finish the last cells
    max_runs: int | None = None  # stop after this many runs (tests, benchmarks)
    pack: int | str = 1  # cells trained together as one packed model: K, or "auto" (training/packed.py)
    db_patience_s: float = DEFAULT_PATIENCE_S  # how long a worker waits for a database that does not answer
    threads: int | None = None  # torch threads per CPU worker; None: the usable CPUs shared (study/threads.py)

    def __post_init__(self) -> None:
        for option, value in (("--heartbeat", self.heartbeat_s), ("--grace", self.grace_s),
                              ("--db-patience", self.db_patience_s), ("poll_s", self.poll_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= MAX_DURATION_S):
                raise TmafbenchError(f"{option} must be a number of seconds from 0 to {MAX_DURATION_S:g} (30 days), "
                                     f"got {value!r}")
        if self.pack != "auto" and not (isinstance(self.pack, int) and not isinstance(self.pack, bool) and self.pack >= 1):
            raise TmafbenchError(f"--pack must be a positive integer or 'auto', got {self.pack!r}")
        if self.db_patience_s < 0:
            raise TmafbenchError(f"--db-patience must be >= 0 seconds, got {self.db_patience_s:g}")
        if self.threads is not None and self.threads < 1:
            raise TmafbenchError(f"--threads must be >= 1, got {self.threads}")
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
    study_deleted: bool = False  # it stopped because the study was deleted (`study delete`) while it ran
    overhead_s: list[float] = field(default_factory=list)  # per run: loop time minus the cell's run (cell_s)
    train_s: list[float] = field(default_factory=list)  # per run: seconds in the trial itself
    cell_s: list[float] = field(default_factory=list)  # per run: the trial, its heartbeat and its stored result

    def record(self, status: str) -> None:
        """Count one finished run (its training time is in `train_s` already)."""
        self.runs += 1
        self.completed += status in FINAL_OK
        self.failed += status == RunStatus.FAILED
        self.interrupted += status == RunStatus.INTERRUPTED


# --- heartbeat -----------------------------------------------------------------------------------


class CellTaken(Exception):
    """Raised in the training loop when the run was taken for dead: its cell belongs to another run now."""


class CellRemoved(CellTaken):
    """Raised in the training loop when the run row is gone: its cell was removed (`study run --force`)
    or its study deleted (`study delete`) while it trained."""


class Heartbeat:
    """Touch the claimed run rows every `interval_s` seconds from a daemon thread while they train.

    A beat that fails (the database is busy or away) is skipped: training goes on and the grace
    period covers the gap. A beat that finds a run no longer running (its worker was away past the
    grace period and the run was swept as lost) adds it to `taken`, and to `removed` when its row is
    gone (its cell or its study was deleted); `check(run_id)`, that cell's on_epoch callback, then
    stops its training at the end of the epoch.
    """

    def __init__(self, repo: Repository, run_ids: list[int], interval_s: float):
        self.repo, self.run_ids, self.interval_s = repo, list(run_ids), interval_s
        self.taken: set[int] = set()
        self.removed: set[int] = set()
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
                    statuses = self.repo.run_statuses(live)
                    self.removed |= set(live) - set(statuses)
                    self.taken |= {r for r in live if statuses.get(r) != RunStatus.RUNNING}
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

    def check(self, run_id: int) -> Callable[[EpochRecord], None]:
        """The on_epoch callback of one cell: raises CellTaken once its run is no longer this worker's."""

        def on_epoch(_record: EpochRecord | None = None) -> None:
            pause_point("train")
            if run_id in self.removed:
                raise CellRemoved(f"run {run_id} was deleted while it trained")
            if run_id in self.taken:
                raise CellTaken(f"run {run_id} was taken for dead while its worker was away")

        return on_epoch

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the cell executor ---------------------------------------------------------------------------


def failed_result(exc: BaseException, device: str) -> TrialResult:
    error = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return TrialResult(status=RunStatus.FAILED, metric_name="", metric_direction="minimize", device=device, error=error)


@dataclass
class CellExecutor:
    """What one worker process holds while it drains a study (its store, device, options and stats),
    and what it does with claimed cells: train them and store their results."""

    repo: Repository
    device: str
    options: WorkerOptions
    stats: WorkerStats
    many_fn: ManyFn  # configs -> outcomes, packed where possible (training/dispatch.py)
    host: str = field(default_factory=socket.gethostname)
    environment_id: int | None = None
    patience: Patience = field(init=False)

    def __post_init__(self) -> None:
        self.patience = worker_patience(self.repo.db.url, self.options, self.stats)

    def retry(self, fn: Callable[[], T], /) -> T:
        """Run fn, a database call; a lost connection or a locked database is retried with backoff
        for up to `db_patience_s` (then DatabaseUnavailable); a full disk is a StorageFault. A Ctrl-C
        or SIGTERM is held while a try runs (it raises once that try ends) and ends the waiting."""

        def one_try() -> T:
            with signals_held():
                return fn()

        try:
            return self.patience.call(one_try)
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
        from tmafbench.training.packed import record_packs  # torch: imported once a cell trains

        train = train_many or self.many_fn
        numbers = trial_numbers or [None] * len(claims)
        cell_start = time.perf_counter()
        configs = []
        for claim in claims:
            config = TrialConfig.from_dict(claim.config)
            configs.append(config.replace(training=config.training.replace(device=self.device)))
        start = time.perf_counter()
        try:
            with Heartbeat(self.repo, [c.run_id for c in claims], self.options.heartbeat_s) as beat:
                outcomes = train(configs, [beat.check(c.run_id) for c in claims])
                try:
                    record_packs(configs, outcomes, [c.config_hash for c in claims])  # each run's "pack" artifact
                except Exception:  # provenance only: never lose trained results over it
                    log.exception("%s: could not record which cells trained together", self.stats.worker)
                if stop_requested():  # a Ctrl-C that Python swallowed during the trial
                    raise KeyboardInterrupt
        except (KeyboardInterrupt, SystemExit):
            for claim, number in zip(claims, numbers):
                self._mark_interrupted(claim.run_id, f"stopped by {stop_reason()}", number)
            raise
        finally:
            self.stats.train_s += [(time.perf_counter() - start) / len(claims)] * len(claims)
        results = self._store_all(claims, numbers, outcomes)
        self.stats.cell_s += [(time.perf_counter() - cell_start) / len(claims)] * len(claims)
        return results

    def _store_all(self, claims: list[Claim], numbers: list[int | None], outcomes: list[Outcome]) -> list[TrialResult]:
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

    def _store(self, claim: Claim, number: int | None, outcome: Outcome) -> TrialResult:
        """Write one cell's outcome, waiting for the database; an abandoned cell writes nothing."""
        if isinstance(outcome, CellRemoved):
            return self._removed(claim)
        if isinstance(outcome, CellTaken):
            return self._abandon(claim, str(outcome))
        result = failed_result(outcome, self.device) if isinstance(outcome, BaseException) else outcome

        def write() -> RunStatus | None:
            status = self.repo.finish_run(claim.run_id, result, optuna_trial_number=number)
            pause_point("write")
            return status

        status = self.retry(write)
        if status is None:
            return self._removed(claim)
        if status == RunStatus.INTERRUPTED and result.status != RunStatus.INTERRUPTED:
            self.stats.redundant += 1
            log.warning("cell %s attempt %d: another run completed the cell while this worker was away; "
                        "its late result is recorded as a redundant attempt", claim.config_hash, claim.attempt)
        return result if status == result.status else dataclasses.replace(result, status=status)

    def _removed(self, claim: Claim) -> TrialResult:
        """The run row vanished while the cell trained: the whole study was deleted (StudyDeleted: the
        worker stops), or only this cell was removed from it by `study run --force` (dropped; go on)."""
        if not self.retry(lambda: self.repo.study_exists(claim.study_id)):
            raise StudyDeleted(f"study {claim.study_id} was deleted while cell {claim.config_hash} trained")
        log.warning("cell %s attempt %d was removed from the study (`study run --force`) while it trained; its "
                    "result is dropped; going on with the next cell", claim.config_hash, claim.attempt)
        return self._dropped("removed from the study while it trained")

    def _abandon(self, claim: Claim, why: str) -> TrialResult:
        self.stats.abandoned += 1
        log.warning("cell %s attempt %d abandoned: %s; going on with the next cell", claim.config_hash,
                    claim.attempt, why)
        return self._dropped(f"abandoned: {why}")

    def _dropped(self, error: str) -> TrialResult:
        """The result of a cell whose run is not this worker's to write any more (nothing is stored)."""
        return TrialResult(status=RunStatus.INTERRUPTED, metric_name="", metric_direction="minimize",
                           device=self.device, error=error)

    def interrupt_held_runs(self, study_id: int) -> int:
        """After a Ctrl-C or SIGTERM: mark every run this worker still holds in the study interrupted,
        wherever the stop landed (a claim just committed, a trial being created, a result half told
        to Optuna). One try, no waiting: the user asked to stop; a run left running is swept as lost
        later. Returns how many were marked."""
        try:
            with signals_held():
                return self.repo.interrupt_runs_of(study_id, host=self.host, worker=self.stats.worker,
                                                   error=f"stopped by {stop_reason()}")
        except Exception as exc:
            if not is_database_error(exc):
                raise
            return 0

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

    return Patience(redact(url), options.db_patience_s, on_wait=on_wait, on_back=on_back, should_stop=stop_requested)
