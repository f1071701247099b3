"""The run queue: claim a cell, heartbeat it, sweep runs whose worker died, store the result.

Scheduling safety lives here. A worker *claims* a cell by inserting its next run row
(status "running"); the unique (cell_id, attempt) constraint lets only one of two racing workers
win, and the partial unique index "one completed run per cell" makes a duplicate completion
impossible. A run whose heartbeat is older than the grace period is marked "lost" and its cell
becomes claimable again (as the next attempt).

A cell is final when it has a completed or diverged run, when `max_retries` attempts failed
(an exception in training), or when `max_crashes` attempts were lost (a cell that segfaults or
is OOM-killed would otherwise kill every worker in turn).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence, cast

from sqlalchemy import CursorResult, ScalarSelect, Select, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tmafbench.core import FINAL_OK, RunStatus, TrialResult
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database
from tmafbench.store.environment import EnvironmentInfo
from tmafbench.store.schema import Artifact, Base, Cell, Environment, EpochMetric, FinalMetric, Run, Study, Timing, utcnow
from tmafbench.store.studies import StoredStudy, StudyDeleted

BUSY = FINAL_OK + (RunStatus.RUNNING,)  # a cell with such a run is not claimable
PACK_LOOKAHEAD = 4  # a pack of K cells is picked among the next K x this free cells


@dataclass(frozen=True)
class Limits:
    """How many attempts of a cell may fail (exception) or be lost (worker died) before it is final."""

    max_retries: int = 2
    max_crashes: int = 2

    @classmethod
    def of(cls, study: StoredStudy) -> Limits:
        return cls(study.max_retries, study.max_crashes)


@dataclass(frozen=True)
class Claim:
    """A cell a worker now owns: the run row it inserted and what it needs to train."""

    run_id: int
    cell_id: int
    attempt: int
    config_hash: str
    group_hash: str
    config: dict[str, Any]
    study_id: int


@dataclass(frozen=True)
class Counts:
    total: int
    completed: int  # completed or diverged
    diverged: int
    running: int
    failed: int  # final failures (max_retries failed attempts)
    pending: int
    crashed: int = 0  # final: max_crashes attempts lost their worker

    @property
    def done(self) -> bool:
        return self.completed + self.failed + self.crashed >= self.total

    @property
    def finished(self) -> int:
        """Cells that will not run again: done, failed or crashed."""
        return self.completed + self.failed + self.crashed


def finite(value: float | None) -> float | None:
    """NaN/inf are stored as NULL (schema convention)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; all ours are UTC."""
    return None if moment is None else _utc(moment)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _attempts(status: RunStatus) -> ScalarSelect[int]:
    """Correlated count of the current cell's runs in `status`."""
    return select(func.count(Run.id)).where(Run.cell_id == Cell.id, Run.status == status).scalar_subquery()


