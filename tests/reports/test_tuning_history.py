"""The tuning section's history figure: one panel per problem, one colour per activation."""

from __future__ import annotations

import math

import pandas as pd

from tmafbench.core import SlotState
from tmafbench.reports.curves import history_figure
from tmafbench.reports.plotting import FigureContext
from tmafbench.reports.tuning import facets_of, history


def _frame() -> pd.DataFrame:
    rows = []
    for act, grid in (("relu", None), ("tmaf", "[-5,5]/10")):
        for n in (1, 2):
            axes = {"task": "sine-sum", "activation": act, "grid": grid, "intervals": 10 if grid else None,
                    "depth": 1, "n": n, "slot": 0}
            label = " ".join([act] + ([grid] if grid else []) + [f"depth=1 n={n}"])
            for trial, value in enumerate((0.9, 0.5 / n, 0.7)):
                rows.append({"study": "s", "group_hash": label, "group": label, "activation": act,
                             "axes": {**axes, "slot": trial}, "trial": trial,
                             "state": SlotState.PRUNED if trial == 2 else SlotState.COMPLETED, "value": value,
                             "params": {}})
    return pd.DataFrame(rows)


def test_panels_are_problems_and_colours_activations():
    facets = facets_of(_frame(), several=False)
    assert facets[("s", "relu depth=1 n=2")] == ("n=2", "relu")  # depth does not vary: not in the panel title
    assert facets[("s", "tmaf [-5,5]/10 depth=1 n=1")] == ("n=1", "tmaf [-5,5]/10")
    assert facets_of(_frame(), several=True)[("s", "relu depth=1 n=1")] == ("s: n=1", "relu")


def test_history_figure_has_a_panel_per_problem(tmp_path):
    frame = _frame()
    hist = history(frame, "minimize")
    assert list(hist.loc[hist["group"] == "relu depth=1 n=2", "best_so_far"]) == [0.9, 0.25, 0.25]
    assert math.isnan(history(frame.assign(state=SlotState.FAILED), "minimize")["best_so_far"].iloc[0])
    ctx = FigureContext(None, "val_rel_l2", "minimize", None, tmp_path, ("svg",), 0.5, "tuning_")
    figure = history_figure(ctx, hist, facets_of(frame, several=False))
    svg = figure.paths["svg"].read_text()
    assert ">n=1<" in svg and ">n=2<" in svg and svg.count(">tmaf [-5,5]/10<") == 1  # one legend for all panels


def test_studies_tuned_on_metrics_of_both_directions_each_pick_their_best(tmp_path, monkeypatch):
    # A report joining an error study and an accuracy study (the trainable-activation family): each
    # study's best trial follows its own metric (an earlier version took the first study's direction
    # for all, and showed MNIST's *worst* trial as the chosen one).
    from tmafbench.reports import tuning

    errors = _frame()
    accuracy = _frame().assign(study="acc", value=lambda f: 1 - f["value"])  # 0.1, 1 - 0.5/n, 0.3
    specs = {"s": {"trials": 3, "metric": "val_rel_l2"}, "acc": {"trials": 3, "metric": "val_accuracy"}}
    monkeypatch.setattr(tuning, "load_tuning", lambda engine, studies: (specs, pd.concat([errors, accuracy])))
    section = tuning.build_section(None, ["s", "acc"], tmp_path, ("png",))
    table = section.tables[0].raw.set_index(["study", "group"])
    assert table.loc[("s", "relu depth=1 n=2"), "best_value"] == 0.25  # lowest error
    assert table.loc[("acc", "relu depth=1 n=2"), "best_value"] == 0.75  # highest accuracy, not 0.1
    assert set(table["metric"]) == {"val_rel_l2", "val_accuracy"}
    assert "best value" in section.tables[0].shown.columns and section.figures
