"""The study commands as library functions: `tmafbench study ...` parses its options and calls one of these.

Every function takes the storage URL and returns data; none prints. The progress display and
every message belong to the caller (the CLI passes callbacks).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from tmafbench.store.database import Database, sqlite_file_missing
from tmafbench.store.gzipped import readable_copy
from tmafbench.store.repository import Repository, StoredStudy, StudySummary
from tmafbench.study.design import StudyDesign, load_design, stored_form
from tmafbench.study.lifecycle import StudyInfo, delete as delete_study, info_of, prepare
from tmafbench.study.local import PhaseCounts, StudyOutcome, phase_counts, resolve_devices, run_local, vanished
from tmafbench.study.loop import deleted_message
from tmafbench.study.plan import groups_of, tune_of
from tmafbench.study.signals import import_torch_held, pause_point, signals_held, stop_guard, stop_requested
from tmafbench.study.verify import Verification, verify
from tmafbench.study.worker import WorkerOptions

if TYPE_CHECKING:
    from tmafbench.study.submit import JobResources, Submitted

T = TypeVar("T")
OnReady = Callable[[StudyInfo, list[str]], None]
Progress = Callable[[PhaseCounts, float | None], None]
OnEvent = Callable[[str], None]

__all__ = ["Verification", "cells", "create", "delete_study", "describe_tuning", "join", "run", "show", "status",
           "submit_workers", "summaries", "verify", "wait_for_jobs"]


def cells(path: str | Path, overrides: list[str] | None = None) -> StudyDesign:
    """Validate a study file; its `.cells` are what would run (nothing is written)."""
    return load_design(path, overrides)


def describe_tuning(design: StudyDesign) -> str:
    """One line on a tuned study: budget, seeds, metric, pruner and each group's search space."""
    tune = tune_of(design)
    groups = groups_of(design, design.name)
    spaces = "; ".join(f"{g.label}: {', '.join(g.space) or '(nothing)'}" for g in groups)
    return (f"tuning: {len(groups)} groups x {tune.trials} trials (TPE, sampler seed {tune.sampler_seed}, pruner "
            f"{tune.pruner}) on {tune.objective} with val_fraction {tune.val_fraction:g}, tuning seeds "
            f"{tune.tune_seed_list()}; the table shows the evaluation cells (seeds {tune.eval_seed_list()}) before "
            f"their settings are chosen. Space per group: {spaces}")


def run(path: str | Path, overrides: list[str] | None, *, url: str, devices: str = "auto", workers: int | None = None,
        new_name: str | None = None, force: bool = False, options: WorkerOptions = WorkerOptions(), oversubscribe: bool = False,
        on_ready: OnReady | None = None, progress: Progress | None = None,
        on_event: OnEvent | None = None) -> StudyOutcome:
    """Create (or resume) the study of a study file and run every cell with local workers.

    A study that is already finished with exactly this file is reported without validating,
    loading data or starting workers, so resuming it is instant and works offline. The devices are
    checked before anything is written. `on_event(line)` gets the workers' log lines (a database
    outage and its end, an abandoned cell, a late result).
    """
    with stop_guard():  # a Ctrl-C or SIGTERM from here on is KeyboardInterrupt, and the study is left clean
        # Loading, validating and preparing import torch and friends: a stop is held until they are
        # done (an import cut in half leaves a module broken, and the process then died at exit with
        # SIGINT or SIGABRT instead of its exit status; measured), then raised.
        with signals_held():
            finished = _finished_already(path, overrides, url, new_name)
            if finished is not None:
                if on_ready is not None:
                    on_ready(finished[0], [])
                return finished[1]
            design = load_design(path, overrides)
            if new_name:
                design = design.renamed(new_name)
            device_list = resolve_devices(devices, workers, oversubscribe)  # before anything is written
            info = prepare(design, url, force=force)
        return _work(info, url, device_list, options, on_ready, progress, on_event)


def create(path: str | Path, overrides: list[str] | None, *, url: str, new_name: str | None = None,
           force: bool = False) -> tuple[StudyInfo, PhaseCounts]:
    """Create the study of a study file (grid or tuned) with its cells, and run nothing.

    The same file again is a no-op; any number of `create` and `run` of one file may start at the
    same moment (one creates, the others find it: see store/setup_lock.py). Returns the study and
    its counts.
    """
    design = load_design(path, overrides)
    if new_name:
        design = design.renamed(new_name)
    info = prepare(design, url, force=force)
    return info, _read(url, lambda repo: phase_counts(repo, info))


