"""Database -> pandas DataFrames. The only module of the reports that touches SQL.

Reports read the `tmaf_*` tables and nothing else (docs/design.md section 1); they never write.
SQLite databases are opened read-only (URI `mode=ro`), PostgreSQL sessions read-only.

One row of `ReportData.cells` is one cell with its *outcome*: the completed run when there is
one, else the latest attempt, else "pending" (no attempt yet). Every cell stays in the frame,
so failures and missing seeds are counted, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd
from pydantic import ValidationError
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine

from tmafbench.core import HASH_NEUTRAL_DEFAULTS, RunStatus, SlotState, base_metric
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import read_only_engine
from tmafbench.store.gzipped import readable_copy
from tmafbench.store.schema import Artifact, Cell, Environment, EpochMetric, FinalMetric, Run, Study, Timing
from tmafbench.core import ReportSpec

# Axis names with a fixed meaning in every study (store/schema.py conventions).
SEED_AXIS = "seed"
ACTIVATION_AXIS = "activation"
# Preferred order when one axis is picked for the wide tables and the "metric vs axis" figure.
SWEEP_AXIS_PREFERENCE = ("n", "depth", "width", "train_size", "intervals", "grid")


class NothingFinished(TmafbenchError):
    """No run of the selection has completed yet."""


@dataclass
class ReportData:
    """Everything a report needs, as tidy frames.

    cells:   one row per cell (see module docstring); axis values as columns named by axis.
    finals:  one row per cell with a run, final metrics as columns (index: cell_id).
    epochs:  long format (cell_id, epoch, name, value) for runs shown in curves.
    timings: one row per cell with a run, timing names as columns (index: cell_id).
    """

    studies: pd.DataFrame
    cells: pd.DataFrame
    finals: pd.DataFrame
    epochs: pd.DataFrame
    timings: pd.DataFrame
    axes: list[str]  # every axis name seen, seed and activation included
    references: dict[str, dict[str, Any]] = field(default_factory=dict)  # study -> reference
    engine: Engine | None = None  # kept to load artifacts lazily
    sweep: str | None = None  # the axis spread over columns / x (see `sweep_axis`)
    settings: dict[str, ReportSpec] = field(default_factory=dict)  # study -> its [report] table
    all_cells: pd.DataFrame | None = None  # for one task's section (`subset`): the cells of every task

    def interval(self) -> str:
        """The interval method the studies' [report] tables ask for (one report shows one method)."""
        asked = {name: (spec.interval if spec else "auto") for name, spec in self.settings.items()}
        if len(set(asked.values())) > 1:
            detail = ", ".join(f"{name}: {value}" for name, value in asked.items())
            raise TmafbenchError(f"the studies ask for different [report] intervals ({detail}); report them separately")
        return next(iter(asked.values()), "auto")

    def success_threshold(self, study: str, task: str, metric: str) -> float | None:
        """The study file's success threshold for `metric` on `task` ([report] success), or None."""
        spec = self.settings.get(study)
        return spec.threshold(metric, task) if spec else None

    @property
    def group_axes(self) -> list[str]:
        """Axes that vary within the report and define groups (seed excluded)."""
        varying = [a for a in self.axes if a != SEED_AXIS and self.cells[a].map(str).nunique() > 1]
        if ACTIVATION_AXIS not in varying:
            varying.insert(0, ACTIVATION_AXIS)
        if self.cells["study"].nunique() > 1:
            varying.insert(0, "study")
        return varying

    def tasks(self) -> list[str]:
        """Task labels in study order (the "task" axis, else the registry name)."""
        return list(dict.fromkeys(self.cells["task"].astype(str)))

    def subset(self, task: str) -> "ReportData":
        """The cells of one task, with groups, series and sweep axis recomputed for them alone."""
        cells = self.cells[self.cells["task"].astype(str) == task].copy()
        ids = set(cells["cell_id"])
        sub = ReportData(self.studies, cells.reset_index(drop=True), self.finals[self.finals.index.isin(ids)],
                         self.epochs[self.epochs["cell_id"].isin(ids)], self.timings[self.timings.index.isin(ids)],
                         self.axes, self.references, self.engine, settings=self.settings,
                         all_cells=self.cells if self.all_cells is None else self.all_cells)
        _add_series(sub)
        return sub

    def artifacts(self, name: str, cell_ids: Iterable[int]) -> dict[int, dict]:
        """{cell_id: artifact data} for the outcome runs of `cell_ids` that stored `name`."""
        runs = self.cells.set_index("cell_id")["run_id"]
        wanted = {int(runs[c]): int(c) for c in cell_ids if pd.notna(runs.get(c))}
        if not wanted or self.engine is None:
            return {}
        stmt = select(Artifact.run_id, Artifact.data).where(
            Artifact.name == name, Artifact.run_id.in_(list(wanted))
        )
        with self.engine.connect() as conn:
            return {wanted[run_id]: data for run_id, data in conn.execute(stmt)}


