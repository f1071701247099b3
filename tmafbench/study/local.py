"""Local workers: the devices, one worker process per device entry, and how the run of a study ended.

`run_local` starts the worker processes (spawn: CUDA_VISIBLE_DEVICES is set before CUDA starts),
shows progress while they drain the study, and returns a `StudyOutcome` whose `ending` the CLI
turns into an exit status. Each process runs `loop.worker_loop`, as a worker on another machine does.

This module imports no torch at import time.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import dataclass, field
from logging.handlers import QueueHandler
from multiprocessing.queues import Queue
from queue import Empty
from typing import TYPE_CHECKING, Any, Callable, Protocol

from tmafbench.core import Ending
from tmafbench.errors import InputError, TmafbenchError
from tmafbench.store.database import Database, redact
from tmafbench.store.repository import Counts, Repository
from tmafbench.store.resilience import DatabaseFault, Patience
from tmafbench.study.lifecycle import Phase, StudyInfo
from tmafbench.study.loop import deleted_message, study_gone, worker_loop
from tmafbench.study.threads import thread_plan
from tmafbench.study.signals import (import_torch_held, signals_blocked, stop_guard, stop_requested, stopped_by_sigterm,
                                     unblock_signals)
from tmafbench.study.worker import WorkerOptions, WorkerStats, log

PhaseCounts = list[tuple[Phase, Counts]]
if TYPE_CHECKING:
    # What a worker process sends its parent: its log records while it runs, its stats (as a dict) when it ends.
    WorkerMessages = Queue[logging.LogRecord | dict[str, Any]]


class WorkerLoop(Protocol):
    """`loop.worker_loop`'s signature (a benchmark passes its own loop)."""

    def __call__(self, study_name: str, url: str, *, device: str = ..., options: WorkerOptions = ...) -> WorkerStats: ...


# --- devices -----------------------------------------------------------------------------------------


def resolve_devices(devices: str, workers: int | None, oversubscribe: bool = False) -> list[str]:
    """One device per worker: "cpu", "auto" (every visible GPU, else CPU) or "cuda:0,cuda:1".

    CUDA devices this machine does not have are refused here, before anything is written: a study
    would otherwise be created only to fail every cell. So are more CPU workers than CPU cores
    (`--workers 1000` on 2 cores), unless `oversubscribe`.
    """
    items = parse_devices(devices, workers)
    on_cpu, cores = items.count("cpu"), cpu_cores()
    if on_cpu > cores and not oversubscribe:
        raise InputError(f"--workers {on_cpu} is more than the {cores} CPU core(s) this process may use; each worker "
                         "process trains with its own threads, so more only slows every cell down. Use at most "
                         f"{cores}, or pass --oversubscribe to start {on_cpu} anyway")
    cuda = sorted({d for d in items if d.startswith("cuda:")}, key=lambda d: int(d[5:]))
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--devices: device {cuda[0]!r} requested but CUDA is not available on this machine; "
                             "use --devices cpu (or auto)")
        count = torch.cuda.device_count()
        if int(cuda[-1][5:]) >= count:
            raise InputError(f"--devices: device {cuda[-1]!r} requested but this machine has {count} CUDA "
                             f"device(s): cuda:0 to cuda:{count - 1}")
    return items


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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
            raise InputError(f"--workers must be >= 1, got {n}")
        return ["cpu"] * n
    items = [d.strip() for d in devices.split(",") if d.strip()]
    for d in items:
        if not (d.startswith("cuda:") and d[5:].isdigit()):
            raise InputError(f"--devices: {d!r} is not cpu, auto or cuda:N")
    n = len(items) if workers is None else workers
    if n < 1:
        raise InputError(f"--workers must be >= 1, got {n}")
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


# --- worker processes --------------------------------------------------------------------------------


def _worker_process(loop: WorkerLoop, study_name: str, url: str, device: str, threads: int,
                    options: WorkerOptions, queue: WorkerMessages) -> None:
    """Entry point of a local worker process (spawn): pin the GPU or the thread count, then run `loop`.

    The worker's log lines (a database outage, an abandoned cell) travel to the parent on `queue`,
    which shows them with its progress display; its stats follow when it ends.
    """
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = physical_gpu(device, os.environ.get("CUDA_VISIBLE_DEVICES"))
        device = "cuda:0"  # the one GPU this process sees (set before CUDA initialises)
    try:  # a Ctrl-C or SIGTERM while torch loads (before the loop holds any run) ends the worker quietly
        with stop_guard():
            unblock_signals()  # started with them blocked (run_processes): a stop from then on is ours
            import_torch_held()
            import torch

            if device == "cpu":
                torch.set_num_threads(threads)
            log.addHandler(QueueHandler(queue))
            log.propagate = False
            stats = loop(study_name, url, device=device, options=options)
    except KeyboardInterrupt:
        stats = WorkerStats(worker=f"pid {os.getpid()}", interrupted=1)
    queue.put(dataclasses.asdict(stats))


@dataclass
class ProcessesOutcome:
    workers: list[WorkerStats]
    interrupted: bool
    exit_codes: list[int | None]  # of the worker processes


