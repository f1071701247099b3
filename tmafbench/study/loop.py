"""The one worker loop: claim cells phase by phase, hand them to the phase's runner, recover from dead workers.

Scheduling (docs/design.md, section 4):
- Our tables decide who runs what. A worker claims a cell by inserting its next run row; the
  unique (cell, attempt) constraint and the partial unique index "one completed run per cell"
  make a double run or a duplicate completion impossible, even near the end of the grid
  (tmafbench/store/queue.py). Optuna's own `enqueue_trial` + `ask` queue was measured against it
  (4 workers x 200 trials on SQLite): 2 duplicate cells and 11 `UpdateFinishedTrialError`s, where
  the claim queue gives 0 and 0.
- A study is one or two phases (lifecycle.py): its cells, or a tuned study's tuning slots then its
  evaluation cells. `worker_loop` drains them in order with one loop (`run_phase`); what is done
  with a claimed cell is the phase's runner's (runners.py): an ordinary cell mirrored as an Optuna
  trial, or a tuning slot asked of its group's Optuna study. The runner trains through the worker's
  `CellExecutor` (worker.py).
- A run whose heartbeat is older than `grace_s` (its worker was SIGKILLed, lost power, ...) is
  marked "lost" by any live worker, its Optuna trial is failed, and its cell is claimed again as
  the next attempt, up to `max_crashes` lost attempts (a cell that kills its worker every time
  must not kill them all).
- `tmafbench study worker NAME --storage URL` on another machine runs `worker_loop`, exactly what
  each local worker process (local.py) runs.

This module imports no torch at import time: worker processes (spawn) set CUDA_VISIBLE_DEVICES first.
"""

from __future__ import annotations

import os
import time

from tmafbench.store.database import Database, database_error_message
from tmafbench.store.environment import collect
from tmafbench.store.repository import Claim, Limits, Repository, StudyDeleted, StudyNotFoundError
from tmafbench.store.resilience import DatabaseFault, is_database_error
from tmafbench.study.lifecycle import Phase, info_of
from tmafbench.study.runners import Runner, runner_for
from tmafbench.study.signals import pause_point, signals_held, stop_guard
from tmafbench.study.worker import CellExecutor, WorkerOptions, WorkerStats
from tmafbench.training.dispatch import TrialFn, many_fn


def run_phase(ex: CellExecutor, phase: Phase, runner: Runner, limits: Limits) -> bool:
    """Claim and run the cells of one phase until every one is final; False when `max_runs` stopped it.

    A Ctrl-C or SIGTERM, wherever it lands, leaves none of this worker's runs running and none of
    their Optuna trials RUNNING (`stop_cleanly`): they run again, and count as no crash.
    """
    try:
        return _drain_phase(ex, phase, runner, limits)
    except KeyboardInterrupt:
        stop_cleanly(ex, phase, runner)
        raise


def stop_cleanly(ex: CellExecutor, phase: Phase, runner: Runner) -> None:
    """Mark what this worker holds in the phase interrupted and close their Optuna trials: one try
    each (the database may be away; then the sweep finds the runs later, as lost)."""
    ex.interrupt_held_runs(phase.study_id)
    try:
        with signals_held():
            runner.reconcile(ex)
    except Exception as exc:
        if not is_database_error(exc):
            raise