def open_readonly(url: str) -> Engine:
    """An engine that cannot write (store.database.read_only_engine), with the report's message; a
    shipped `results.db.gz` is read as it is (store.gzipped)."""
    return read_only_engine(readable_copy(url), missing="no results database at {path} (pass --storage or set TMAFBENCH_STORAGE)")


def load(engine: Engine, study_names: list[str]) -> ReportData:
    """Read the named studies. Raises TmafbenchError for a missing or empty study."""
    if not study_names:
        raise TmafbenchError("name at least one study")
    if not inspect(engine).has_table(Study.__tablename__):
        raise TmafbenchError("the database has no tmafbench results (no tmaf_study table)")
    with engine.connect() as conn:
        studies = pd.read_sql(select(Study.id, Study.name, Study.reference, Study.description, Study.spec), conn)
        _check_studies(studies, study_names)
        studies = studies[studies["name"].isin(study_names)].reset_index(drop=True)
        cells, axes = _load_cells(conn, studies)
        run_ids = [int(r) for r in cells["run_id"].dropna()]
        finals = _wide(conn, FinalMetric, run_ids, cells)
        timings = _wide(conn, Timing, run_ids, cells)
        epochs = _load_epochs(conn, run_ids, cells)
    references = {row.name: row.reference for row in studies.itertuples() if row.reference}
    settings = {row.name: _report_settings(row.name, row.spec) for row in studies.itertuples()}
    data = ReportData(studies, cells, finals, epochs, timings, axes, references, engine, settings=settings)
    _add_series(data)
    return data


def _report_settings(study: str, spec: Any) -> ReportSpec | None:
    """The study's stored [report] table (validated when the study file was read), or None."""
    table = (spec or {}).get("report")
    if table is None:
        return None
    try:
        return ReportSpec.model_validate(table)
    except ValidationError as exc:
        raise TmafbenchError(f"study {study}: its stored [report] table is not valid: {exc.errors()[0]['msg']}") from None


def _add_series(data: ReportData) -> None:
    """`group` (unique across studies) and `series`: the group's label without the sweep axis.

    A series is one line in the figures and one row in the wide table, e.g. "tmaf [-5,5]/10 depth=2".
    """
    cells = data.cells
    cells["group"] = cells["study"] + ":" + cells["group_hash"]
    sweep = sweep_axis(data)
    # "intervals" is implied by the grid label (as in the study runner's group labels).
    implied = {"intervals"} if "grid" in data.group_axes else set()
    shown = [a for a in data.group_axes if a != sweep and a not in implied]

    def label(row: pd.Series) -> str:
        parts = []
        for axis in shown:
            value = row[axis]
            if value is None or (isinstance(value, float) and pd.isna(value)):
                continue
            bare = axis in (ACTIVATION_AXIS, "grid", "study")
            parts.append(str(value) if bare else f"{axis}={_fmt_value(value)}")
        return " ".join(parts) or str(row[ACTIVATION_AXIS])

    cells["series"] = cells.apply(label, axis=1) if len(cells) else pd.Series(dtype=object)
    # The sweep value under a fixed name: an axis called "n" must not clash with a count "n".
    cells["sweep"] = cells[sweep] if sweep else None
    data.sweep = sweep


# Training settings shown in a report's "Training" table, in this order, with their column names.
TRAINING_COLUMNS = {"optimizer": "optimizer", "lr": "lr", "act_lr": "activation lr", "momentum": "momentum",
                    "weight_decay": "weight decay", "schedule": "schedule", "epochs": "epochs",
                    "batch_size": "batch", "grad_clip": "grad clip", "init_scale": "init scale",
                    "loss_reduction": "loss reduction"}