def join(name: str, *, url: str, devices: str = "auto", workers: int | None = 1,
         options: WorkerOptions = WorkerOptions(), oversubscribe: bool = False, on_ready: OnReady | None = None,
         progress: Progress | None = None, on_event: OnEvent | None = None) -> StudyOutcome:
    """Work on a stored study from this machine (e.g. against one PostgreSQL URL)."""
    with stop_guard():
        import_torch_held()  # a stop waits for torch's import (see run)
        device_list = resolve_devices(devices, workers, oversubscribe)
        db = Database(url, must_exist=True)
        try:
            db.check_schema()
            db.add_missing_columns()  # a database made by an earlier release: this worker records more
            repo = Repository(db)
            info = info_of(repo, name)
            phases = phase_counts(repo, info)
        finally:
            db.dispose()
        progress_now = ", ".join(f"{c.finished}/{c.total} {phase.label} final" for phase, c in phases)
        info = replace(info, message=f"joining study {name!r} ({progress_now})")
        return _work(info, url, device_list, options, on_ready, progress, on_event)


def submit_workers(name: str, *, url: str, executor: str, jobs: int, worker_args: list[str],
                   resources: JobResources, folder: str | None = None) -> tuple[StudyInfo, Submitted]:
    """Submit `jobs` `study worker NAME` jobs as one job array (study/submit.py); the study must exist."""
    from tmafbench.study.submit import submit

    info = _read(url, lambda repo: info_of(repo, name, with_design=False))
    return info, submit(name, url, executor=executor, jobs=jobs, worker_args=worker_args, resources=resources,
                        folder=folder)


def wait_for_jobs(info: StudyInfo, url: str, submitted: Submitted, progress: Progress | None = None,
                  poll_s: float = 2.0) -> StudyOutcome:
    """Wait until every submitted job has ended; the study's counts then say how it went (or that it
    was deleted meanwhile: `study delete` stops the jobs' workers too)."""
    start = time.perf_counter()
    last: PhaseCounts = []
    while submitted.running():
        phases = _read(url, lambda repo: phase_counts(repo, info))
        if progress is not None and not _read(url, lambda repo: vanished(repo, info, phases)):
            progress(phases, None)
            last = phases
        time.sleep(poll_s)
    phases = _read(url, lambda repo: phase_counts(repo, info))
    wall_s = time.perf_counter() - start
    if _read(url, lambda repo: vanished(repo, info, phases)):
        return StudyOutcome(info.name, last or phases, wall_s, stopped=deleted_message(info.name), deleted=True)
    return StudyOutcome(info.name, phases, wall_s)


def _work(info: StudyInfo, url: str, devices: list[str], options: WorkerOptions, on_ready: OnReady | None,
          progress: Progress | None, on_event: OnEvent | None) -> StudyOutcome:
    if on_ready is not None:
        on_ready(info, devices)
    pause_point("start")
    if stop_requested():  # a stop whose KeyboardInterrupt was swallowed: start no worker
        raise KeyboardInterrupt
    return run_local(info, url, devices, options, progress=progress, on_event=on_event)


def _finished_already(path: str | Path, overrides: list[str] | None, url: str,
                      new_name: str | None) -> tuple[StudyInfo, StudyOutcome] | None:
    """(info, outcome) when the stored study has exactly this file and every cell is final; else None."""
    stored = stored_form(path, overrides)
    if stored is None:
        return None
    if new_name:
        stored = {**stored, "name": new_name}
    if sqlite_file_missing(url):
        return None
    db = Database(url)
    try:
        if not db.has_tables():
            return None
        repo = Repository(db)
        study = repo.get_study(stored.get("name", ""))
        if study is None or study.spec != stored:
            return None
        info = info_of(repo, study.name, with_design=False)
        outcome = StudyOutcome(info.name, phase_counts(repo, info), 0.0)
    finally:
        db.dispose()
    if not outcome.done:
        return None
    return StudyInfo(info.id, info.name, info.limits, info.phases, None, False,
                     f"study {info.name!r} is finished: every cell is final, nothing to run"), outcome


def status(name: str, url: str) -> dict[str, Any]:
    """Cells done / running / failed / crashed / pending (and a tuned study's slots)."""
    return _read(url, lambda repo: repo.study_status(name))


def summaries(url: str) -> list[StudySummary]:
    """Every study in the database with its progress."""
    return _read(url, lambda repo: repo.summaries())


def show(name: str, url: str) -> tuple[StoredStudy, list[tuple[str, int, int, str | None, float | None]]]:
    """The study's provenance and a summary per group."""
    def both(repo: Repository) -> tuple[StoredStudy, list[tuple[str, int, int, str | None, float | None]]]:
        study = repo.require_study(name)
        return study, repo.group_summary(study.id)

    return _read(url, both)


def _read(url: str, fn: Callable[[Repository], T]) -> T:
    """`fn` on the database at `url`, read as it is; a shipped `results.db.gz` is read from a copy."""
    db = Database(readable_copy(url), must_exist=True)
    try:
        db.check_schema()
        return fn(Repository(db))
    finally:
        db.dispose()
