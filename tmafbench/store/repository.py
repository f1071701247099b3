"""Short transactions on the results tables: studies, cells, runs (claim, heartbeat, finish).

Scheduling safety lives here. A worker *claims* a cell by inserting its next run row
(status "running"); the unique (cell_id, attempt) constraint lets only one of two racing workers
win, and the partial unique index "one completed run per cell" makes a duplicate completion
impossible. A run whose heartbeat is older than the grace period is marked "interrupted" and its
cell becomes claimable again (as the next attempt).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database
from tmafbench.store.environment import EnvironmentInfo
from tmafbench.store.schema import (
    Artifact,
    Cell,
    Environment,
    EpochMetric,
    FinalMetric,
    Run,
    Study,
    Timing,
    utcnow,
)

FINAL_OK = ("completed", "diverged")  # a cell with such a run is done; diverged is not retried


class StudyNotFoundError(TmafbenchError):
    pass


@dataclass(frozen=True)
class Claim:
    """A cell a worker now owns: the run row it inserted and what it needs to train."""

    run_id: int
    cell_id: int
    attempt: int
    config_hash: str
    config: dict[str, Any]


@dataclass(frozen=True)
class Counts:
    total: int
    completed: int  # completed or diverged
    diverged: int
    running: int
    failed: int  # final failures (max_retries failed attempts)
    pending: int

    @property
    def done(self) -> bool:
        return self.completed + self.failed >= self.total


def finite(value: float | None) -> float | None:
    """NaN/inf are stored as NULL (schema convention)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; all ours are UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