def training_settings(cells: pd.DataFrame) -> dict[str, str]:
    """The cells' training settings by column name: a value every cell shares, or the range it spans.

    A tuned study's chosen settings differ by group; they then read "0.003–0.09 (differs by group)".
    Task parameters that are not axes (training and test set sizes) go under "data". Empty when the
    cells record no configuration.
    """
    configs = [c for c in cells["config"] if c] if "config" in cells else []
    if not configs:
        return {}
    uses_sgd = any(c.get("training", {}).get("optimizer") == "sgd" for c in configs)
    out = {}
    for key, column in TRAINING_COLUMNS.items():
        if key == "momentum" and not uses_sgd:
            continue
        # A key missing from a stored training table predates its option: it means the option's default.
        values = [c["training"].get(key, HASH_NEUTRAL_DEFAULTS.get(key)) if c.get("training") else None
                  for c in configs]
        if key == "act_lr":  # a recorded None means "the weight lr"
            values = ["= lr" if v is None and key in c.get("training", {}) else v for v, c in zip(values, configs)]
        text = _values_text(values)
        if text is not None:
            out[column] = text
    task_keys = sorted({k for c in configs for k in c.get("task_params", {})} - set(cells.columns))
    if task_keys:
        out["data"] = ", ".join(f"{k}={_values_text([c.get('task_params', {}).get(k) for c in configs])}"
                                for k in task_keys)
    return out


def _values_text(values: list[Any]) -> str | None:
    """One value as written, a numeric range marked as differing by group, or the distinct values."""
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    if not distinct:
        return None
    if len(distinct) == 1:
        return _fmt_value(distinct[0])
    numbers = [v for v in distinct if isinstance(v, (int, float)) and not isinstance(v, bool)]
    others = [_short(v) for v in distinct if v not in numbers]
    if len(numbers) > 1:  # a range rather than every tuned value
        others.insert(0, f"{_short(min(numbers))}–{_short(max(numbers))} (differs by group)")
    elif numbers:
        others.insert(0, _short(numbers[0]))
    return " | ".join(others)


def _short(value: Any) -> str:
    """Integers in full, other floats to 3 significant digits."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3g}"
    return _fmt_value(value)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_studies(studies: pd.DataFrame, names: list[str]) -> None:
    known = set(studies["name"])
    missing = [n for n in names if n not in known]
    if missing:
        choices = ", ".join(sorted(known)) or "none"
        raise TmafbenchError(f"unknown study {', '.join(missing)}; studies in this database: {choices}")


def _load_cells(conn, studies: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per cell with its outcome run; axis values expanded into columns."""
    cell_rows = conn.execute(
        select(Cell.id, Cell.study_id, Cell.group_hash, Cell.label, Cell.task, Cell.model, Cell.activation, Cell.seed, Cell.axes,
               Cell.config).where(
            Cell.study_id.in_([int(i) for i in studies["id"]])
        )
    ).all()
    names = dict(zip(studies["id"], studies["name"]))
    empty = [n for sid, n in names.items() if not any(r.study_id == sid for r in cell_rows)]
    if empty:
        raise TmafbenchError(f"study {', '.join(empty)} has no cells yet: nothing to report")
    runs = _load_runs(conn, [r.id for r in cell_rows])
    records, axes = [], []
    for r in cell_rows:
        cell_axes = dict(r.axes or {})
        cell_axes.setdefault(ACTIVATION_AXIS, r.activation)
        cell_axes.setdefault(SEED_AXIS, r.seed)
        cell_axes.setdefault("task", r.task)  # reports are split by task (metrics differ)
        axes.extend(a for a in cell_axes if a not in axes)
        outcome = runs.get(r.id, {})
        records.append(
            {
                **{f"axis:{k}": v for k, v in cell_axes.items()},
                "study": names[r.study_id],
                "cell_id": r.id,
                "group_hash": r.group_hash,
                "label": r.label,
                "task": r.task,
                "model": r.model,
                "seed": r.seed,
                "status": outcome.get("status", "pending"),
                "run_id": outcome.get("run_id"),
                "attempts": outcome.get("attempts", 0),
                "failed_attempts": outcome.get("failed_attempts", 0),
                "metric_name": outcome.get("metric_name"),
                "metric_direction": outcome.get("metric_direction"),
                "hardware": outcome.get("hardware"),
                "device": outcome.get("device"),
                "num_params": outcome.get("num_params"),  # the whole model's trainable parameters
                "num_act_params": outcome.get("num_act_params"),  # of which the activations'
                "config": r.config or {},
            }
        )
    frame = pd.DataFrame.from_records(records)
    # Axis columns take the axis name; "seed"/"activation" already agree with the run columns.
    rename = {f"axis:{a}": a for a in axes}
    frame = frame.drop(columns=[c for c in (f"axis:{SEED_AXIS}",) if c in frame]).rename(columns=rename)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    for axis in axes:
        if axis not in frame:
            frame[axis] = None
        frame[axis] = frame[axis].astype(object).where(frame[axis].notna(), None)
    frame["run_id"] = frame["run_id"].astype("Int64")
    return frame, axes