def run_processes(study_name: str, url: str, devices: list[str], options: WorkerOptions,
                  on_poll: Callable[[], None] | None = None, poll_s: float = 0.5,
                  loop: WorkerLoop | None = None,
                  on_event: Callable[[str], None] | None = None) -> ProcessesOutcome:
    """Run the worker loop in one spawn process per device entry until all exit.

    `on_poll()` is called every `poll_s` while they run, `on_event(line)` with each worker's log
    line (default: this process's logging). On Ctrl-C the workers got SIGINT too: each marks its
    run interrupted and exits; we wait for them, then stop any left with SIGTERM (which they also
    turn into an interruption). A SIGTERM to this process (a batch scheduler's stop) is passed on
    to them at once. Either way the outcome says `interrupted`.
    """
    ctx = mp.get_context("spawn")
    queue: WorkerMessages = ctx.Queue()
    threads = thread_plan(len(devices), options.threads).threads
    procs = [ctx.Process(target=_worker_process, args=(loop or worker_loop, study_name, url, d, threads, options, queue),
                         name=f"tmafbench-worker-{i}", daemon=False) for i, d in enumerate(devices)]
    stats: list[WorkerStats] = []
    interrupted = False
    try:
        with stop_guard():
            for p in procs:  # a stop while they start stops the ones started (below)
                with signals_blocked():  # the worker starts with them blocked, until its own guard exists
                    p.start()
            while any(p.is_alive() for p in procs):
                if stop_requested():  # a stop whose KeyboardInterrupt Python swallowed
                    raise KeyboardInterrupt
                stats += _collect_messages(queue, on_event)
                if on_poll is not None:
                    on_poll()
                time.sleep(poll_s)
    except KeyboardInterrupt:
        interrupted = True
        started = [p for p in procs if p.pid is not None]
        if stopped_by_sigterm():  # sent to us alone: pass it on (a Ctrl-C reached the workers itself)
            for p in started:
                p.terminate()
        for p in started:
            p.join(timeout=30)
    finally:
        started = [p for p in procs if p.pid is not None]
        for p in started:
            if p.is_alive():
                p.terminate()
            p.join()
        stats += _collect_messages(queue, on_event)
    return ProcessesOutcome(stats, interrupted, [p.exitcode for p in procs])


def _collect_messages(queue: WorkerMessages, on_event: Callable[[str], None] | None = None) -> list[WorkerStats]:
    """The stats of the workers that ended; their log lines go to `on_event` (else to logging)."""
    out: list[WorkerStats] = []
    while True:
        try:
            item: logging.LogRecord | dict[str, Any] = queue.get_nowait()
        except Empty:  # nothing more for now
            return out
        if not isinstance(item, logging.LogRecord):
            out.append(WorkerStats(**item))
        elif on_event is not None:
            on_event(item.getMessage())
        else:
            log.handle(item)


# --- how the study ended -----------------------------------------------------------------------------


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
    deleted: bool = False  # the study was deleted (`study delete`) while it ran: its counts are gone too

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
        if self.deleted or not self.done:
            return Ending.STOPPED
        if any(c.failed or c.crashed for _p, c in self.phases):
            return Ending.CELLS_FAILED
        return Ending.DONE


# --- the whole run -----------------------------------------------------------------------------------


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
    outcome's `stopped` then says why. A study deleted while it runs (`study delete`) stops its
    workers at their next claim, heartbeat or result; the display keeps the last counts it saw (not
    the empty ones of a study that is gone) and the outcome says `deleted`.
    """
    db = Database(url)
    repo = Repository(db)
    patience = Patience(redact(url), options.db_patience_s)
    start = time.perf_counter()
    last_seen: PhaseCounts = []  # the latest counts read: they stand if the database is away at the end

    def report() -> None:
        nonlocal last_seen
        phases = patience.quiet(lambda: phase_counts(repo, info))
        if phases is not None and vanished(repo, info, phases):
            return
        if phases is not None and progress is not None:
            last_seen = phases
            progress(phases, patience.quiet(lambda: eta(repo, phases, len(devices))))

    try:
        phases = last_seen = patience.call(lambda: phase_counts(repo, info))
        if all(c.done for _p, c in phases) and phases[-1][1].total > 0:  # nothing to run: start no worker
            return StudyOutcome(info.name, phases, time.perf_counter() - start)
        run = run_processes(info.name, url, devices, options, report if progress else None, poll_s, on_event=on_event)
        phases, stopped = _final_counts(repo, info, patience, run, last_seen)
        deleted = any(w.study_deleted for w in run.workers) or vanished(repo, info, phases)
    finally:
        db.dispose()
    if deleted:
        phases, stopped = last_seen, deleted_message(info.name)
    return StudyOutcome(info.name, phases, time.perf_counter() - start, run.workers, run.interrupted, run.exit_codes,
                        stopped, deleted)


def vanished(repo: Repository, info: StudyInfo, phases: PhaseCounts) -> bool:
    """Whether the study was deleted while it ran. Only asked when its first phase counts no cell,
    as a deleted study's counts do (a study always has cells or tuning slots)."""
    return phases[0][1].total == 0 and study_gone(repo, info.name, info.id)


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
