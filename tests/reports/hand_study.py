"""A small hand-valued study written straight into a temporary SQLite database.

The values are chosen so that every statistic in the report can be checked by hand:

| group        | seeds 0..5 final rel_l2                      | outcome                              |
|--------------|----------------------------------------------|--------------------------------------|
| relu n=1     | 0.10 0.12 0.11 0.13 0.09 0.10                | all completed                        |
| tmaf n=1     | 0.08 0.11 0.12 0.10 0.07 0.095               | all completed (6 pairs: Wilcoxon)    |
| gelu n=1     | same as relu                                 | all completed (identical)            |
| relu n=2     | 0.20 0.22 0.21 0.25 0.19 0.20                | all completed                        |
| tmaf n=2     | 0.18 0.20 0.22 0.21, seed 4 diverged,        | 4 pairs: too few for a test          |
|              | seed 5: attempt 1 failed, attempt 2 running  |                                      |

Epoch times: relu 0.10/0.11/0.12 s, tmaf 0.30/0.33/0.36 s, gelu 0.20/0.22/0.24 s (ratios 3 and 2).
"""

from __future__ import annotations


import numpy as np
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tmafbench.store.synthetic import add_cell, add_environment, add_run, add_study
from tmafbench.store.schema import Base

VALUES = {
    ("relu", 1): [0.10, 0.12, 0.11, 0.13, 0.09, 0.10],
    ("tmaf", 1): [0.08, 0.11, 0.12, 0.10, 0.07, 0.095],
    ("gelu", 1): [0.10, 0.12, 0.11, 0.13, 0.09, 0.10],
    ("relu", 2): [0.20, 0.22, 0.21, 0.25, 0.19, 0.20],
    ("tmaf", 2): [0.18, 0.20, 0.22, 0.21],
}
EPOCH_TIMES = {"relu": [0.10, 0.11, 0.12], "tmaf": [0.30, 0.33, 0.36], "gelu": [0.20, 0.22, 0.24]}
REFERENCE = {
    "source": "paper Table 3.1",
    "metric": "rel_l2",
    "rows": [{"activation": "relu", "n": 1, "value": 0.2}, {"activation": "tmaf", "n": 1, "value": 0.095},
             {"activation": "elu", "n": 1, "value": 0.1}],
}
STUDY = "hand"
# (parameters, of which the activation's): a 1x20 MLP on n inputs; TMAF holds 12 values per feature.
PARAMS = {"relu": (61, 0), "gelu": (61, 0), "tmaf": (301, 240)}


def _axes(activation: str, n: int, seed: int) -> dict:
    tmaf = activation == "tmaf"
    return {"activation": activation, "grid": "[-5,5]/10" if tmaf else None, "intervals": 10 if tmaf else None,
            "depth": 1, "width": 20, "n": n, "seed": seed}


def _completed(session, cell, env, activation: str, value: float, seed: int, n: int) -> None:
    x = np.linspace(0, 1, 101)
    target = np.sin(2 * np.pi * n * x)
    artifacts = {"predictions": {"x": x.tolist(), "target": target.tolist(), "prediction": (target * (1 - value)).tolist()}}
    if activation == "tmaf":
        s = np.linspace(-6, 6, 25)
        artifacts["activation_curves"] = {"s": s.tolist(), "modules": {
            "body.0.act": [(np.maximum(s, 0) * (1 + 0.1 * k)).tolist() for k in range(3)]}}
    times = EPOCH_TIMES[activation]
    add_run(session, cell, environment=env,
            finals={"rel_l2": value, "train_loss": value**2, "mse": value / 10},
            epochs={"rel_l2": [4 * value, 2 * value, value], "train_loss": [value, value / 2, value**2],
                    "epoch_time_s": times, "samples_per_s": [1000 / t for t in times]},
            timings={"median_epoch_s": float(np.median(times)), "total_train_s": float(sum(times))},
            artifacts=artifacts if seed == 0 else None, params=PARAMS[activation])


def write_hand_study(url: str, name: str = STUDY) -> None:
    """Write the table above into `url` (tables created when missing)."""
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        study = add_study(session, name, reference=REFERENCE)
        env = add_environment(session, cpu="Test CPU", cpu_count=2)
        for (activation, n) in [("relu", 1), ("tmaf", 1), ("gelu", 1), ("relu", 2), ("tmaf", 2)]:
            for seed in range(6):
                cell = add_cell(session, study, _axes(activation, n, seed))
                values = VALUES[(activation, n)]
                if seed < len(values):
                    _completed(session, cell, env, activation, values[seed], seed, n)
                elif seed == 4:
                    add_run(session, cell, status="diverged", environment=env, finals={"rel_l2": float("nan")})
                else:
                    add_run(session, cell, status="failed", environment=env)
                    add_run(session, cell, status="running", attempt=2, environment=env)
        session.commit()
    engine.dispose()
