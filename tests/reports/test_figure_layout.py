"""Every figure kind, laid out for 2, 10 and 24 groups, checked through matplotlib's objects:

- every drawn line, box, band or point carries a legend label, and every legend entry names something drawn;
- the one legend sits outside every panel (it overlaps no data) and inside the figure;
- every axis of every panel has labelled ticks in view (two at least).

The figures are laid out but not written (no image format), so the test takes seconds.
"""

from __future__ import annotations

from itertools import chain

import pandas as pd
import pytest
from layout_study import activation_names, write_layout_study
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.ticker import FixedLocator
from matplotlib.transforms import Bbox

from tmafbench.core import SlotState
from tmafbench.reports import frames, stats
from tmafbench.reports.curves import history_figure
from tmafbench.reports.figures import draw_all
from tmafbench.reports.plotting import FigureContext, Palette
from tmafbench.reports.tuning import facets_of, history

KINDS = {"metric_vs_axis", "seeds", "learning_curves", "learned_activations", "learned_breakpoints", "timing"}
# (groups in the legend, sweep axis, its values, seeds, epochs, identical curves)
CASES = {
    2: ("n", [1], 12, 6, True),  # 12 seeds a line: bands that would hide each other, so each group alone
    10: ("intervals", [10, 100], 2, 1, True),  # ReLU has no grid; one epoch: points; the groups coincide
    24: ("n", [1, 2], 2, 4, False),
}


@pytest.fixture(scope="module", params=[2, 10, pytest.param(24, marks=pytest.mark.slow)])
def laid_out(request, tmp_path_factory):
    """(the groups' labels, {figure name: matplotlib figure}, the Figure records) for one synthetic
    study, every figure kind."""
    groups = request.param
    sweep, values, seeds, epochs, same = CASES[groups]
    url = f"sqlite:///{tmp_path_factory.mktemp('layout') / 'r.db'}"
    write_layout_study(url, "layout", activations=groups, sweep=sweep, values=values, seeds=seeds, epochs=epochs,
                       same=same)
    engine = frames.open_readonly(url)
    data = frames.load(engine, ["layout"])
    drawn: list = []
    ctx = FigureContext(data, "rel_l2", "minimize", "relu", tmp_path_factory.mktemp("figures"), (), 0.6, "",
                        Palette(data.cells["series"]), drawn)
    records = draw_all(ctx, stats.group_summary(data, "rel_l2", "minimize"))
    records.append(history_figure(ctx, *_tuning_history(groups)))
    engine.dispose()
    figures = dict(zip((r.name for r in records), drawn))
    for fig in figures.values():
        FigureCanvasAgg(fig).draw()  # closed figures lose their canvas; text and ticks exist once drawn
    return list(dict.fromkeys(data.cells["series"])), figures, records


def drawn_gids(fig) -> set:
    """The gid (legend label) of everything drawn in a visible panel: lines, bands, boxes, points."""
    return {a.get_gid() for ax in fig.axes if ax.axison for a in chain(ax.lines, ax.collections, ax.patches)}


def legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _tuning_history(groups: int):
    rows = []
    for label in activation_names(groups):
        for n in (1, 2):
            group = f"{label} n={n}"
            for trial, value in enumerate((0.9, 0.5 / n, 0.05 / n)):  # a log axis of about one decade
                rows.append({"study": "s", "group_hash": group, "group": group, "activation": label,
                             "axes": {"activation": label, "n": n, "slot": trial}, "trial": trial,
                             "state": SlotState.PRUNED if trial == 1 else SlotState.COMPLETED, "value": value,
                             "params": {}})
    frame = pd.DataFrame(rows)
    return history(frame, "minimize"), facets_of(frame, several=False)


def test_every_figure_kind_is_drawn(laid_out):
    series, figures, _ = laid_out
    names = set(figures)
    swept = len(series) > 2  # the 2-group study sweeps nothing: no metric-against-axis figure
    assert KINDS - ({"metric_vs_axis"} if not swept else set()) <= names and "history" in names
    assert any(n.startswith("predictions") for n in names)