def _drain_phase(ex: CellExecutor, phase: Phase, runner: Runner, limits: Limits) -> bool:
    from tmafbench.training.packed import pack_key  # imports torch: only once the worker runs

    options, stats = ex.options, ex.stats
    pack = options.pack_size(ex.device)
    if runner.max_pack:  # tuning slots: no more than the sampler can propose well at once
        pack = min(pack, runner.max_pack)
    last_sweep = -float("inf")
    while options.max_runs is None or stats.runs < options.max_runs:
        if options.max_runs is not None:
            pack = min(pack, options.max_runs - stats.runs)
        loop_start = time.perf_counter()
        # Lost runs only need finding about once per grace period (and whenever we are idle).
        if loop_start - last_sweep > options.grace_s / 2:
            lost = ex.retry(lambda: ex.repo.mark_stale_runs(phase.study_id, options.grace_s))
            if lost:
                stats.stale_marked += len(lost)
                ex.retry(lambda: runner.reconcile(ex))  # their Optuna trials: FAIL
            last_sweep = loop_start

        def claim() -> list[Claim]:
            claims = ex.repo.claim_cells(phase.study_id, limits, host=ex.host, worker=stats.worker, device=ex.device,
                                         environment_id=ex.environment_id, most=pack, key=pack_key)
            pause_point("claim")
            return claims

        claims = ex.retry(claim)
        if not claims:
            if ex.retry(lambda: ex.repo.counts(phase.study_id, limits)).done:
                ex.retry(lambda: runner.reconcile(ex, final=True))  # trials a dead worker (or a retry) left RUNNING
                return True
            time.sleep(options.poll_s)  # others hold the last cells; take over any that go stale
            last_sweep = -float("inf")
            continue
        if any(c.attempt > 1 for c in claims):  # a retry: close what the last attempt left open first
            ex.retry(lambda: runner.reconcile(ex))
        in_cells = sum(stats.cell_s)
        results = runner.run(claims, ex)
        for result in results:
            stats.record(result.status)
        overhead = time.perf_counter() - loop_start - (sum(stats.cell_s) - in_cells)
        stats.overhead_s += [overhead / len(claims)] * len(claims)
    return False


def worker_loop(study_name: str, url: str, *, device: str = "cpu", options: WorkerOptions = WorkerOptions(),
                trial_fn: TrialFn | None = None, worker: str | None = None) -> WorkerStats:
    """Claim and run the cells of `study_name`, phase by phase, until every cell is final.

    Returns this worker's stats. The one loop for every kind of study: the runner of each phase
    decides what a claimed cell means (runners.runner_for). `trial_fn` replaces the trainer (the
    cells then train one by one; tests). A database that stays away longer than
    `options.db_patience_s`, refuses writes (a full disk) or fails otherwise stops the worker
    cleanly: `stats.stopped` says why in one line, and running the study again resumes it. So does
    a study deleted while it runs (`study delete`), found at the next claim, heartbeat, result or
    Optuna call: `stats.study_deleted` is then set.
    """
    stats = WorkerStats(worker=worker or f"pid {os.getpid()}")
    db = Database(url)
    study_id: int | None = None
    try:
        repo = Repository(db)
        ex = CellExecutor(repo, device, options, stats, many_fn(trial_fn))
        ex.retry(db.check_schema)
        info = ex.retry(lambda: info_of(repo, study_name))
        study_id = info.id
        from tmafbench.activations.kernels import kernel_on  # imports torch: only once the worker runs

        environment = collect(device, kernel_on(device))  # after the worker process set its threads
        with stop_guard():
            ex.environment_id = ex.retry(lambda: repo.environment_id(environment))
            for phase in info.phases:
                runner = ex.retry(lambda: runner_for(url, info, phase))
                try:
                    if not run_phase(ex, phase, runner, info.limits):
                        break  # max_runs reached
                    runner.finish_phase(ex)
                finally:
                    runner.close()
    except (StudyDeleted, StudyNotFoundError):  # gone since the parent, or this loop, found it
        stats.stopped, stats.study_deleted = deleted_message(study_name), True
    except DatabaseFault as exc:
        stats.stopped = str(exc)
    except Exception as exc:  # any other error of the database (dropped, permissions revoked): one line too
        if study_gone(repo, study_name, study_id):  # an Optuna call on its deleted trials ("Record does not exist.")
            stats.stopped, stats.study_deleted = deleted_message(study_name), True
            return stats
        stats.stopped = database_error_message(exc, url) or ""
        if not stats.stopped:
            raise
    finally:
        db.dispose()
    return stats


def deleted_message(name: str) -> str:
    return f"study {name!r} was deleted while it ran (by `tmafbench study delete`); nothing more to run"


def study_gone(repo: Repository, name: str, study_id: int | None) -> bool:
    """Whether study `name` (the one of id `study_id`, when known) is no longer stored; False when the
    database cannot say."""
    try:
        study = repo.get_study(name)
    except Exception:
        return False
    return study is None or (study_id is not None and study.id != study_id)