def _load_runs(conn, cell_ids: list[int]) -> dict[int, dict[str, Any]]:
    """cell_id -> outcome: the completed run if any, else the latest attempt."""
    if not cell_ids:
        return {}
    stmt = (
        select(
            Run.id, Run.cell_id, Run.attempt, Run.status, Run.device, Run.metric_name, Run.metric_direction,
            Run.num_params, Run.num_act_params, Environment.cpu, Environment.gpu, Environment.cpu_count,
        )
        .outerjoin(Environment, Run.environment_id == Environment.id)
        .where(Run.cell_id.in_(cell_ids))
        .order_by(Run.cell_id, Run.attempt)
    )
    outcomes: dict[int, dict[str, Any]] = {}
    for row in conn.execute(stmt):
        entry = outcomes.setdefault(row.cell_id, {"attempts": 0, "failed_attempts": 0})
        entry["attempts"] += 1
        if entry.get("status") == RunStatus.COMPLETED:
            continue  # a later attempt never replaces a completed one
        if entry.get("status") in (RunStatus.FAILED, RunStatus.DIVERGED, RunStatus.INTERRUPTED, RunStatus.LOST):
            entry["failed_attempts"] += 1
        entry.update(
            status=row.status,
            run_id=row.id,
            metric_name=row.metric_name,
            metric_direction=row.metric_direction,
            device=row.device,
            hardware=hardware_label(row.device, row.cpu, row.gpu, row.cpu_count),
            num_params=row.num_params,
            num_act_params=row.num_act_params,
        )
    return outcomes


def hardware_label(device: str | None, cpu: str | None, gpu: str | None, cpu_count: int | None) -> str:
    """'NVIDIA H200 (cuda:0)' or 'AMD EPYC 7B13 (cpu, 2 cores)'; 'unknown' without an environment."""
    device = device or "cpu"
    if device.startswith("cuda") and gpu:
        return f"{gpu} ({device})"
    if cpu:
        cores = f", {cpu_count} cores" if cpu_count else ""
        return f"{cpu} ({device}{cores})"
    return f"unknown ({device})"


def _chunks(ids: list[int], size: int = 900) -> Iterable[list[int]]:
    # SQLite limits bound parameters per statement; chunk the IN lists.
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _wide(conn, table, run_ids: list[int], cells: pd.DataFrame) -> pd.DataFrame:
    """Long (run_id, name, value) -> one row per cell, one column per name."""
    parts = [
        pd.read_sql(select(table.run_id, table.name, table.value).where(table.run_id.in_(chunk)), conn)
        for chunk in _chunks(run_ids)
    ]
    long = pd.concat(parts) if parts else pd.DataFrame(columns=["run_id", "name", "value"])
    wide = long.pivot_table(index="run_id", columns="name", values="value", aggfunc="first", dropna=False)
    run_to_cell = cells.dropna(subset=["run_id"]).set_index("run_id")["cell_id"]
    wide.index = wide.index.map(lambda r: int(run_to_cell[r]))
    wide.index.name = "cell_id"
    wide.columns.name = None
    return wide.astype(float)


def _load_epochs(conn, run_ids: list[int], cells: pd.DataFrame) -> pd.DataFrame:
    parts = [
        pd.read_sql(
            select(EpochMetric.run_id, EpochMetric.epoch, EpochMetric.name, EpochMetric.value).where(
                EpochMetric.run_id.in_(chunk)
            ),
            conn,
        )
        for chunk in _chunks(run_ids)
    ]
    long = pd.concat(parts) if parts else pd.DataFrame(columns=["run_id", "epoch", "name", "value"])
    run_to_cell = cells.dropna(subset=["run_id"]).set_index("run_id")["cell_id"]
    long["cell_id"] = long["run_id"].map(lambda r: int(run_to_cell[r]))
    long["value"] = long["value"].astype(float)
    return long.drop(columns=["run_id"]).reset_index(drop=True)


def primary_metric(data: ReportData, override: str | None = None) -> tuple[str, str]:
    """(metric column in `finals`, direction). The runs' own metric, or `val_` when test was skipped."""
    # Failed runs may carry an empty metric name; the completed runs say what the task measures.
    named = data.cells[data.cells["metric_name"].fillna("").astype(str) != ""]
    if (named["status"] == RunStatus.COMPLETED).any():
        named = named[named["status"] == RunStatus.COMPLETED]
    direction_of = named.groupby("metric_name")["metric_direction"].first()
    if override:
        base = base_metric(override)
        direction = direction_of.get(base) or _guess_direction(base)
        if override not in data.finals:
            raise TmafbenchError(
                f"metric {override!r} not in the results; available: {', '.join(sorted(data.finals.columns)) or 'none'}"
            )
        return override, direction
    if direction_of.empty:
        raise NothingFinished("no run has finished yet: nothing to report")
    name = named["metric_name"].mode().iloc[0]
    direction = direction_of[name] or _guess_direction(name)
    if name not in data.finals and f"val_{name}" in data.finals:
        name = f"val_{name}"
    return name, direction


