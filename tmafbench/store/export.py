"""Read-only views of the results: SQL queries on a read-only connection, tidy per-run tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from tmafbench.errors import InputError, TmafbenchError
from tmafbench.store.database import Database, read_only_engine, redact
from tmafbench.store.gzipped import readable_copy
from tmafbench.store.schema import Cell, FinalMetric, Run, Study, Timing

RUN_COLUMNS = ["attempt", "status", "host", "device", "started_at", "ended_at", "error", "num_params",
               "num_act_params", "metric_name", "metric_direction", "optuna_trial_number"]
CELL_COLUMNS = ["config_hash", "group_hash", "label", "task", "model", "activation", "grid", "intervals", "depth",
                "width", "seed"]


def query(url: str, sql: str) -> pd.DataFrame:
    """Run one SQL statement that only reads (`readonly_sql.check_read_only`'s allowlist, checked before
    the database is touched) on a read-only connection. A shipped `results.db.gz` is read as it is.
    BLOB values come back as hex text."""
    from sqlalchemy.engine import make_url

    from tmafbench.store.database import normalize_url
    from tmafbench.store.readonly_sql import check_read_only

    backend = make_url(normalize_url(url)).get_backend_name()
    check_read_only(sql, "sqlite" if backend == "sqlite" else "postgres")
    engine = read_only_engine(readable_copy(url))
    try:
        with engine.connect() as conn:
            result = conn.execute(text(sql.replace(":", "\\:")))  # a ':' is SQL, never a bind parameter
            if not result.returns_rows:
                return pd.DataFrame()
            rows = [tuple(_printable(v) for v in row) for row in result.fetchall()]
            return pd.DataFrame(rows, columns=list(result.keys()))
    except (OperationalError, DBAPIError) as exc:
        message = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        lowered = message.lower()
        if "readonly" in lowered or "read-only" in lowered or "read only" in lowered:
            raise TmafbenchError(f"refused: the query connection is read-only ({message})") from None
        raise TmafbenchError(f"query failed on {redact(url)}: {message}") from None
    finally:
        engine.dispose()


def _printable(value: Any) -> Any:
    """A BLOB (bytes, memoryview) as hex text; anything else as it is."""
    if isinstance(value, memoryview):
        value = value.tobytes()
    return value.hex() if isinstance(value, (bytes, bytearray)) else value


EXPORT_FORMATS = ("csv", "json", "parquet")


def export_runs(url: str, study: str, fmt: str = "csv", out: Path | None = None) -> pd.DataFrame:
    """The study's runs, one tidy row each (`runs_frame`); also written to `out` in `fmt` when given."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"--format must be csv, json or parquet, got {fmt!r}")
    if fmt == "parquet" and out is None:
        raise InputError("--format parquet needs --out FILE")
    db = Database(readable_copy(url), must_exist=True)
    try:
        db.check_schema()
        frame = runs_frame(db, study)
    finally:
        db.dispose()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            frame.to_csv(out, index=False)
        elif fmt == "json":
            frame.to_json(out, orient="records", date_format="iso")
        else:
            frame.to_parquet(out, index=False)
    return frame


def runs_frame(db: Database, study_name: str) -> pd.DataFrame:
    """One tidy row per run: study, cell config columns, axes, run columns, final metrics, timings."""
    with db.session() as s:
        study = s.scalar(select(Study).where(Study.name == study_name))
        if study is None:
            raise TmafbenchError(f"no study {study_name!r} in {db.safe_url}")
        pairs = s.execute(select(Cell, Run).join(Run, Run.cell_id == Cell.id).where(Cell.study_id == study.id)
                          .order_by(Cell.id, Run.attempt)).all()
        run_ids = [run.id for _cell, run in pairs]
        finals = s.execute(select(FinalMetric.run_id, FinalMetric.name, FinalMetric.value)
                           .where(FinalMetric.run_id.in_(run_ids))).all() if run_ids else []
        times = s.execute(select(Timing.run_id, Timing.name, Timing.value)
                          .where(Timing.run_id.in_(run_ids))).all() if run_ids else []
    metric_by_run: dict[int, dict[str, Any]] = {}
    for run_id, name, value in finals:
        metric_by_run.setdefault(run_id, {})[name] = value
    for run_id, name, value in times:
        metric_by_run.setdefault(run_id, {})[f"time_{name}"] = value
    rows = []
    for cell, run in pairs:
        row: dict[str, Any] = {"study": study_name, "run_id": run.id}
        row.update({c: getattr(cell, c) for c in CELL_COLUMNS})
        row.update({f"axis_{k}": v for k, v in (cell.axes or {}).items() if k not in CELL_COLUMNS})
        row.update({c: getattr(run, c) for c in RUN_COLUMNS})
        row.update(metric_by_run.get(run.id, {}))
        rows.append(row)
    return _keep_integers(pd.DataFrame(rows), rows)


def _keep_integers(frame: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Columns whose values are all integers stay integers (pandas makes `depth` 1.0 once one is missing)."""
    for column in frame.columns:
        values = [row[column] for row in rows if row.get(column) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("Int64")
    return frame
