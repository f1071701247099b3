"""Results schema (SQLAlchemy 2 ORM). Lives in the same database as Optuna's tables.

Our table names carry the prefix `tmaf_` so they never collide with Optuna's own
(`studies`, `trials`, ...). Reports read only these tables (docs/design.md section 1).

Conventions shared by the writer (study runner) and the reader (reports):

- `Cell.activation` is the activation *label* from the study file (defaults to the registry
  name, e.g. "tmaf"; a study may label two specs "tmaf-h1" and "tmaf-h0.1"). The registry name
  is in `Cell.config["activation"]`.
- `Cell.axes` holds every axis value of the cell by axis name, including "task" (the task label
  from the study file, default its registry name), "activation" (label),
  "grid" (label or None), "intervals", "depth", "width", task parameters such as "n", and
  "seed". A group is every axis but the seed: `Cell.group_hash` (= TrialConfig.group_hash()).
- `Cell.label` is the group's readable label, e.g. "tmaf [-5,5]/10 depth=1 width=20 n=3"
  (with " task=<label>" appended when the study has several tasks).
- Epoch metrics (long format), names: "train_loss", the task's test metrics ("rel_l2", "mse",
  "max_abs" for regression; "accuracy", "cross_entropy" for classification), the same with a
  "val_" prefix when a validation split is used, "epoch_time_s", "eval_time_s",
  "samples_per_s" and "lr". NaN or inf values are stored as NULL.
- Final metrics: the last epoch's test (and val_) metrics plus "train_loss".
- Timing names: "total_train_s", "median_epoch_s", "mean_samples_per_s", "total_eval_s".
- `Run.metric_name` / `Run.metric_direction` name the task's primary metric
  ("rel_l2"/"minimize" or "accuracy"/"maximize").
- Artifacts: "predictions" = {"x": [...], "target": [...], "prediction": [...]} on a fixed grid
  (1-D tasks); "activation_params" = {module_name: {param_name: nested list}};
  "activation_curves" = {"s": [...], "modules": {module_name: [[y over s] per feature, <= 8]}};
  "breakpoints" (activations with trainable breakpoints only) = {"modules": {module_name:
  {"initial": [s_1..s_m], "learned": [[s_1..s_m] per feature, <= 8]}}}.
- Artifact "pack" (every run a worker stores) = {"size": cells trained as one model, "cells":
  [config_hash of each, in pack order], "position": this cell's index}; size 1 = alone.
- `Study.reference` = {"source": str, "metric": str, "rows": [{<axis>: value, ..., "value": x}]}
  where each row's keys other than "value"/"note" match `Cell.axes` entries.
"""

from __future__ import annotations

from typing import Any

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from tmafbench.core import RunStatus

SCHEMA_VERSION = 1

RUN_STATUSES = tuple(RunStatus)  # stored as their string values


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "tmaf_schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Study(Base):
    """One study file as it was run: its spec, spec hash and provenance."""

    __tablename__ = "tmaf_study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(20), default="grid")  # grid | tune | eval
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("tmaf_study.id", ondelete="CASCADE"), nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    reference: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # published numbers
    tmafbench_version: Mapped[str] = mapped_column(String(40))
    git_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    cells: Mapped[list["Cell"]] = relationship(back_populates="study", cascade="all, delete-orphan", passive_deletes=True)