def test_every_drawn_thing_has_a_legend_entry_and_every_entry_was_drawn(laid_out):
    groups, figures, _ = laid_out
    for name, fig in figures.items():
        assert len(fig.legends) == 1, name  # one legend per figure
        labels = legend_labels(fig)
        assert len(labels) == len(set(labels)), name
        gids = drawn_gids(fig)
        assert None not in gids, f"{name}: something drawn has no legend label"
        assert gids == set(labels), f"{name}: drawn {sorted(gids - set(labels))}, listed {sorted(set(labels) - gids)}"
    assert set(groups) <= set(legend_labels(figures["seeds"]))  # every group, by its name


def test_no_legend_overlaps_a_panel_and_none_leaves_the_figure(laid_out):
    _, figures, _ = laid_out
    for name, fig in figures.items():
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        canvas = Bbox.from_bounds(0, 0, *fig.canvas.get_width_height())
        assert canvas.containsx(legend.x0) and legend.x1 <= canvas.x1 + 1 and legend.y0 >= -1, name
        for ax in fig.axes:
            if ax.axison:
                assert not legend.overlaps(ax.get_window_extent(renderer)), f"{name}: the legend covers a panel"


def _labelled_ticks(axis, low: float, high: float) -> list[str]:
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    low, high = sorted((low, high))
    span = (high - low) * 1e-9
    return [t.label1.get_text() for t in ticks
            if t.label1.get_visible() and t.label1.get_text() and low - span <= t.get_loc() <= high + span]


def test_every_axis_has_labelled_ticks(laid_out):
    _, figures, _ = laid_out
    for name, fig in figures.items():
        for ax in fig.axes:
            if not ax.axison:
                continue
            for which, axis, limits in (("x", ax.xaxis, ax.get_xlim()), ("y", ax.yaxis, ax.get_ylim())):
                labels = _labelled_ticks(axis, *limits)
                # two at least, or every place when the axis has fewer (a single epoch or category)
                fixed = isinstance(axis.get_major_locator(), FixedLocator)
                wanted = min(2, len(axis.get_majorticklocs())) if fixed else 2
                assert len(labels) >= wanted, f"{name} {ax.get_title()!r}: {which} axis labels {labels}"


def test_the_figures_say_what_they_show(laid_out):
    series, figures, records = laid_out
    groups = len(series)
    titles = {r.name: r for r in records}
    curves = " ".join(figures["learning_curves"].get_suptitle().split())  # as read, line breaks aside
    if groups == 2:  # 12 seeds a line: bands, and each group alone where a band would hide another's line
        assert "band = middle half of the seeds" in curves and "has its own panel" in curves
        assert len([ax for ax in figures["learning_curves"].axes if ax.axison]) == 2 * 2  # 2 groups x 2 metrics
    if groups == 10:  # ReLU without a grid, one epoch, identical curves
        assert "1 epoch: a curve is a single point" in curves and "Coinciding, drawn dashed in turns" in curves
        assert "one epoch: points" in titles["learning_curves"].title
        assert "no grid" in {ax.get_title() for ax in figures["learning_curves"].axes}
        ticks = [t.get_text() for t in figures["seeds"].axes[0].get_xticklabels()]
        assert ticks[0] == "no grid" and "None" not in " ".join(ticks)
        assert any("(no grid: across)" in label for label in legend_labels(figures["metric_vs_axis"]))


def test_a_log_axis_of_about_one_decade_labels_its_minor_ticks(laid_out):
    _, figures, _ = laid_out
    history = next(ax for ax in figures["history"].axes if ax.axison)
    assert history.get_yscale() == "log"
    labels = _labelled_ticks(history.yaxis, *history.get_ylim())
    assert len(labels) >= 3 and all(label[0].isdigit() for label in labels)  # plain numbers: 0.03, 0.05, 0.1, ...
