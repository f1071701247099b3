"""Reading results back for the scheduler and the CLI: study status, tuning outcomes, summaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from tmafbench.core import RunStatus, SlotState
from tmafbench.store.queue import Counts, Limits, RunQueue
from tmafbench.store.schema import Artifact, Cell, FinalMetric, Run
from tmafbench.store.studies import StoredStudy, StudyStore

TUNE_KIND = "tune"


@dataclass(frozen=True)
class StudySummary:
    """One line of `study list`."""

    name: str
    kind: str
    counts: Counts  # of its cells (evaluation cells for a tuned study)
    created_at: datetime
    tuning: Counts | None = None  # of the tuning slots, for a tuned study


class ResultStore(StudyStore, RunQueue):
    """Read-side queries, over the studies and the run queue (Repository is this, on one Database)."""

    def study_status(self, name: str) -> dict[str, Any]:
        """`study status` in one dict: the cells by state and whether the study is finished.

        A tuned study's evaluation cells only exist once tuning is over, so its status also gives the
        tuning slots (its child study of kind "tune") and is finished only when both phases are.
        """
        summary = self.summary(self.require_study(name))
        c = summary.counts
        status: dict[str, Any] = {"study": name, "total": c.total, "done": c.completed, "diverged": c.diverged,
                                  "running": c.running, "failed": c.failed, "crashed": c.crashed,
                                  "pending": c.pending, "finished": c.done}
        if summary.tuning is not None:
            t = summary.tuning
            status["tuning"] = {"total": t.total, "done": t.completed, "running": t.running, "failed": t.failed,
                                "crashed": t.crashed, "pending": t.pending}
            status["phase"] = "tuning" if not t.done else "evaluation"
            status["finished"] = t.done and c.done and c.total > 0
        return status

    def summary(self, study: StoredStudy) -> StudySummary:
        """Counts of a study's cells, and of its tuning slots when it has them."""
        limits = Limits.of(study)
        tune = self.child_study(study.id, TUNE_KIND)
        tuning = self.counts(tune.id, limits) if tune is not None else None
        return StudySummary(study.name, study.kind, self.counts(study.id, limits), study.created_at, tuning)

    def summaries(self) -> list[StudySummary]:
        """`study list`: every top-level study with its progress."""
        return [self.summary(self.require_study(name)) for name in self.study_names(top_level=True)]

    def group_summary(self, study_id: int) -> list[tuple[str, int, int, str | None, float | None]]:
        """Per cell label: (label, cells, completed runs, metric name, mean of that metric over them)."""
        with self.db.session() as s:
            return [tuple(row) for row in s.execute(
                select(Cell.label, func.count(func.distinct(Cell.id)), func.count(func.distinct(Run.id)), Run.metric_name,
                       func.avg(FinalMetric.value))
                .join(Run, Run.cell_id == Cell.id, isouter=True)
                .join(FinalMetric, (FinalMetric.run_id == Run.id) & (FinalMetric.name == Run.metric_name), isouter=True)
                .where(Cell.study_id == study_id, (Run.status == RunStatus.COMPLETED) | (Run.id.is_(None)))
                .group_by(Cell.label, Run.metric_name).order_by(Cell.label)).all()]

    # --- tuning ------------------------------------------------------------------------------------

    def tuning_rows(self, tune_id: int) -> dict[str, list[dict[str, Any]]]:
        """{group hash: [tuning artifact of each finished slot run, in trial order]} (completed or diverged)."""
        with self.db.session() as s:
            rows = s.execute(
                select(Cell.group_hash, Artifact.data).join(Run, Run.cell_id == Cell.id)
                .join(Artifact, (Artifact.run_id == Run.id) & (Artifact.name == "tuning"))
                .where(Cell.study_id == tune_id, Run.status.in_((RunStatus.COMPLETED, RunStatus.DIVERGED)))
            ).all()
        out: dict[str, list[dict[str, Any]]] = {}
        for group_hash, data in rows:
            out.setdefault(group_hash, []).append(data)
        for items in out.values():
            items.sort(key=lambda r: r.get("trial_number") or 0)
        return out

    def trial_outcomes(self, study_id: int, numbers: list[int], group_hash: str | None = None
                       ) -> dict[int, tuple[str, SlotState | None, float | None]]:
        """{Optuna trial number: (run status, tuning state, value)} of the study's runs with those trials.

        For a grid study the value is the run's primary metric; for tuning slots (one Optuna study per
        group, so `group_hash` narrows it) it is the slot's mean validation metric and its state.
        """
        if not numbers:
            return {}
        with self.db.session() as s:
            query = (select(Run.optuna_trial_number, Run.status, Artifact.data, FinalMetric.value)
                     .join(Cell, Cell.id == Run.cell_id)
                     .join(Artifact, (Artifact.run_id == Run.id) & (Artifact.name == "tuning"), isouter=True)
                     .join(FinalMetric, (FinalMetric.run_id == Run.id) & (FinalMetric.name == Run.metric_name),
                           isouter=True)
                     .where(Cell.study_id == study_id, Run.optuna_trial_number.in_(numbers)))
            if group_hash is not None:
                query = query.where(Cell.group_hash == group_hash)
            rows = s.execute(query).all()
        out: dict[int, tuple[str, SlotState | None, float | None]] = {}
        for number, status, tuning, metric in rows:
            if tuning:
                out[number] = (status, SlotState.read(tuning.get("state")), tuning.get("value"))
            else:
                out[number] = (status, None, metric)
        return out
