"""Synthetic studies for the figure-layout tests: any number of groups, with every artifact a figure
draws (predictions, learned activations, learned breakpoints, epoch times). Values come from a seeded
generator; nothing trains."""

from __future__ import annotations

import numpy as np
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tmafbench.store.schema import Base
from tmafbench.store.synthetic import add_cell, add_environment, add_run, add_study

NAMES = ["relu", "tmaf", "tmaf-tridiag", "prelu", "gelu", "pau", "apl", "pwlu", "kan-spline", "swish"]


def activation_names(count: int) -> list[str]:
    """`count` activation labels: real names first, then numbered TMAF variants (long labels)."""
    return (NAMES + [f"tmaf-banded bandwidth={k}" for k in range(2, count)])[:count]


def write_layout_study(url: str, name: str, *, activations: int, sweep: str, values: list, seeds: int, epochs: int,
                       same: bool = False, seed: int = 0) -> None:
    """`activations` groups per value of the `sweep` axis ("n", or "intervals", which ReLU lacks: it
    then has one "no grid" group), `seeds` runs each, `epochs` per run. `same`: every group gets the
    same curves (lines that coincide)."""
    rng = np.random.default_rng(seed)
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    x = np.linspace(-1, 1, 200)
    s = np.linspace(-6, 6, 61)
    with Session(engine) as session:
        study = add_study(session, name)
        env = add_environment(session)
        for a, label in enumerate(activation_names(activations)):
            grid = label != "relu"
            for value in (values if grid or sweep != "intervals" else [None]):
                for k in range(seeds):
                    axes = {"activation": label, "grid": "[-5,5]" if grid else None, "seed": k}
                    axes["intervals" if sweep == "intervals" else "n"] = value
                    if sweep == "intervals":
                        axes["n"] = 1
                    cell = add_cell(session, study, axes)
                    level = 0.05 * (1 + 0.1 * k) if same else 0.05 * (1 + a / 3) * float(np.exp(rng.normal(0, 0.3)))
                    curve = level * np.exp(np.linspace(3, 0, epochs)) * (1 if same else np.exp(rng.normal(0, 0.1, epochs)))
                    times = 0.05 * (1 + 0.2 * a) * np.exp(rng.normal(0, 0.05, epochs))
                    target = np.sin(3 * np.pi * x)
                    artifacts = {"predictions": {"x": x.tolist(), "target": target.tolist(),
                                                 "prediction": (target + rng.normal(0, level, x.size)).tolist()}}
                    if grid:
                        artifacts["activation_curves"] = {"s": s.tolist(), "modules": {
                            f"body.{j}": [(np.maximum(s, 0) * (1 + 0.2 * rng.normal())).tolist() for _ in range(4)]
                            for j in (1, 3)}}
                        start = np.linspace(-5, 5, 11)
                        artifacts["breakpoints"] = {"modules": {"body.1": {
                            "initial": start.tolist(),
                            "learned": [np.sort(start + rng.normal(0, 0.2, start.size)).tolist() for _ in range(6)]}}}
                    add_run(session, cell, environment=env,
                            finals={"rel_l2": float(curve[-1]), "train_loss": float(curve[-1] ** 2)},
                            epochs={"rel_l2": curve.tolist(), "train_loss": (curve**2).tolist(),
                                    "epoch_time_s": times.tolist(), "samples_per_s": (1000 / times).tolist()},
                            timings={"median_epoch_s": float(np.median(times))},
                            artifacts=artifacts if k == 0 else None)
        session.commit()
    engine.dispose()
