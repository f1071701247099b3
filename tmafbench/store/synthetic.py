"""Write runs straight into the results schema, following store/schema.py's conventions.

Used by the tests (hand-valued studies) and by `tmafbench report benchmark`, which times the
rendering of a synthetic 500-run study. Nothing here trains: values are given or drawn from a
seeded generator, and the study is labelled synthetic in its description.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tmafbench.core import RunStatus
from tmafbench.store.schema import (
    Artifact,
    Base,
    Cell,
    Environment,
    EpochMetric,
    FinalMetric,
    Run,
    Study,
    Timing,
)


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def add_study(session: Session, name: str, *, reference: dict[str, Any] | None = None, description: str = "",
              report: dict[str, Any] | None = None) -> Study:
    """A study row with a minimal spec (and the study file's [report] table when given)."""
    spec = {"name": name, **({"report": report} if report is not None else {})}
    study = Study(name=name, description=description, spec=spec, spec_hash=_hash(name),
                  reference=reference, tmafbench_version="0.1.0")
    session.add(study)
    session.flush()
    return study


def add_environment(session: Session, cpu: str = "Test CPU", gpu: str | None = None, cpu_count: int = 2) -> Environment:
    """The environment row for this hardware, reused when it exists (environments are deduplicated)."""
    env_hash = _hash([cpu, gpu, cpu_count])
    existing = session.scalar(select(Environment).where(Environment.env_hash == env_hash))
    if existing is not None:
        return existing
    env = Environment(env_hash=env_hash, hostname="host", platform="linux", python="3.11",
                      torch="2", cuda=None, cpu=cpu, cpu_count=cpu_count, gpu=gpu, packages={})
    session.add(env)
    session.flush()
    return env


def add_cell(session: Session, study: Study, axes: dict[str, Any], *, task: str = "sine-sum", model: str = "mlp",
             config: dict[str, Any] | None = None) -> Cell:
    """A cell from its axes (activation label and seed included); the group hash ignores the seed.

    `config` adds to the stored configuration (e.g. {"training": {...}, "task_params": {...}}).
    """
    group = {k: v for k, v in axes.items() if k != "seed"}
    label = " ".join(str(v) if k in ("activation", "grid") else f"{k}={v}"
                     for k, v in group.items() if v is not None and k not in ("intervals", "task"))
    cell = Cell(study_id=study.id, config_hash=_hash(axes), group_hash=_hash(group), label=label,
                config={"activation": axes["activation"], "seed": axes["seed"], **(config or {})}, task=task, model=model,
                activation=axes["activation"], grid=axes.get("grid"), intervals=axes.get("intervals"),
                depth=axes.get("depth"), width=axes.get("width"), seed=axes["seed"], axes=axes)
    session.add(cell)
    session.flush()
    return cell


def add_run(
    session: Session,
    cell: Cell,
    *,
    status: str = RunStatus.COMPLETED,
    attempt: int = 1,
    metric: tuple[str, str] = ("rel_l2", "minimize"),
    finals: dict[str, float | None] | None = None,
    epochs: dict[str, list[float | None]] | None = None,
    timings: dict[str, float] | None = None,
    artifacts: dict[str, dict[str, Any]] | None = None,
    environment: Environment | None = None,
    device: str = "cpu",
    params: tuple[int, int] | None = None,
) -> Run:
    """One attempt with its final/epoch metrics, timings, artifacts (NaN/inf stored as NULL) and
    `params`: (the model's parameter count, the activations' share)."""
    num_params, num_act_params = params or (None, None)
    run = Run(cell_id=cell.id, attempt=attempt, status=status, host="host", device=device,
              environment_id=environment.id if environment else None, metric_name=metric[0],
              metric_direction=metric[1], num_params=num_params, num_act_params=num_act_params)
    session.add(run)
    session.flush()
    for name, value in (finals or {}).items():
        session.add(FinalMetric(run_id=run.id, name=name, value=_finite(value)))
    for name, values in (epochs or {}).items():
        session.add_all(EpochMetric(run_id=run.id, epoch=i + 1, name=name, value=_finite(v)) for i, v in enumerate(values))
    for name, value in (timings or {}).items():
        session.add(Timing(run_id=run.id, name=name, value=value))
    for name, data in (artifacts or {}).items():
        session.add(Artifact(run_id=run.id, name=name, data=data))
    return run


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def write_synthetic_study(url: str, name: str = "synthetic", *, activations: int = 5, ns: int = 5,
                          seeds: int = 20, epochs: int = 20, seed: int = 0) -> int:
    """A 1-D regression study like the paper's Table 3.1: activations x n x seeds runs.

    Values are drawn from a seeded generator (this is a rendering benchmark, not a result).
    Returns the number of runs written.
    """
    rng = np.random.default_rng(seed)
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    labels = ["relu", "tmaf", "tmaf-tridiag", "prelu", "gelu", "elu", "silu", "tanh"][:activations]
    x = np.linspace(-1, 1, 400)
    s = np.linspace(-6, 6, 121)
    count = 0
    with Session(engine) as session:
        study = add_study(session, name, description="synthetic values for a rendering benchmark",
                          reference={"source": "synthetic", "metric": "rel_l2",
                                     "rows": [{"activation": "relu", "n": 1, "value": 0.05}]})
        env = add_environment(session)
        for a, label in enumerate(labels):
            for n in range(1, ns + 1):
                target = np.sin(n * np.pi * x)
                for k in range(seeds):
                    axes = {"activation": label, "grid": "[-5,5]/10" if label.startswith("tmaf") else None,
                            "n": n, "seed": k}
                    cell = add_cell(session, study, axes)
                    level = 0.02 * n * (1 - 0.1 * a) * math.exp(rng.normal(0, 0.2))
                    curve = level * np.exp(np.linspace(2, 0, epochs)) * np.exp(rng.normal(0, 0.05, epochs))
                    times = 0.05 * (1 + 0.5 * a) * np.exp(rng.normal(0, 0.1, epochs))
                    artifacts = {"predictions": {"x": x.tolist(), "target": target.tolist(),
                                                 "prediction": (target + rng.normal(0, level, x.size)).tolist()}}
                    if label.startswith("tmaf"):
                        artifacts["activation_curves"] = {"s": s.tolist(), "modules": {
                            f"act{j}": [(np.maximum(s, 0) * (1 + 0.2 * rng.normal())).tolist() for _ in range(4)]
                            for j in range(2)}}
                    add_run(session, cell, environment=env,
                            finals={"rel_l2": float(curve[-1]), "train_loss": float(curve[-1] ** 2)},
                            epochs={"rel_l2": curve.tolist(), "train_loss": (curve**2).tolist(),
                                    "epoch_time_s": times.tolist(), "samples_per_s": (1000 / times).tolist()},
                            timings={"median_epoch_s": float(np.median(times)), "total_train_s": float(times.sum())},
                            artifacts=artifacts)
                    count += 1
        session.commit()
    engine.dispose()
    return count
