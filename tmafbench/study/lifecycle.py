"""Create, load and delete studies: our rows in the store and the Optuna studies that mirror them.

A study has one or two *phases*, each a queue of cells that workers drain in order:
- a grid study (kind "grid"): its cells;
- a tuned study (kind "eval", with a child study of kind "tune"): the tuning slots, then the
  evaluation cells, which are added when tuning is over (tmafbench/study/tuning.py). Its groups and
  slots are study/plan.py's.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmafbench import __version__
from tmafbench.core import TrialConfig, metric_direction
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database, sqlite_file_missing
from tmafbench.store.optuna_storage import optuna_storage
from tmafbench.store.repository import Limits, Repository, StoredStudy
from tmafbench.store.setup_lock import setup_lock
from tmafbench.study.design import StudyDesign, design_from_dict
from tmafbench.study.plan import groups_of, slot_plans, tune_of, tune_study_name
from tmafbench.study.validate import check_data

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


class SpecChangedError(TmafbenchError):
    """The study exists with another design than the study file now gives."""


@dataclass(frozen=True)
class Phase:
    """One queue of cells: the study whose cells it holds, and how the progress display names it."""

    label: str  # "cells", "tuning slots" or "evaluation cells"
    study_id: int
    tuning: bool = False


@dataclass(frozen=True)
class StudyInfo:
    """A study ready for workers."""

    id: int  # the main study (its evaluation cells, for a tuned study)
    name: str
    limits: Limits
    phases: tuple[Phase, ...]
    design: StudyDesign | None = None  # needed by tuned studies' workers; None for a grid study
    created: bool = False
    message: str = ""

    @property
    def tuned(self) -> bool:
        return len(self.phases) > 1


def git_commit() -> str | None:
    """The checkout's commit (None outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# --- create or load ----------------------------------------------------------------------------------


def prepare(design: StudyDesign, url: str, *, force: bool = False) -> StudyInfo:
    """Create the tables and the study (or load it), after checking the data of every cell that will run.

    A changed design is refused unless `force` (grid studies only). Nothing is written before the
    checks pass. Any number of processes may prepare the same study at once (every task of a job
    array, say): under the database's setup lock one creates it and the others resume it.
    """
    if force and design.tuned:
        raise TmafbenchError("--force is not offered for a tuned study: use --new-name NAME, or delete the study")
    with setup_lock(url):
        info = _create_or_load(design, url, force)
        _create_optuna_studies(url, info)  # Optuna's tables too: its first use creates them
    return info


def _create_or_load(design: StudyDesign, url: str, force: bool) -> StudyInfo:
    fresh = sqlite_file_missing(url)  # then no connection may create the file before the checks pass
    if fresh:
        check_data(cell.config for cell in design.cells)
    db = Database(url)
    try:
        repo = Repository(db)
        existing = None if fresh or not db.has_tables() else repo.get_study(design.name)
        if not fresh:
            _check_data_to_run(repo, design, existing)
        db.create_all()  # once, in the parent, before any worker starts
        if design.tuned:
            info = _prepare_tuned(repo, design, existing)
        else:
            info = _prepare_grid(repo, design, existing, force)
    finally:
        db.dispose()
    return info


def _check_data_to_run(repo: Repository, design: StudyDesign, existing: StoredStudy | None) -> None:
    """Missing data fails before anything is written, for the cells that will run: every cell of a
    new (or redesigned) study, the pending cells of a resumed one; a finished study needs no data."""
    if existing is None or not design.same_design(existing.spec_hash):
        check_data(cell.config for cell in design.cells)
        return
    limits = Limits.of(existing)
    configs = repo.pending_configs(existing.id, limits)
    if design.tuned:
        tune = repo.child_study(existing.id, "tune")
        tuning_left = tune is None or not repo.counts(tune.id, limits).done
        if tuning_left:  # the slots and, after them, every evaluation cell will train
            configs += [cell.config.to_dict() for cell in design.cells]
    check_data(TrialConfig.from_dict(c) for c in configs)


def _metadata(design: StudyDesign) -> dict[str, Any]:
    reference = design.spec.reference.model_dump(mode="json") if design.spec.reference else None
    return dict(description=design.spec.description, spec=design.data, spec_hash=design.design_hash(),
                reference=reference, version=__version__, git_commit=git_commit())


def _prepare_grid(repo: Repository, design: StudyDesign, existing: StoredStudy | None, force: bool) -> StudyInfo:
    name, cells, meta = design.name, design.cells, _metadata(design)
    if existing is None:
        study_id = repo.create_study(name=name, cells=cells, kind="grid", **meta)
        message, created = f"created study {name!r} with {len(cells)} cells", True
    elif existing.kind != "grid":
        raise SpecChangedError(f"study {name!r} already exists as a tuned study; use --new-name NAME for a separate study")
    elif not design.same_design(existing.spec_hash):
        if not force:
            raise SpecChangedError(
                f"study {name!r} already exists with other cells ({len(repo.cell_hashes(existing.id))} stored, "
                f"{len(cells)} in the file); use --new-name NAME for a separate study, or --force to keep the "
                "results of matching cells, drop the others and add the new ones")
        kept, removed, added = repo.replace_design(existing.id, spec=meta["spec"], spec_hash=meta["spec_hash"],
                                                   reference=meta["reference"], cells=cells, optuna_study=name)
        study_id, created = existing.id, False
        message = f"study {name!r} redesigned: kept {kept} cells, removed {removed}, added {added}"
    else:
        study_id, created = existing.id, False
        updated = repo.refresh_documentation(study_id, description=meta["description"], reference=meta["reference"],
                                             spec=meta["spec"], spec_hash=meta["spec_hash"])
        message = f"resuming study {name!r} ({len(cells)} cells)" + _updated(updated)
    limits = Limits(design.spec.max_retries, design.spec.max_crashes)
    return StudyInfo(study_id, name, limits, (Phase("cells", study_id),), None, created, message)