class Repository:
    """All reads and writes of the tmaf_* tables, each in one short transaction."""

    def __init__(self, db: Database):
        self.db = db

    # --- studies and cells ----------------------------------------------------------------

    def get_study(self, name: str) -> Study | None:
        with self.db.session() as s:
            return s.scalar(select(Study).where(Study.name == name))

    def require_study(self, name: str) -> Study:
        study = self.get_study(name)
        if study is None:
            names = self.study_names()
            hint = f"; studies here: {', '.join(names)}" if names else "; no studies in this database"
            raise StudyNotFoundError(f"no study {name!r} in {self.db.safe_url}{hint}")
        return study

    def study_names(self) -> list[str]:
        with self.db.session() as s:
            return list(s.scalars(select(Study.name).order_by(Study.name)))

    def create_study(self, *, name: str, description: str, spec: dict, spec_hash: str, reference: dict | None,
                     version: str, git_commit: str | None, cells: Iterable[Any], kind: str = "grid",
                     parent_id: int | None = None) -> int:
        """Insert the study and all its cells in one transaction; returns the study id."""
        with self.db.session() as s:
            study = Study(name=name, description=description, kind=kind, parent_id=parent_id, spec=spec,
                          spec_hash=spec_hash, reference=reference, tmafbench_version=version, git_commit=git_commit)
            s.add(study)
            s.flush()
            s.add_all(self._cell_rows(study.id, cells))
            return study.id

    @staticmethod
    def _cell_rows(study_id: int, cells: Iterable[Any]) -> list[Cell]:
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

    def replace_design(self, study_id: int, *, spec: dict, spec_hash: str, reference: dict | None,
                       cells: list[Any]) -> tuple[int, int, int]:
        """`--force`: keep cells in both designs, delete cells no longer in it, add new ones.

        Returns (kept, removed, added).
        """
        wanted = {c.config_hash: c for c in cells}
        with self.db.session() as s:
            existing = dict(s.execute(select(Cell.config_hash, Cell.id).where(Cell.study_id == study_id)).all())
            gone = [cid for h, cid in existing.items() if h not in wanted]
            if gone:
                s.execute(delete(Cell).where(Cell.id.in_(gone)))
            new = [c for h, c in wanted.items() if h not in existing]
            s.add_all(self._cell_rows(study_id, new))
            s.execute(update(Study).where(Study.id == study_id).values(spec=spec, spec_hash=spec_hash, reference=reference))
            return len(existing) - len(gone), len(gone), len(new)

    def refresh_documentation(self, study_id: int, *, description: str, reference: dict | None, spec: dict,
                              spec_hash: str) -> list[str]:
        """Store the file's description, published reference and spec text when its design is unchanged.

        They document a study without changing what runs, so editing them (say, adding the paper's
        numbers to `[reference]`) and running the file again updates them and trains nothing.
        Returns which of "description" and "reference" changed (the spec text is stored silently).
        """
        with self.db.session() as s:
            study = s.get(Study, study_id)
            changed = [n for n, old, new in (("description", study.description, description),
                                             ("reference", study.reference, reference)) if old != new]
            if changed or study.spec != spec or study.spec_hash != spec_hash:
                s.execute(update(Study).where(Study.id == study_id).values(
                    description=description, reference=reference, spec=spec, spec_hash=spec_hash))
            return changed

    def cell_hashes(self, study_id: int) -> list[str]:
        with self.db.session() as s:
            return list(s.scalars(select(Cell.config_hash).where(Cell.study_id == study_id).order_by(Cell.id)))

    def delete_study(self, name: str) -> None:
        with self.db.session() as s:
            s.execute(delete(Study).where(Study.name == name))

    # --- environment ------------------------------------------------------------------------

    def environment_id(self, info: EnvironmentInfo) -> int:
        """The row for this environment, inserted on first use (deduplicated by hash)."""
        env_hash = info.env_hash()
        for _ in range(3):
            with self.db.session() as s:
                found = s.scalar(select(Environment.id).where(Environment.env_hash == env_hash))
                if found is not None:
                    return found
            try:
                with self.db.session() as s:
                    row = Environment(env_hash=env_hash, **info.__dict__)
                    s.add(row)
                    s.flush()
                    return row.id
            except IntegrityError:  # another worker inserted it first
                continue
        raise TmafbenchError("could not record the environment")

    # --- scheduling ---------------------------------------------------------------------------

    def mark_stale_runs(self, study_id: int, grace_s: float) -> int:
        """Runs of this study whose heartbeat is older than `grace_s`: "interrupted". Returns how many."""
        cutoff = utcnow() - timedelta(seconds=grace_s)
        with self.db.session() as s:
            stale = select(Run.id).join(Cell).where(
                Cell.study_id == study_id, Run.status == "running", Run.heartbeat_at < cutoff
            )
            ids = list(s.scalars(stale))
            if ids:
                s.execute(update(Run).where(Run.id.in_(ids), Run.status == "running").values(
                    status="interrupted", ended_at=utcnow(), error=f"no heartbeat for {grace_s:g} s: worker died"))
            return len(ids)

    def _claimable(self, study_id: int, max_retries: int):
        busy = exists().where(Run.cell_id == Cell.id, Run.status.in_(FINAL_OK + ("running",)))
        failed = select(func.count(Run.id)).where(Run.cell_id == Cell.id, Run.status == "failed").scalar_subquery()
        return select(Cell.id, Cell.config_hash, Cell.config).where(
            Cell.study_id == study_id, ~busy, failed < max_retries
        ).order_by(Cell.id)

    def claim_cell(self, study_id: int, max_retries: int, *, host: str, worker: str, device: str,
                   environment_id: int | None = None) -> Claim | None:
        """Take the next free cell by inserting its next run; None when no cell is free now."""
        for _ in range(8):
            try:
                with self.db.session() as s:
                    # SQLite: BEGIN IMMEDIATE already serialises claims. PostgreSQL: the queue
                    # pattern, where a cell row another claim holds is skipped, not waited for.
                    query = self._claimable(study_id, max_retries).limit(1)
                    if s.bind.dialect.name == "postgresql":
                        query = query.with_for_update(of=Cell, skip_locked=True)
                    row = s.execute(query).first()
                    if row is None:
                        return None
                    cell_id, config_hash, config = row
                    attempt = (s.scalar(select(func.max(Run.attempt)).where(Run.cell_id == cell_id)) or 0) + 1
                    now = utcnow()
                    run = Run(cell_id=cell_id, attempt=attempt, status="running", host=host, worker=worker,
                              device=device, environment_id=environment_id, started_at=now, heartbeat_at=now)
                    s.add(run)
                    s.flush()
                    return Claim(run.id, cell_id, attempt, config_hash, config)
            except IntegrityError:  # another worker claimed the same attempt first: try again
                continue
        return None

    def heartbeat(self, run_id: int) -> None:
        with self.db.session() as s:
            s.execute(update(Run).where(Run.id == run_id, Run.status == "running").values(heartbeat_at=utcnow()))

    def finish_run(self, run_id: int, result: Any, optuna_trial_number: int | None = None) -> str:
        """Store a TrialResult (status, metrics, timings, artifacts) in ONE transaction.

        Returns the stored status; a completion for a cell that another run already completed
        (possible only after a false stale verdict) is stored as "interrupted" instead.
        """
        try:
            with self.db.session() as s:
                self._write_result(s, run_id, result, optuna_trial_number)
            return result.status
        except IntegrityError:
            with self.db.session() as s:
                s.execute(update(Run).where(Run.id == run_id).values(
                    status="interrupted", ended_at=utcnow(), error="duplicate: the cell was completed by another run"))
            return "interrupted"

    def _write_result(self, s: Any, run_id: int, result: Any, optuna_trial_number: int | None) -> None:
        s.execute(update(Run).where(Run.id == run_id).values(
            optuna_trial_number=optuna_trial_number,
            status=result.status, ended_at=utcnow(), error=result.error, device=result.device,
            num_params=result.num_params, num_act_params=result.num_act_params,
            metric_name=result.metric_name, metric_direction=result.metric_direction))
        rows: list[Any] = []
        for rec in result.epochs:
            values = {"train_loss": rec.train_loss, **rec.metrics, "epoch_time_s": rec.epoch_time_s,
                      "eval_time_s": rec.eval_time_s, "samples_per_s": rec.samples_per_s, "lr": rec.lr}
            rows += [EpochMetric(run_id=run_id, epoch=rec.epoch, name=k, value=finite(v)) for k, v in values.items()]
        rows += [FinalMetric(run_id=run_id, name=k, value=finite(v)) for k, v in result.final_metrics.items()]
        rows += [Timing(run_id=run_id, name=k, value=v) for k, v in timings(result).items()]
        rows += [Artifact(run_id=run_id, name=k, data=v) for k, v in (result.artifacts or {}).items()]
        s.add_all(rows)

    def mark_interrupted(self, run_id: int, error: str, optuna_trial_number: int | None = None) -> None:
        with self.db.session() as s:
            s.execute(update(Run).where(Run.id == run_id, Run.status == "running").values(
                status="interrupted", ended_at=utcnow(), error=error, optuna_trial_number=optuna_trial_number))

    def mark_failed(self, run_id: int, error: str) -> None:
        with self.db.session() as s:
            s.execute(update(Run).where(Run.id == run_id).values(status="failed", ended_at=utcnow(), error=error))

    # --- status --------------------------------------------------------------------------------

    def counts(self, study_id: int, max_retries: int) -> Counts:
        """Cells by state: done (completed/diverged), running, final failures, pending."""
        with self.db.session() as s:
            total = s.scalar(select(func.count(Cell.id)).where(Cell.study_id == study_id)) or 0

            def cells_with(*condition: Any) -> int:
                q = select(func.count(func.distinct(Run.cell_id))).join(Cell).where(Cell.study_id == study_id, *condition)
                return s.scalar(q) or 0

            completed = cells_with(Run.status.in_(FINAL_OK))
            diverged = cells_with(Run.status == "diverged")
            running = cells_with(Run.status == "running")
            other = aliased(Run)
            failed_counts = (
                select(Run.cell_id).join(Cell).where(Cell.study_id == study_id, Run.status == "failed")
                .group_by(Run.cell_id).having(func.count(Run.id) >= max_retries)
                .where(~exists().where(and_(other.cell_id == Run.cell_id, other.status.in_(FINAL_OK + ("running",)))))
            )
            failed = len(s.execute(failed_counts).all())
        pending = max(0, total - completed - running - failed)
        return Counts(total, completed, diverged, running, failed, pending)

    def study_status(self, name: str) -> dict[str, Any]:
        """`study status` in one dict: the cells by state and whether the study is finished.

        A tuned study's evaluation cells only exist once tuning is over, so its status also gives the
        tuning slots (its child study of kind "tune") and is finished only when both phases are.
        """
        study = self.require_study(name)
        max_retries = int(study.spec.get("max_retries", 2))
        c = self.counts(study.id, max_retries)
        status: dict[str, Any] = {"study": name, "total": c.total, "done": c.completed, "diverged": c.diverged,
                                  "running": c.running, "failed": c.failed, "pending": c.pending, "finished": c.done}
        with self.db.session() as s:
            tune_id = s.scalar(select(Study.id).where(Study.parent_id == study.id, Study.kind == "tune"))
        if tune_id is not None:
            t = self.counts(tune_id, max_retries)
            status["tuning"] = {"total": t.total, "done": t.completed, "running": t.running, "failed": t.failed,
                                "pending": t.pending}
            status["phase"] = "tuning" if not t.done else "evaluation"
            status["finished"] = t.done and c.done and c.total > 0
        return status

    def group_summary(self, study_id: int) -> list[tuple[str, int, int, str | None, float | None]]:
        """Per cell label: (label, cells, completed runs, metric name, mean of that metric over them)."""
        with self.db.session() as s:
            return [tuple(row) for row in s.execute(
                select(Cell.label, func.count(func.distinct(Cell.id)), func.count(func.distinct(Run.id)), Run.metric_name,
                       func.avg(FinalMetric.value))
                .join(Run, Run.cell_id == Cell.id, isouter=True)
                .join(FinalMetric, (FinalMetric.run_id == Run.id) & (FinalMetric.name == Run.metric_name), isouter=True)
                .where(Cell.study_id == study_id, (Run.status == "completed") | (Run.id.is_(None)))
                .group_by(Cell.label, Run.metric_name).order_by(Cell.label)).all()]

    def completed_durations(self, study_id: int) -> list[float]:
        """Wall seconds of this study's completed runs (for the ETA)."""
        with self.db.session() as s:
            rows = s.execute(select(Run.started_at, Run.ended_at).join(Cell).where(
                Cell.study_id == study_id, Run.status.in_(FINAL_OK), Run.ended_at.is_not(None))).all()
        return [(as_utc(end) - as_utc(start)).total_seconds() for start, end in rows]

    def duplicate_completions(self, study_id: int) -> int:
        """Cells with more than one completed run (must be 0; the index forbids it)."""
        with self.db.session() as s:
            q = select(Run.cell_id).join(Cell).where(Cell.study_id == study_id, Run.status == "completed").group_by(
                Run.cell_id).having(func.count(Run.id) > 1)
            return len(s.execute(q).all())


def timings(result: Any) -> dict[str, float]:
    """Run-level timings (names from the schema conventions)."""
    epochs = result.epochs
    out = {"total_train_s": float(result.total_train_time_s)}
    if epochs:
        out["median_epoch_s"] = statistics.median(e.epoch_time_s for e in epochs)
        out["mean_samples_per_s"] = statistics.fmean(e.samples_per_s for e in epochs)
        out["total_eval_s"] = sum(e.eval_time_s for e in epochs)
    return {k: v for k, v in out.items() if math.isfinite(v)}
