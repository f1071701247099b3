"""Study lifecycle in the store: create a study with its cells, load, redesign, document, delete."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Protocol, Sequence

from sqlalchemy import case, delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tmafbench.core import TrialConfig
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database
from tmafbench.store.optuna_storage import drop_trials
from tmafbench.store.schema import Cell, Run, Study


class StudyNotFoundError(TmafbenchError):
    pass


class StudyDeleted(TmafbenchError):
    """The study was deleted (`tmafbench study delete`) while a worker ran it: there is nothing left to run."""


@dataclass(frozen=True)
class StoredStudy:
    """A study row, detached from any session."""

    id: int
    name: str
    kind: str  # grid | tune | eval
    description: str
    spec: dict[str, Any]
    spec_hash: str
    reference: dict[str, Any] | None
    parent_id: int | None
    tmafbench_version: str
    git_commit: str | None
    created_at: datetime

    @property
    def max_retries(self) -> int:
        return int(self.spec.get("max_retries", 2))

    @property
    def max_crashes(self) -> int:
        return int(self.spec.get("max_crashes", 2))

    @classmethod
    def of(cls, row: Study) -> "StoredStudy":
        return cls(row.id, row.name, row.kind, row.description, row.spec, row.spec_hash, row.reference,
                   row.parent_id, row.tmafbench_version, row.git_commit, row.created_at)


class PlannedCell(Protocol):
    """What the store keeps of a cell it is given: study/cells.CellPlan, study/plan.SlotPlan."""

    @property
    def config(self) -> TrialConfig: ...
    @property
    def axes(self) -> dict[str, Any]: ...
    @property
    def label(self) -> str: ...
    @property
    def activation(self) -> str: ...
    @property
    def grid(self) -> str | None: ...
    @property
    def intervals(self) -> int | None: ...
    @property
    def config_hash(self) -> str: ...
    @property
    def group_hash(self) -> str: ...


def cell_rows(study_id: int, cells: Iterable[PlannedCell]) -> list[Cell]:
    """ORM rows for cell plans."""
    rows = []
    for c in cells:
        cfg = c.config
        rows.append(Cell(
            study_id=study_id, config_hash=c.config_hash, group_hash=c.group_hash, label=c.label,
            config=cfg.to_dict(), task=cfg.task, model=cfg.model, activation=c.activation, grid=c.grid,
            intervals=c.intervals, depth=cfg.model_params.get("depth"), width=cfg.model_params.get("width"),
            seed=cfg.seed, axes=c.axes,
        ))
    return rows


class StudyStore:
    """Studies and their cells (a part of Repository, which sets `self.db`)."""

    db: Database

    def get_study(self, name: str) -> StoredStudy | None:
        with self.db.session() as s:
            row = s.scalar(select(Study).where(Study.name == name))
            return StoredStudy.of(row) if row is not None else None

    def require_study(self, name: str) -> StoredStudy:
        study = self.get_study(name)
        if study is None:
            names = self.study_names()
            hint = f"; studies here: {', '.join(names)}" if names else "; no studies in this database"
            raise StudyNotFoundError(f"no study {name!r} in {self.db.safe_url}{hint}")
        return study

    def study_exists(self, study_id: int) -> bool:
        """Whether the study row is still there (a worker asks when its run rows vanished)."""
        with self.db.session() as s:
            return bool(s.scalar(select(exists().where(Study.id == study_id))))

    def child_study(self, parent_id: int, kind: str) -> StoredStudy | None:
        """The study of `kind` whose parent is `parent_id` (a tuned study's tuning slots)."""
        with self.db.session() as s:
            row = s.scalar(select(Study).where(Study.parent_id == parent_id, Study.kind == kind))
            return StoredStudy.of(row) if row is not None else None

    def study_names(self, top_level: bool = False) -> list[str]:
        """Every study's name, sorted; `top_level` leaves out the tuning slots' child studies."""
        query = select(Study.name).order_by(Study.name)
        if top_level:
            query = query.where(Study.parent_id.is_(None))
        with self.db.session() as s:
            return list(s.scalars(query))

    def create_study(self, *, name: str, description: str, spec: dict[str, Any], spec_hash: str,
                     reference: dict[str, Any] | None, version: str, git_commit: str | None,
                     cells: Iterable[PlannedCell], kind: str = "grid",
                     parent_id: int | None = None) -> int:
        """Insert the study and all its cells in one transaction; returns the study id."""
        with self.db.session() as s:
            study = Study(name=name, description=description, kind=kind, parent_id=parent_id, spec=spec,
                          spec_hash=spec_hash, reference=reference, tmafbench_version=version, git_commit=git_commit)
            s.add(study)
            s.flush()
            s.add_all(cell_rows(study.id, cells))
            return study.id

    def add_cells(self, study_id: int, cells: Sequence[PlannedCell]) -> int:
        """Insert the cells whose hash the study lacks, in one transaction; returns how many were added.

        Several processes may add the same cells at once (every worker that sees tuning end computes
        the same evaluation cells): the unique (study, hash) constraint lets one win; the others look
        again and find nothing missing.
        """
        for _ in range(5):
            try:
                with self.db.session() as s:
                    have = set(s.scalars(select(Cell.config_hash).where(Cell.study_id == study_id)))
                    missing = [c for c in cells if c.config_hash not in have]
                    s.add_all(cell_rows(study_id, missing))
                    return len(missing)
            except IntegrityError:
                continue
        raise TmafbenchError("could not add the cells: other processes kept adding them at the same moment")

    def replace_design(self, study_id: int, *, spec: dict[str, Any], spec_hash: str, reference: dict[str, Any] | None,
                       cells: Sequence[PlannedCell], optuna_study: str | None = None) -> tuple[int, int, int]:
        """`--force`: keep cells in both designs, delete cells no longer in it (their runs and metrics
        cascade), add new ones; and in the same transaction delete the trials of the Optuna study
        `optuna_study` (the mirror of the study's runs) whose cell is no longer in it.

        Returns (kept, removed, added).
        """
        wanted = {c.config_hash: c for c in cells}
        with self.db.session() as s:
            existing = dict(s.execute(select(Cell.config_hash, Cell.id).where(Cell.study_id == study_id)).all())
            gone = [cid for h, cid in existing.items() if h not in wanted]
            if gone:
                s.execute(delete(Cell).where(Cell.id.in_(gone)))
            if optuna_study is not None:
                self._renumber_runs(s, study_id, drop_trials(s, optuna_study, keep_cells=set(wanted)))
            new = [c for h, c in wanted.items() if h not in existing]
            s.add_all(cell_rows(study_id, new))
            s.execute(update(Study).where(Study.id == study_id).values(spec=spec, spec_hash=spec_hash, reference=reference))
            return len(existing) - len(gone), len(gone), len(new)

    @staticmethod
    def _renumber_runs(s: Session, study_id: int, renumbered: dict[int, int]) -> None:
        """The study's runs follow their Optuna trials' new numbers (optuna_storage.drop_trials)."""
        if renumbered:
            s.execute(update(Run).where(Run.cell_id.in_(select(Cell.id).where(Cell.study_id == study_id)),
                                        Run.optuna_trial_number.in_(list(renumbered)))
                      .values(optuna_trial_number=case(renumbered, value=Run.optuna_trial_number))
                      .execution_options(synchronize_session=False))

    def refresh_documentation(self, study_id: int, *, description: str, reference: dict[str, Any] | None,
                              spec: dict[str, Any], spec_hash: str) -> list[str]:
        """Store the file's description, published reference and spec text when its design is unchanged.

        They document a study without changing what runs, so editing them (say, adding the paper's
        numbers to `[reference]`) and running the file again updates them and trains nothing.
        Returns which of "description", "reference" and "[report] table" changed; the rest of the
        spec text is stored silently.
        """
        with self.db.session() as s:
            study = s.get(Study, study_id)
            if study is None:
                raise StudyNotFoundError(f"no study with id {study_id}")
            changed = [n for n, old, new in (("description", study.description, description),
                                             ("reference", study.reference, reference),
                                             ("[report] table", (study.spec or {}).get("report"), spec.get("report")))
                       if old != new]
            if changed or study.spec != spec or study.spec_hash != spec_hash:
                s.execute(update(Study).where(Study.id == study_id).values(
                    description=description, reference=reference, spec=spec, spec_hash=spec_hash))
            return changed

    def cell_hashes(self, study_id: int) -> list[str]:
        with self.db.session() as s:
            return list(s.scalars(select(Cell.config_hash).where(Cell.study_id == study_id).order_by(Cell.id)))

    def delete_study(self, name: str) -> None:
        """Delete the study, its child studies, cells, runs and metrics (foreign keys cascade)."""
        with self.db.session() as s:
            parent = s.scalar(select(Study.id).where(Study.name == name))
            if parent is not None:
                s.execute(delete(Study).where(Study.parent_id == parent))
            s.execute(delete(Study).where(Study.name == name))