class Cell(Base):
    """One configuration of a study (one seed of one group)."""

    __tablename__ = "tmaf_cell"
    __table_args__ = (UniqueConstraint("study_id", "config_hash", name="uq_cell_study_config"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("tmaf_study.id", ondelete="CASCADE"), index=True)
    config_hash: Mapped[str] = mapped_column(String(64))
    group_hash: Mapped[str] = mapped_column(String(64), index=True)  # config without the seed
    label: Mapped[str] = mapped_column(String(300))  # human-readable group label
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # TrialConfig.to_dict()
    # Denormalised columns so that cells are easy to query with plain SQL.
    task: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(100))
    activation: Mapped[str] = mapped_column(String(100))
    grid: Mapped[str | None] = mapped_column(String(200), nullable=True)  # e.g. "[-5,5]/10"; NULL: none
    intervals: Mapped[int | None] = mapped_column(Integer, nullable=True)
    depth: Mapped[int | None] = mapped_column(Integer, nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    axes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # every axis value of this cell, by axis name

    study: Mapped[Study] = relationship(back_populates="cells")
    runs: Mapped[list["Run"]] = relationship(back_populates="cell", cascade="all, delete-orphan", passive_deletes=True)


class Environment(Base):
    """Where a run ran: software and hardware. Deduplicated by hash."""

    __tablename__ = "tmaf_environment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    env_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hostname: Mapped[str] = mapped_column(String(200))
    platform: Mapped[str] = mapped_column(String(200))
    python: Mapped[str] = mapped_column(String(40))
    torch: Mapped[str] = mapped_column(String(40))
    cuda: Mapped[str | None] = mapped_column(String(40), nullable=True)
    cpu: Mapped[str] = mapped_column(String(200))
    cpu_count: Mapped[int] = mapped_column(Integer)
    gpu: Mapped[str | None] = mapped_column(String(200), nullable=True)
    packages: Mapped[dict[str, Any]] = mapped_column(JSON)
    # CPU extensions, torch/MKL/oneDNN builds, threads, TMAF kernel (store/environment.py). Added
    # after the first release: NULL in rows written before it; `Database.create_all` adds the column.
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Run(Base):
    """One attempt at a cell. At most one completed run per cell (partial unique index)."""

    __tablename__ = "tmaf_run"
    __table_args__ = (
        UniqueConstraint("cell_id", "attempt", name="uq_run_cell_attempt"),
        Index(
            "uq_run_one_completed",
            "cell_id",
            unique=True,
            sqlite_where=text("status = 'completed'"),
            postgresql_where=text("status = 'completed'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("tmaf_cell.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)  # 1, 2, ...
    status: Mapped[str] = mapped_column(String(20))  # one of RUN_STATUSES
    optuna_trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(100), nullable=True)  # e.g. "pid 1234"
    device: Mapped[str] = mapped_column(String(40))
    environment_id: Mapped[int | None] = mapped_column(ForeignKey("tmaf_environment.id"), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Updated by the worker's heartbeat thread while the run is "running"; a run whose heartbeat
    # is older than the grace period is marked "lost" and its cell runs again (up to max_crashes).
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    num_params: Mapped[int | None] = mapped_column(Integer, nullable=True)
    num_act_params: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metric_name: Mapped[str | None] = mapped_column(String(60), nullable=True)
    metric_direction: Mapped[str | None] = mapped_column(String(10), nullable=True)

    cell: Mapped[Cell] = relationship(back_populates="runs")
    environment: Mapped[Environment | None] = relationship()


class EpochMetric(Base):
    """Per-epoch metrics in long format: (run, epoch, name) -> value."""

    __tablename__ = "tmaf_epoch_metric"
    __table_args__ = (UniqueConstraint("run_id", "epoch", "name", name="uq_epoch_metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("tmaf_run.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(60))  # train_loss, rel_l2, accuracy, epoch_time_s, ...
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # NULL for NaN/inf


class FinalMetric(Base):
    __tablename__ = "tmaf_final_metric"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_final_metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("tmaf_run.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(60))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


class Timing(Base):
    """Run-level timings: total_train_s, median_epoch_s, mean_samples_per_s, eval_s, ..."""

    __tablename__ = "tmaf_timing"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_timing"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("tmaf_run.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(60))
    value: Mapped[float] = mapped_column(Float)


class Artifact(Base):
    """Small arrays for the figures: predictions on a grid, learned activation parameters."""

    __tablename__ = "tmaf_artifact"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_artifact"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("tmaf_run.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(60))  # "predictions" | "activation_params"
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
