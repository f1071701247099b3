"""Stored runs as a re-run needs them (`study verify`): the cell's config, what the run measured,
where it ran and which cells trained with it. Read-only; works on a shipped `.db.gz` (the slim copy
keeps every cell, run, final metric and environment, epoch 1 and the last epoch of the drawn
per-epoch names, and every run's pack record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Connection

from tmafbench.core import RunStatus
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import read_only_engine
from tmafbench.store.gzipped import readable_copy
from tmafbench.store.schema import (
    Artifact,
    Cell,
    Environment,
    EpochMetric,
    FinalMetric,
    Run,
    Study,
    Timing,
)

PACK_ARTIFACT = "pack"


@dataclass
class StoredRun:
    """The completed run of one cell, as stored."""

    cell_id: int
    config_hash: str
    label: str
    seed: int
    config: dict[str, Any]
    run_id: int
    metric_name: str
    finals: dict[str, float | None]
    train_loss: dict[int, float | None]  # epoch -> value, for the epochs stored
    environment: dict[str, Any]  # cpu, torch, details (store/environment.py); {} when none was recorded
    pack_size: int = 1
    pack: list[str] | None = None  # config hashes of the cells trained as one model, in pack order; None: not recorded
    claimed_with: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (hash, config) of the runs
    # its worker claimed in the same transaction, in claim order: the pack of a run stored before packs were recorded
    pack_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # config hash -> config, for the pack


def completed_runs(url: str, study: str) -> tuple[list[StoredRun], int]:
    """Every completed run of `study`'s own cells (a tuned study: its evaluation cells), in cell order,
    and the number of its cells. Unknown study: one-line error naming the ones there are."""
    engine = read_only_engine(readable_copy(url))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("tmaf_study"):
                raise TmafbenchError(f"no tmafbench results in {url}")
            study_id = conn.scalar(select(Study.id).where(Study.name == study))
            if study_id is None:
                names = ", ".join(conn.scalars(select(Study.name).where(Study.parent_id.is_(None)).order_by(Study.name)))
                raise TmafbenchError(f"unknown study {study!r}; studies in this database: {names or 'none'}")
            n_cells = conn.scalar(select(func.count(Cell.id)).where(Cell.study_id == study_id)) or 0
            return _runs(conn, study_id), n_cells
    finally:
        engine.dispose()


def _runs(conn: Connection, study_id: int) -> list[StoredRun]:
    rows = conn.execute(
        select(Cell.id, Cell.config_hash, Cell.label, Cell.seed, Cell.config, Run.id, Run.metric_name,
               Run.environment_id)
        .join(Run, Run.cell_id == Cell.id)
        .where(Cell.study_id == study_id, Run.status == RunStatus.COMPLETED).order_by(Cell.id)).all()
    run_ids = [r[5] for r in rows]
    finals = _by_run(conn, select(FinalMetric.run_id, FinalMetric.name, FinalMetric.value)
                     .where(FinalMetric.run_id.in_(run_ids)))
    losses = _by_run(conn, select(EpochMetric.run_id, EpochMetric.epoch, EpochMetric.value)
                     .where(EpochMetric.run_id.in_(run_ids), EpochMetric.name == "train_loss"))
    sizes = {run: int(v) for run, v in conn.execute(select(Timing.run_id, Timing.value).where(
        Timing.run_id.in_(run_ids), Timing.name == "pack_size"))}
    packs: dict[int, dict[str, Any]] = dict(conn.execute(select(Artifact.run_id, Artifact.data).where(
        Artifact.run_id.in_(run_ids), Artifact.name == PACK_ARTIFACT)).all())
    environments = _environments(conn, {r[7] for r in rows if r[7] is not None})
    claimed = _claimed_together(conn, study_id)
    out = []
    for cell_id, config_hash, label, seed, config, run_id, metric, env_id in rows:
        run = StoredRun(cell_id, config_hash, label, seed, config, run_id, metric or "", finals.get(run_id, {}),
                        {int(k): v for k, v in losses.get(run_id, {}).items()}, environments.get(env_id, {}),
                        sizes.get(run_id, 1))
        record = packs.get(run_id) or {}
        run.pack_size = int(record.get("size", run.pack_size))
        run.pack = record.get("cells") if record else ([config_hash] if run.pack_size <= 1 else None)
        run.claimed_with = claimed.get(run_id, [])
        out.append(run)
    configs: dict[str, dict[str, Any]] = dict(conn.execute(select(Cell.config_hash, Cell.config).where(
        Cell.study_id == study_id, Cell.config_hash.in_({h for r in out for h in (r.pack or [])}))).all())
    for run in out:
        run.pack_configs = {h: configs[h] for h in run.pack or [] if h in configs}
    return out


def _by_run(conn: Connection, stmt: Any) -> dict[int, dict[Any, Any]]:
    out: dict[int, dict[Any, Any]] = {}
    for run_id, key, value in conn.execute(stmt):
        out.setdefault(run_id, {})[key] = value
    return out


def _environments(conn: Connection, ids: set[int]) -> dict[int, dict[str, Any]]:
    columns = {c["name"] for c in inspect(conn).get_columns("tmaf_environment")}
    wanted = [Environment.id, Environment.cpu, Environment.cpu_count, Environment.torch, Environment.hostname]
    if "details" in columns:  # databases written before the column existed have none
        wanted.append(Environment.details)
    out = {}
    for row in conn.execute(select(*wanted).where(Environment.id.in_(ids))):
        data = dict(row._mapping)
        out[data.pop("id")] = {**data, "details": data.get("details") or {}}
    return out


CLAIM_GAP_S = 0.5  # runs a worker claims in one transaction start within milliseconds of each other


def _claimed_together(conn: Connection, study_id: int) -> dict[int, list[tuple[str, dict[str, Any]]]]:
    """run id -> [(config hash, config)] of the runs claimed in the same transaction, in claim order: a
    worker claims a pack in one transaction, so its runs have consecutive ids and start within
    CLAIM_GAP_S of each other (store/queue.py); its next claim comes after training."""
    rows = conn.execute(select(Run.id, Run.worker, Run.started_at, Cell.config_hash, Cell.config)
                        .join(Cell, Cell.id == Run.cell_id).where(Cell.study_id == study_id).order_by(Run.id)).all()
    groups: list[list[Any]] = []
    for row in rows:
        last = groups[-1][-1] if groups else None
        together = (last is not None and row.id == last.id + 1 and row.worker == last.worker
                    and abs((row.started_at - last.started_at).total_seconds()) <= CLAIM_GAP_S)
        if together:
            groups[-1].append(row)
        else:
            groups.append([row])
    return {row.id: [(r.config_hash, r.config) for r in group] for group in groups for row in group}
