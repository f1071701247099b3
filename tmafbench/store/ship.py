"""Ship a study's raw record with its report: a slim, gzip-compressed SQLite copy and a per-run CSV.

`ship_studies(url, studies, folder)` writes into a report folder:

- `results.db.gz`: a new SQLite database with our schema (no Optuna tables) holding the studies,
  their tuning child studies, every cell and every attempt at it, the environments those runs
  name, every final metric and timing, and of the bulky rows only what a report draws:
  - epoch metrics of completed runs, for the names a report plots (the run's primary metric,
    on the test, validation and training sets; train_loss; epoch_time_s and samples_per_s for
    the timing table); other per-epoch names (mse, max_abs, eval_time_s, lr) are left out. A run
    of more than 200 epochs (`max_epochs`) keeps its first and last epoch and every k-th between:
    its curves look the same, and the timing table's median and quartiles of its epoch times come
    from that even sample instead of every epoch;
  - the artifacts the figures draw: "predictions", "activation_curves" and "breakpoints" of the
    lowest completed seed of each group (the run the report shows), every tuning slot's
    "tuning" record, and every run's "pack" record (which cells trained together: what
    `study verify` needs to re-run a packed cell as it ran).
    "activation_params" (every learned value, the largest artifact) is left out.
  Row ids are kept, so `run_id` in the CSV names the same run in the database.
- `runs.csv`: `results export` of each study, one row per attempt.

`report build STUDY --storage sqlite:///FOLDER/results.db.gz` reads the compressed file directly
(`readable_copy`), and so do `results query` and `results export`.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, cast

import pandas as pd
from sqlalchemy import ColumnElement, Table, create_engine, func, insert, inspect, select, text, true
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute

from tmafbench.core import SET_PREFIXES, RunStatus
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database, read_only_engine
from tmafbench.store.export import runs_frame
from tmafbench.store.gzipped import gzip_file, readable_copy
from tmafbench.store.schema import (
    SCHEMA_VERSION,
    Artifact,
    Base,
    Cell,
    Environment,
    EpochMetric,
    FinalMetric,
    Run,
    SchemaVersion,
    Study,
    Timing,
)

DATABASE_NAME = "results.db.gz"
CSV_NAME = "runs.csv"
# Per-epoch names a report draws besides the primary metric on each set.
DRAWN_EPOCH_NAMES = ("train_loss", "epoch_time_s", "samples_per_s")
# Artifacts the figures draw from the lowest completed seed of each group, and the tuning record.
DRAWN_ARTIFACTS = ("predictions", "activation_curves", "breakpoints")
TUNING_ARTIFACT = "tuning"
PACK_ARTIFACT = "pack"  # every run's: which cells trained with it (small)
MAX_EPOCHS = 200  # epochs kept per run: a learning curve drawn from 200 points looks like one from 2,000
CHUNK = 900  # SQLite's limit on bound parameters per statement, with room to spare


@dataclass
class Shipment:
    """What `ship_studies` wrote, with the row counts per table and the sizes."""

    folder: Path
    database: Path
    csv: Path
    rows: dict[str, int] = field(default_factory=dict)
    raw_bytes: int = 0  # the uncompressed SQLite file
    gz_bytes: int = 0
    runs: int = 0

    def summary(self) -> str:
        kept = ", ".join(f"{table.removeprefix('tmaf_')} {n}" for table, n in self.rows.items() if n)
        return (f"{self.database} ({self.gz_bytes / 1e6:.2f} MB, {self.raw_bytes / 1e6:.2f} MB uncompressed; rows: {kept}) "
                f"and {self.csv} ({self.runs} runs)")


def ship_studies(url: str, studies: list[str], folder: Path, max_epochs: int = MAX_EPOCHS) -> Shipment:
    """Write `results.db.gz` and `runs.csv` for `studies` into `folder` (see the module docstring).

    `max_epochs` bounds the epochs kept per run (`kept_epochs`); 0 keeps every epoch.
    """
    if not studies:
        raise TmafbenchError("name at least one study")
    if max_epochs < 0 or max_epochs == 1:
        raise TmafbenchError(f"--max-epochs must be 0 (every epoch) or at least 2, got {max_epochs}")
    url = readable_copy(url)
    source = Database(url, must_exist=True)
    try:
        source.check_schema()
    finally:
        source.dispose()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tmafbench-ship-") as tmp:
        raw = Path(tmp) / "results.db"
        rows = _write_slim_copy(url, studies, raw, max_epochs)
        shipment = Shipment(folder, folder / DATABASE_NAME, folder / CSV_NAME, rows, raw.stat().st_size)
        gzip_file(raw, shipment.database)  # first: reading the copy below may switch it to WAL
        # runs.csv from the slim copy, which holds every run row it reads: the source is read once,
        # on the read-only connection, and the two files agree by construction.
        slim = Database(f"sqlite:///{raw}", must_exist=True)
        try:
            frame = pd.concat([runs_frame(slim, name) for name in studies], ignore_index=True)
        finally:
            slim.dispose()
    shipment.gz_bytes = shipment.database.stat().st_size
    frame.to_csv(shipment.csv, index=False)
    shipment.runs = len(frame)
    return shipment


def _write_slim_copy(url: str, studies: list[str], path: Path, max_epochs: int) -> dict[str, int]:
    """Copy what the reports of `studies` draw into a new SQLite file at `path`; rows per table.

    The source is read on a read-only connection: shipping never locks a database that workers
    are writing to."""
    source = read_only_engine(url)
    target = create_engine(f"sqlite:///{path}")  # a plain file (no WAL): one file to ship
    Base.metadata.create_all(target)
    rows: dict[str, int] = {}
    try:
        with source.connect() as src, target.begin() as dst:
            _copy(src, dst, SchemaVersion, SchemaVersion.version == SCHEMA_VERSION)  # with its date: same bytes
            study_ids, tuning_ids = _study_ids(src, studies)
            rows["tmaf_study"] = _copy(src, dst, Study, Study.id.in_(study_ids + tuning_ids))
            cells = src.execute(select(Cell.id, Cell.study_id, Cell.group_hash, Cell.seed)
                                .where(Cell.study_id.in_(study_ids + tuning_ids))).all()
            rows["tmaf_cell"] = _copy(src, dst, Cell, Cell.study_id.in_(study_ids + tuning_ids))
            runs = _runs(src, [c.id for c in cells])
            env_ids = sorted({r.environment_id for r in runs if r.environment_id is not None})
            rows["tmaf_environment"] = _copy_in(src, dst, Environment, Environment.id, env_ids)
            rows["tmaf_run"] = _copy_in(src, dst, Run, Run.id, [r.id for r in runs])
            run_ids = [r.id for r in runs]
            rows["tmaf_final_metric"] = _copy_in(src, dst, FinalMetric, FinalMetric.run_id, run_ids)
            rows["tmaf_timing"] = _copy_in(src, dst, Timing, Timing.run_id, run_ids)
            study_cells = {c.id for c in cells if c.study_id in study_ids}
            completed = [r for r in runs if r.cell_id in study_cells and r.status == RunStatus.COMPLETED]
            names = EpochMetric.name.in_(drawn_epoch_names(r.metric_name for r in completed))
            rows["tmaf_epoch_metric"] = sum(
                _copy_in(src, dst, EpochMetric, EpochMetric.run_id, ids, names & kept_epochs(last, max_epochs))
                for last, ids in _runs_by_length(src, [r.id for r in completed]).items())
            shown = _shown_runs(cells, completed)
            tuning_runs = [r.id for r in runs if r.cell_id not in study_cells]
            rows["tmaf_artifact"] = (
                _copy_in(src, dst, Artifact, Artifact.run_id, shown, Artifact.name.in_(DRAWN_ARTIFACTS))
                + _copy_in(src, dst, Artifact, Artifact.run_id, tuning_runs, Artifact.name == TUNING_ARTIFACT)
                + _copy_in(src, dst, Artifact, Artifact.run_id, [r.id for r in runs], Artifact.name == PACK_ARTIFACT))
        with target.connect() as conn:
            conn.execute(text("VACUUM"))  # pack the pages: the file holds only the rows written
    finally:
        source.dispose()
        target.dispose()
    return rows


def kept_epochs(last: int, max_epochs: int) -> ColumnElement[bool]:
    """Which of a run's epochs 1..`last` to keep: all of them up to `max_epochs`, else the first, the
    last and every k-th between (k = ceil(last / max_epochs)): at most max_epochs + 1 evenly spaced
    points, enough to draw a learning curve. 0 keeps every epoch."""
    if max_epochs == 0 or last <= max_epochs:
        return true()
    step = math.ceil(last / max_epochs)
    return (EpochMetric.epoch % step == 0) | (EpochMetric.epoch == 1) | (EpochMetric.epoch == last)


def _runs_by_length(src: Connection, run_ids: list[int]) -> dict[int, list[int]]:
    """{last epoch: run ids}: runs grouped by how many epochs they stored."""
    out: dict[int, list[int]] = {}
    for chunk in _chunks(run_ids):
        stmt = select(EpochMetric.run_id, func.max(EpochMetric.epoch)).where(EpochMetric.run_id.in_(chunk)) \
            .group_by(EpochMetric.run_id)
        for run_id, last in src.execute(stmt):
            out.setdefault(int(last), []).append(int(run_id))
    return out


def drawn_epoch_names(metric_names: Iterable[str | None]) -> list[str]:
    """Per-epoch names a report plots for runs whose primary metrics are `metric_names`."""
    bases = sorted({m for m in metric_names if m})
    return [*bases, *(prefix + m for m in bases for prefix in SET_PREFIXES), *DRAWN_EPOCH_NAMES]


def _study_ids(src: Connection, studies: list[str]) -> tuple[list[int], list[int]]:
    """(ids of the named studies, ids of their tuning child studies); unknown names are an error."""
    found = dict(src.execute(select(Study.name, Study.id).where(Study.name.in_(studies))).all())
    missing = [name for name in studies if name not in found]
    if missing:
        known = ", ".join(src.scalars(select(Study.name).where(Study.parent_id.is_(None)).order_by(Study.name))) or "none"
        raise TmafbenchError(f"unknown study {', '.join(missing)}; studies in this database: {known}")
    ids = [found[name] for name in studies]
    children = list(src.scalars(select(Study.id).where(Study.parent_id.in_(ids))))
    return ids, children


def _runs(src: Connection, cell_ids: list[int]) -> list[Any]:
    return [row for chunk in _chunks(cell_ids) for row in src.execute(
        select(Run.id, Run.cell_id, Run.status, Run.environment_id, Run.metric_name).where(Run.cell_id.in_(chunk)))]


def _shown_runs(cells: Sequence[Any], completed: Sequence[Any]) -> list[int]:
    """The completed run of the lowest seed in each group: the one a report's figures draw."""
    run_of = {r.cell_id: r.id for r in completed}
    best: dict[tuple[int, str], Any] = {}
    for cell in cells:
        key = (cell.study_id, cell.group_hash)
        if cell.id in run_of and (key not in best or cell.seed < best[key].seed):
            best[key] = cell
    return sorted(run_of[cell.id] for cell in best.values())


def _copy(src: Connection, dst: Connection, model: type[Base], where: ColumnElement[bool]) -> int:
    """Copy the rows of `model`'s table that match `where`, ids and all. Columns a source written by
    an earlier release lacks (store/database.py, ADDED_COLUMNS) stay NULL in the copy."""
    table = cast(Table, model.__table__)
    present = {c["name"] for c in inspect(src).get_columns(table.name)}
    columns = [c for c in table.c if c.name in present]
    rows = [dict(row._mapping) for row in src.execute(select(*columns).where(where))]
    if rows:
        dst.execute(insert(table), rows)
    return len(rows)


def _copy_in(src: Connection, dst: Connection, model: type[Base], column: InstrumentedAttribute[int], ids: list[int],
             where: ColumnElement[bool] | None = None) -> int:
    """`_copy` of the rows whose `column` is in `ids`, in chunks of bound parameters."""
    also = true() if where is None else where
    return sum(_copy(src, dst, model, column.in_(chunk) & also) for chunk in _chunks(ids))


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]