class RunQueue:
    """Claims, heartbeats, results and counts (a part of Repository, which sets `self.db`)."""

    db: Database

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

    # --- claiming ----------------------------------------------------------------------------

    def mark_stale_runs(self, study_id: int, grace_s: float) -> list[int]:
        """Runs of this study whose heartbeat is older than `grace_s`: marked "lost"; returns their ids."""
        cutoff = utcnow() - timedelta(seconds=grace_s)
        with self.db.session() as s:
            stale = list(s.scalars(select(Run.id).join(Cell).where(
                Cell.study_id == study_id, Run.status == RunStatus.RUNNING, Run.heartbeat_at < cutoff)))
            if stale:
                s.execute(update(Run).where(Run.id.in_(stale), Run.status == RunStatus.RUNNING).values(
                    status=RunStatus.LOST, ended_at=utcnow(), error=f"no heartbeat for {grace_s:g} s: worker died"))
            return stale

    def _claimable(self, study_id: int, limits: Limits) -> Select[tuple[int, str, str, dict[str, Any], int]]:
        busy = exists().where(Run.cell_id == Cell.id, Run.status.in_(BUSY))
        return select(Cell.id, Cell.config_hash, Cell.group_hash, Cell.config, _attempts(RunStatus.LOST)).where(
            Cell.study_id == study_id, ~busy, _attempts(RunStatus.FAILED) < limits.max_retries,
            _attempts(RunStatus.LOST) < limits.max_crashes,
        ).order_by(Cell.id)

    def claim_cell(self, study_id: int, limits: Limits, *, host: str, worker: str, device: str,
                   environment_id: int | None = None) -> Claim | None:
        """Take the next free cell by inserting its next run; None when no cell is free now."""
        claims = self.claim_cells(study_id, limits, host=host, worker=worker, device=device,
                                  environment_id=environment_id)
        return claims[0] if claims else None

    def claim_cells(self, study_id: int, limits: Limits, *, host: str, worker: str, device: str,
                    environment_id: int | None = None, most: int = 1,
                    key: Callable[[dict[str, Any]], Any] | None = None) -> list[Claim]:
        """Take the next free cell and up to `most - 1` more whose config has the same `key` (cells
        that can train together), by inserting their next runs in one transaction; [] when no cell
        is free now. Without `key` only one cell is taken. A study that is no longer there (deleted
        while its workers ran) raises StudyDeleted."""
        for _ in range(50):
            try:
                with self.db.session() as s:
                    found, claims = self._try_claim(s, study_id, limits, host, worker, device, environment_id,
                                                    most if key is not None else 1, key)
                if not found or claims:
                    return claims
            except IntegrityError:  # another worker claimed the same attempt first: try again
                continue
        return []

    def _try_claim(self, s: Session, study_id: int, limits: Limits, host: str, worker: str, device: str,
                   environment_id: int | None, most: int, key: Callable[[dict[str, Any]], Any] | None
                   ) -> tuple[bool, list[Claim]]:
        """(a free cell was seen, the claims made): (False, []) when none is free, (True, []) when
        other workers took the ones we saw (look again)."""
        # SQLite: BEGIN IMMEDIATE already serialises claims. PostgreSQL: the queue pattern, where a
        # cell row another claim holds is skipped, not waited for.
        query = self._claimable(study_id, limits).limit(1 if most == 1 else most * PACK_LOOKAHEAD)
        postgres = s.get_bind().dialect.name == "postgresql"
        if postgres:
            query = query.with_for_update(of=Cell, skip_locked=True)
        rows = s.execute(query).all()
        if not rows:
            if not s.scalar(select(exists().where(Study.id == study_id))):
                raise StudyDeleted(f"study {study_id} is no longer in the database")
            return False, []
        if most > 1 and key is not None:
            rows = _pack_of(rows, most, key)
        claims = []
        for cell_id, config_hash, group_hash, config, _lost in rows:
            # READ COMMITTED judged the cell free from a snapshot taken before it got the row lock; a
            # claim committed in between releases that lock without changing the cell row, so PostgreSQL
            # does not look again by itself (measured: 63 claims for 60 cells with 4 racing workers).
            # We hold the lock now, so a fresh look is final.
            if postgres and s.scalar(select(exists().where(Run.cell_id == cell_id, Run.status.in_(BUSY)))):
                continue
            attempt = (s.scalar(select(func.max(Run.attempt)).where(Run.cell_id == cell_id)) or 0) + 1
            now = utcnow()
            run = Run(cell_id=cell_id, attempt=attempt, status=RunStatus.RUNNING, host=host, worker=worker,
                      device=device, environment_id=environment_id, started_at=now, heartbeat_at=now)
            s.add(run)
            s.flush()
            claims.append(Claim(run.id, cell_id, attempt, config_hash, group_hash, config, study_id))
        return True, claims

    def pending_configs(self, study_id: int, limits: Limits) -> list[dict[str, Any]]:
        """Configs of the cells that may still run (not final, not running): what a resume will train."""
        with self.db.session() as s:
            return [row[3] for row in s.execute(self._claimable(study_id, limits)).all()]

    def heartbeat(self, run_id: int | list[int]) -> bool:
        """Touch running runs; False when one of them is no longer running (swept as lost meanwhile)."""
        ids = [run_id] if isinstance(run_id, int) else list(run_id)
        with self.db.session() as s:
            result = cast(CursorResult[Any], s.execute(update(Run).where(Run.id.in_(ids), Run.status == RunStatus.RUNNING)
                                                       .values(heartbeat_at=utcnow())))
            return result.rowcount == len(ids)

    def run_statuses(self, run_ids: list[int]) -> dict[int, str]:
        """The status of each of these runs that is still stored (a run whose cell or study was deleted
        while it trained is missing)."""
        with self.db.session() as s:
            return {run_id: status for run_id, status in s.execute(select(Run.id, Run.status).where(Run.id.in_(run_ids)))}

    def set_trial_number(self, run_id: int, number: int) -> None:
        """Record the run's Optuna trial as soon as it exists, so a lost run's trial can be closed."""
        with self.db.session() as s:
            s.execute(update(Run).where(Run.id == run_id).values(optuna_trial_number=number))

    # --- finishing ---------------------------------------------------------------------------

    def finish_run(self, run_id: int, result: TrialResult, optuna_trial_number: int | None = None) -> RunStatus | None:
        """Store a TrialResult (status, metrics, timings, artifacts) in ONE transaction; returns the
        status stored, or None when the run row is gone: its cell was removed (`study run --force`)
        or its study deleted while it trained. Safe to call again after a lost connection, and with a
        late result:

        - the run already holds this result's status: an earlier call committed but its answer was
          lost with the connection; nothing more is written;
        - another run completed the cell meanwhile (this run's worker was away past the grace
          period and its cell was given to another): this run is recorded as a redundant attempt,
          "interrupted" without its metrics, never as a second completed run;
        - otherwise the result is stored, also on a run the sweep had marked lost: a finished
          result is worth more than the verdict that its worker had died.
        """
        try:
            with self.db.session() as s:
                current = s.scalar(select(Run.status).where(Run.id == run_id).with_for_update())
                if current is None:  # the cell was removed (`study run --force`), or the study deleted
                    return None
                if current == result.status:
                    return RunStatus(current)
                if self._completed_elsewhere(s, run_id):
                    self._mark_redundant(s, run_id)
                    return RunStatus.INTERRUPTED
                self._write_result(s, run_id, result, optuna_trial_number)
            return RunStatus(result.status)
        except IntegrityError:  # PostgreSQL: another run completed the cell in the same instant
            with self.db.session() as s:
                self._mark_redundant(s, run_id)
            return RunStatus.INTERRUPTED

    @staticmethod
    def _completed_elsewhere(s: Session, run_id: int) -> bool:
        cell_id = select(Run.cell_id).where(Run.id == run_id).scalar_subquery()
        return bool(s.scalar(select(exists().where(Run.cell_id == cell_id, Run.id != run_id, Run.status.in_(FINAL_OK)))))

    @staticmethod
    def _mark_redundant(s: Session, run_id: int) -> None:
        s.execute(update(Run).where(Run.id == run_id).values(
            status=RunStatus.INTERRUPTED, ended_at=utcnow(),
            error="redundant: the cell was completed by another run while this one's worker was away"))

    def _write_result(self, s: Session, run_id: int, result: TrialResult, optuna_trial_number: int | None) -> None:
        values = dict(status=RunStatus(result.status), ended_at=utcnow(), error=result.error, device=result.device,
                      num_params=result.num_params, num_act_params=result.num_act_params,
                      metric_name=result.metric_name, metric_direction=result.metric_direction)
        if optuna_trial_number is not None:
            values["optuna_trial_number"] = optuna_trial_number
        s.execute(update(Run).where(Run.id == run_id).values(**values))
        rows: list[Base] = []
        for rec in result.epochs:
            metrics = {"train_loss": rec.train_loss, **rec.metrics, "epoch_time_s": rec.epoch_time_s,
                       "eval_time_s": rec.eval_time_s, "samples_per_s": rec.samples_per_s, "lr": rec.lr}
            rows += [EpochMetric(run_id=run_id, epoch=rec.epoch, name=k, value=finite(v)) for k, v in metrics.items()]
        rows += [FinalMetric(run_id=run_id, name=k, value=finite(v)) for k, v in result.final_metrics.items()]
        rows += [Timing(run_id=run_id, name=k, value=v) for k, v in timings(result).items()]
        rows += [Artifact(run_id=run_id, name=k, data=v) for k, v in (result.artifacts or {}).items()]
        s.add_all(rows)

    def mark_interrupted(self, run_id: int, error: str, optuna_trial_number: int | None = None) -> None:
        values: dict[str, Any] = dict(status=RunStatus.INTERRUPTED, ended_at=utcnow(), error=error)
        if optuna_trial_number is not None:
            values["optuna_trial_number"] = optuna_trial_number
        with self.db.session() as s:
            s.execute(update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING).values(**values))

    def interrupt_runs_of(self, study_id: int, *, host: str, worker: str, error: str) -> int:
        """Mark the running runs of one worker (host and worker name, as claimed) in a study
        interrupted; returns how many."""
        with self.db.session() as s:
            held = select(Run.id).join(Cell).where(Cell.study_id == study_id, Run.status == RunStatus.RUNNING,
                                                    Run.host == host, Run.worker == worker)
            result = s.execute(update(Run).where(Run.id.in_(held), Run.status == RunStatus.RUNNING).values(
                status=RunStatus.INTERRUPTED, ended_at=utcnow(), error=error))
            return int(getattr(result, "rowcount", 0) or 0)

    def mark_failed(self, run_id: int, error: str) -> None:
        with self.db.session() as s:
            s.execute(update(Run).where(Run.id == run_id).values(status=RunStatus.FAILED, ended_at=utcnow(), error=error))

    # --- counting ------------------------------------------------------------------------------

    def counts(self, study_id: int, limits: Limits) -> Counts:
        """Cells by state: done (completed/diverged), running, final failures and crashes, pending."""
        with self.db.session() as s:
            total = s.scalar(select(func.count(Cell.id)).where(Cell.study_id == study_id)) or 0

            def cells_with(*condition: Any) -> int:
                q = select(func.count(func.distinct(Run.cell_id))).join(Cell).where(Cell.study_id == study_id, *condition)
                return s.scalar(q) or 0

            completed = cells_with(Run.status.in_(FINAL_OK))
            diverged = cells_with(Run.status == RunStatus.DIVERGED)
            running = cells_with(Run.status == RunStatus.RUNNING)
            idle = ~exists().where(Run.cell_id == Cell.id, Run.status.in_(BUSY))
            failed_out = _attempts(RunStatus.FAILED) >= limits.max_retries
            crashed_out = _attempts(RunStatus.LOST) >= limits.max_crashes
            failed = s.scalar(select(func.count(Cell.id)).where(Cell.study_id == study_id, idle, failed_out)) or 0
            crashed = s.scalar(select(func.count(Cell.id)).where(
                Cell.study_id == study_id, idle, crashed_out, ~failed_out)) or 0
        pending = max(0, total - completed - running - failed - crashed)
        return Counts(total, completed, diverged, running, failed, pending, crashed)

    def completed_durations(self, study_id: int) -> list[float]:
        """Wall seconds of this study's completed runs (for the ETA)."""
        with self.db.session() as s:
            rows = s.execute(select(Run.started_at, Run.ended_at).join(Cell).where(
                Cell.study_id == study_id, Run.status.in_(FINAL_OK), Run.ended_at.is_not(None))).all()
        return [(_utc(end) - _utc(start)).total_seconds() for start, end in rows if start is not None and end is not None]

    def duplicate_completions(self, study_id: int) -> int:
        """Cells with more than one completed run (must be 0; the index forbids it)."""
        with self.db.session() as s:
            q = select(Run.cell_id).join(Cell).where(Cell.study_id == study_id, Run.status == RunStatus.COMPLETED
                                                     ).group_by(Run.cell_id).having(func.count(Run.id) > 1)
            return len(s.execute(q).all())

    def runs_by_status(self, study_id: int) -> dict[str, int]:
        """How many runs (attempts) of the study are in each status."""
        with self.db.session() as s:
            rows = s.execute(select(Run.status, func.count(Run.id)).join(Cell).where(Cell.study_id == study_id)
                             .group_by(Run.status)).all()
        return {status: n for status, n in rows}

    def running_runs(self, study_id: int) -> list[tuple[int, str | None, int]]:
        """(run id, worker, cell id) of the study's running runs."""
        with self.db.session() as s:
            return [(run_id, worker, cell_id) for run_id, worker, cell_id in s.execute(
                select(Run.id, Run.worker, Run.cell_id).join(Cell).where(
                    Cell.study_id == study_id, Run.status == RunStatus.RUNNING)).all()]

    def attempt_started(self, cell_id: int, attempt: int) -> datetime | None:
        """When attempt `attempt` of a cell started (UTC), or None if it never did."""
        with self.db.session() as s:
            return as_utc(s.scalar(select(Run.started_at).where(Run.cell_id == cell_id, Run.attempt == attempt)))


def _pack_of(rows: Sequence[Any], most: int, key: Callable[[dict[str, Any]], Any]) -> list[Any]:
    """The first free cell and up to `most - 1` later ones that train with it (equal `key`).

    A cell that already lost a worker runs alone, and joins no pack: if it is the one that kills its
    process (a segfault, an OOM kill), it must not take a whole pack down again.
    """
    first = rows[0]
    first_key = key(first[3]) if not first[4] else None
    if first_key is None:
        return [first]
    return [r for r in rows if not r[4] and key(r[3]) == first_key][:most]


def timings(result: TrialResult) -> dict[str, float]:
    """Run-level timings (names from the schema conventions)."""
    epochs = result.epochs
    out = {"total_train_s": float(result.total_train_time_s), "pack_size": float(getattr(result, "pack_size", 1))}
    if epochs:
        out["median_epoch_s"] = statistics.median(e.epoch_time_s for e in epochs)
        out["mean_samples_per_s"] = statistics.fmean(e.samples_per_s for e in epochs)
        out["total_eval_s"] = sum(e.eval_time_s for e in epochs)
    return {k: v for k, v in out.items() if math.isfinite(v)}