def training_set_metric(data: ReportData, metric: str) -> str | None:
    """"train_rel_l2" for "rel_l2" when the runs stored it (training.evaluate_train), else None."""
    name = f"train_{base_metric(metric)}"
    return name if name != metric and name in data.finals else None


def _guess_direction(name: str) -> str:
    return "maximize" if "acc" in name else "minimize"


def sweep_axis(data: ReportData) -> str | None:
    """The axis to spread over columns / the x axis (Table 3.1's `n`), or None when none varies."""
    # A sweep varies within an activation; "intervals" that only tells ReLU (None) from TMAF (10)
    # is part of the activation's identity, not a sweep.
    candidates = [
        a for a in data.group_axes
        if a not in (ACTIVATION_AXIS, "study")
        and (data.cells.dropna(subset=[a]).groupby(ACTIVATION_AXIS)[a].agg(lambda v: v.map(str).nunique()) > 1).any()
    ]
    for preferred in SWEEP_AXIS_PREFERENCE:
        if preferred in candidates:
            return preferred
    return candidates[0] if candidates else None


def load_tuning(engine: Engine, studies: list[str]) -> tuple[dict, pd.DataFrame]:
    """The tuning of reported studies: ({study name: its [tune] table}, one row per finished slot run:
    study, group, activation, axes, trial, state, value, params, pack).

    The table is the one the tuning study recorded as it ran (`TuneSpec.as_run`: defaults filled in,
    the sampler behaviour) when there is one; else, for a study stored before that record existed,
    the table as written, with the metric its slot runs stored when the file left it out (an
    accuracy study tuned on val_accuracy must not be read as an error). `pack` is how many cells
    trained together with the slot (its pack_size timing)."""
    with engine.connect() as conn:
        reported = conn.execute(select(Study.id, Study.name, Study.spec).where(Study.name.in_(studies))).all()
        parents = {sid: name for sid, name, _spec in reported}
        children = conn.execute(select(Study.id, Study.parent_id, Study.spec)
                                .where(Study.kind == "tune", Study.parent_id.in_(list(parents)))).all()
        tune_ids = {sid: parent for sid, parent, _spec in children}
        rows = conn.execute(
            select(Cell.study_id, Cell.group_hash, Cell.label, Cell.activation, Cell.axes, Run.status, Run.metric_name,
                   Artifact.data, Timing.value)
            .join(Run, Run.cell_id == Cell.id)
            .join(Artifact, (Artifact.run_id == Run.id) & (Artifact.name == "tuning"), isouter=True)
            .join(Timing, (Timing.run_id == Run.id) & (Timing.name == "pack_size"), isouter=True)
            .where(Cell.study_id.in_(list(tune_ids)),
                   Run.status.in_((RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.FAILED)))
        ).all()
    records: list[dict[str, Any]] = []
    metrics: dict[str, str] = {}
    for study_id, group_hash, label, activation, axes, status, metric, data, pack in rows:
        data = data or {}
        study = parents[tune_ids[study_id]]
        if metric and status == RunStatus.COMPLETED:
            metrics.setdefault(study, metric)
        records.append({"study": study, "group_hash": group_hash, "group": label,
                        "activation": activation, "axes": axes or {}, "trial": data.get("trial_number"),
                        "state": SlotState.read(data.get("state")) if status != RunStatus.FAILED else SlotState.FAILED,
                        "value": data.get("value"), "params": data.get("params", {}),
                        "pack": int(pack) if pack is not None else None})
    frame = pd.DataFrame(records, columns=["study", "group_hash", "group", "activation", "axes", "trial", "state",
                                           "value", "params", "pack"])
    recorded = {tune_ids[sid]: (spec or {}).get("tune") for sid, _parent, spec in children}
    specs = {}
    for sid, name, spec in reported:
        if sid not in recorded:
            continue
        record: dict[str, Any] = recorded[sid] or {}
        table = dict(record if record.get("sampler") else (spec or {}).get("tune") or {})
        if not table.get("metric") and name in metrics:
            table["metric"] = metrics[name]
        specs[name] = table
    return specs, frame