def _prepare_tuned(repo: Repository, design: StudyDesign, existing: StoredStudy | None) -> StudyInfo:
    name, meta = design.name, _metadata(design)
    groups = groups_of(design, name)
    updated: list[str] = []
    if existing is not None and (existing.kind != "eval" or not design.same_design(existing.spec_hash)):
        raise SpecChangedError(
            f"study {name!r} already exists with another design; use --new-name NAME for a separate study "
            "(or `tmafbench study delete` it first)")
    if existing is not None:  # same design: take the file's description and reference as they are now
        updated = repo.refresh_documentation(existing.id, description=meta["description"], reference=meta["reference"],
                                             spec=meta["spec"], spec_hash=meta["spec_hash"])
    main_id = existing.id if existing else repo.create_study(name=name, cells=[], kind="eval", **meta)
    tune = repo.get_study(tune_study_name(name))
    tune_id = tune.id if tune else repo.create_study(
        name=tune_study_name(name), cells=slot_plans(design, groups), kind="tune", parent_id=main_id,
        **{**meta, "reference": None, "spec": {**meta["spec"], "tune": tune_of(design).as_run()}})  # as it runs
    trials = tune_of(design).trials
    slots = len(groups) * trials
    message = (f"{'resuming' if existing else 'created'} tuned study {name!r}: {len(groups)} groups x "
               f"{trials} trials = {slots} tuning slots, then {len(design.cells)} evaluation cells"
               + _updated(updated))
    limits = Limits(design.spec.max_retries, design.spec.max_crashes)
    phases = (Phase("tuning slots", tune_id, tuning=True), Phase("evaluation cells", main_id))
    return StudyInfo(main_id, name, limits, phases, design, existing is None, message)


def _updated(fields: list[str]) -> str:
    return f"; updated its {' and '.join(fields)} from the file" if fields else ""


def _create_optuna_studies(url: str, info: StudyInfo) -> None:
    """The Optuna study mirroring the runs and, for a tuned study, one study per group."""
    import optuna

    storage = optuna_storage(url)
    try:
        optuna.create_study(study_name=info.name, storage=storage, load_if_exists=True, direction="minimize")
        if info.design is None:
            return
        tune = tune_of(info.design)
        for group in groups_of(info.design, info.name):
            study = optuna.create_study(study_name=group.optuna_name, storage=storage, load_if_exists=True,
                                        direction=metric_direction(tune.objective))
            for key, value in (("tmafbench_study", info.name), ("group", group.label), ("metric", tune.objective),
                               ("pruner", tune.pruner)):
                study.set_user_attr(key, value)
    finally:
        storage.engine.dispose()


def load(name: str, url: str) -> StudyInfo:
    """A stored study as workers see it (a worker on another machine has no study file)."""
    db = Database(url)
    try:
        db.check_schema()
        return info_of(Repository(db), name)
    finally:
        db.dispose()


def info_of(repo: Repository, name: str, with_design: bool = True) -> StudyInfo:
    """A stored study's phases; a tuned study's design is rebuilt from its stored spec (validated,
    which imports torch) unless `with_design` is False (enough for counting)."""
    study = repo.require_study(name)
    limits = Limits.of(study)
    if study.kind == "grid":
        return StudyInfo(study.id, name, limits, (Phase("cells", study.id),))
    tune = repo.child_study(study.id, "tune")
    if study.kind != "eval" or tune is None:
        raise TmafbenchError(f"study {name!r} is a {study.kind} study; run its parent study instead")
    design = design_from_dict(study.spec, source=f"stored spec of {name!r}") if with_design else None
    phases = (Phase("tuning slots", tune.id, tuning=True), Phase("evaluation cells", study.id))
    return StudyInfo(study.id, name, limits, phases, design)


# --- delete -------------------------------------------------------------------------------------------


def delete(name: str, url: str) -> None:
    """Delete our rows of the study (cells, runs, metrics, its tuning slots) and its Optuna studies."""
    import optuna

    db = Database(url, must_exist=True)
    try:
        db.check_schema()
        repo = Repository(db)
        repo.require_study(name)
        repo.delete_study(name)
    finally:
        db.dispose()
    storage = optuna_storage(url)
    try:
        for study_name in _optuna_names(storage, name):
            optuna.delete_study(study_name=study_name, storage=storage)
    finally:
        storage.engine.dispose()


def _optuna_names(storage: BaseStorage, name: str) -> list[str]:
    """The Optuna studies of study `name`: its mirror and a tuned study's per-group studies."""
    prefix = tune_study_name(name) + "/"
    return [s.study_name for s in storage.get_all_studies() if s.study_name == name or s.study_name.startswith(prefix)]
