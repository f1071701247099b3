"""Curves over training: the learning curves of a task's groups, and a tuned study's history.

Both follow plotting.py's rules: one legend beside the panels, every axis labelled, the band rule,
and lines that coincide drawn dashed in turns and named in the title.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from tmafbench.core import SlotState
from tmafbench.reports.frames import training_set_metric
from tmafbench.reports.labels import metric_label
from tmafbench.reports.plotting import (
    MAX_SEED_LINES,
    SPREAD_TEXT,
    Figure,
    FigureContext,
    coinciding,
    completed,
    facet_title,
    facet_values,
    hides,
    in_facet,
    line_entry,
    spread_of,
    tag,
    turn_dashes,
    use_log,
)

# Runs with at most this many epochs get markers: a single epoch is a point, not an invisible line.
MARKER_EPOCHS = 3
MAX_PANEL_COLUMNS = 4  # panels side by side; more wrap onto further rows


@dataclass
class Curve:
    """One group's curves of one metric in one panel: the mean over seeds, its middle half, every run."""

    series: str
    mean: pd.Series  # epoch -> mean over seeds
    low: pd.Series  # epoch -> 25th percentile
    high: pd.Series  # epoch -> 75th percentile
    runs: list[pd.DataFrame]  # per run: epoch, value
    spread: str  # plotting.spread_of(seeds): "lines" or "band"


@dataclass
class Panels:
    """What the learning-curve figure says besides its lines."""

    split: bool = False  # some group was given its own panel (its band would hide another's line)
    spreads: set[str] = field(default_factory=set)
    coincide: dict[tuple[str, ...], list[str]] = field(default_factory=dict)  # names -> where


def _curve(series: str, frame: pd.DataFrame) -> Curve:
    by_epoch = frame.groupby("epoch")["value"]
    runs = [run[["epoch", "value"]] for _, run in frame.groupby("cell_id")]
    return Curve(series, by_epoch.mean(), by_epoch.quantile(0.25), by_epoch.quantile(0.75), runs, spread_of(len(runs)))


def learning_curves(ctx: FigureContext) -> list[Figure]:
    """Test metric (top), the same metric on the training set when the runs measured it
    (evaluate_train), and train loss (bottom) against epoch: the mean over seeds, with every seed as
    a thin line under it (above MAX_SEED_LINES seeds of a line, a band over the middle half of them).
    Where a band would hide another group's line, each group of that sweep value gets its own panel."""
    data = ctx.data
    done = completed(data)
    on_train = training_set_metric(data, ctx.metric)
    names = [m for m in (ctx.metric, on_train, "train_loss") if m and m in set(data.epochs["name"])]
    if not names or done.empty:
        return []
    ep = data.epochs[data.epochs["name"].isin(names)].dropna(subset=["value"])
    ep = ep.merge(done[["cell_id", "series", "sweep"]], on="cell_id")
    if ep.empty:
        return []
    order = list(dict.fromkeys(data.cells["series"]))
    facets = facet_values(data)
    curves: dict[tuple[str, int, str], Curve] = {}
    for k, value in enumerate(facets):
        for (name, series), f in ep[in_facet(ep, data, value)].groupby(["name", "series"], sort=False):
            curves[(name, k, series)] = _curve(series, f)
    said = Panels()
    columns = _columns(facets, curves, names, order, said)
    ncols = min(len(columns), MAX_PANEL_COLUMNS)
    blocks = -(-len(columns) // ncols)
    fig, axes = plt.subplots(blocks * len(names), ncols, squeeze=False,
                             figsize=ctx.figsize(max(4 * ncols, 6.5), 3.0 * blocks * len(names)))
    first, last = int(ep["epoch"].min()), int(ep["epoch"].max())
    marker = "o" if last <= MARKER_EPOCHS else None
    drawn: list[str] = []
    used = set()
    for row, name in enumerate(names):
        direction = ctx.direction if name in (ctx.metric, on_train) else "minimize"
        log = use_log(ep.loc[ep["name"] == name, "value"], direction)
        panels = []
        for c, (k, members) in enumerate(columns):
            ax = axes[(c // ncols) * len(names) + row][c % ncols]
            panels.append(ax)
            used.add(id(ax))
            where = facet_title(data, facets[k])
            title = " · ".join(t for t in (where, members[0] if said.split and len(members) == 1 else "") if t)
            drawn += _panel(ax, ctx, [curves[(name, k, s)] for s in members if (name, k, s) in curves], log, marker,
                            said, f"{name}{', ' + where if where else ''}")
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(metric_label(name, direction) if c % ncols == 0 else "", fontsize=8)
            _epoch_axis(ax, first, last, marker)
        _share_limits(panels, log)
    for ax in axes.flat:
        if id(ax) not in used:  # the last block's empty places
            ax.axis("off")
    legend = {s: line_entry(ctx.colors[s], marker=marker, markersize=5) for s in order if s in drawn}
    spread = _spread_text(said.spreads)
    notes = _notes(said, last)
    fig.suptitle("\n".join([f"Learning curves: mean over seeds (thick), {spread}", *notes]), fontsize=10)
    title = f"Learning curves (mean over seeds; {spread})" + ("; one epoch: points" if last == 1 else "")
    return [ctx.save(fig, "learning_curves", title, legend, note=" ".join(f"{n}." for n in notes))]


def _columns(facets: list, curves: dict, names: list[str], order: list[str], said: Panels) -> list[tuple[int, list[str]]]:
    """(facet index, the groups in the panel) per column: all of a facet's groups together, or each
    alone where a band would hide another group's mean line."""
    columns = []
    for k in range(len(facets)):
        members = [s for s in order if any((n, k, s) in curves for n in names)]
        if not members:
            continue
        split = any(hides(band.low.index, band.low.to_numpy(), band.high.to_numpy(), curves[(n, k, other)].mean.to_dict())
                    for n in names for s in members if (band := curves.get((n, k, s))) and band.spread == "band"
                    for other in members if other != s and (n, k, other) in curves)
        said.split |= split and len(members) > 1
        columns += [(k, [s]) for s in members] if split else [(k, members)]
    return columns


def _panel(ax, ctx: FigureContext, lines: list[Curve], log: bool, marker, said: Panels, where: str) -> list[str]:
    """Draw one panel's groups; returns the groups drawn."""
    if log:
        ax.set_yscale("log")
    styles, sizes = {}, {}
    for cluster in coinciding({c.series: c.mean.to_dict() for c in lines}, log):
        said.coincide.setdefault(tuple(cluster), []).append(where)
        styles.update({s: turn_dashes(i, len(cluster)) for i, s in enumerate(cluster)})
        sizes.update({s: 6 + 3 * (len(cluster) - 1 - i) for i, s in enumerate(cluster)})  # concentric markers
    for line in lines:
        color = ctx.colors[line.series]
        said.spreads.add(line.spread)
        if line.spread == "band":
            tag(ax.fill_between(line.low.index, line.low, line.high, color=color, alpha=0.2, lw=0), line.series)
        else:
            for run in line.runs:
                tag(ax.plot(run["epoch"], run["value"], color=color, lw=0.7, alpha=0.35, marker=marker, markersize=3),
                    line.series)
        tag(ax.plot(line.mean.index, line.mean, color=color, lw=1.8, marker=marker, markersize=sizes.get(line.series, 6),
                    ls=styles.get(line.series, "-")), line.series)
    ax.grid(alpha=0.3)
    return [c.series for c in lines]


def _epoch_axis(ax, first: int, last: int, marker) -> None:
    """Numbered epochs, the same range on every panel; a few epochs get one tick each."""
    ax.set_xlabel("epoch")
    if marker:
        ax.set_xticks(range(1, last + 1))
        ax.set_xlim(0.5, last + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        margin = 0.02 * (last - first)
        ax.set_xlim(first - margin, last + margin)


def _share_limits(panels: list, log: bool) -> None:
    """One y range for a metric's panels, so that they compare at a glance: every panel's data and a
    5% margin (on the log scale for a log axis)."""
    spans = [ax.dataLim.intervaly for ax in panels if ax.has_data()]
    if not spans:
        return
    low, high = min(s[0] for s in spans), max(s[1] for s in spans)
    if log:
        low, high = math.log10(low), math.log10(high)
    pad = 0.05 * (high - low) or 0.05 * (abs(high) or 1.0)
    low, high = low - pad, high + pad
    for ax in panels:
        ax.set_ylim((10**low, 10**high) if log else (low, high))


def _spread_text(spreads: set[str]) -> str:
    """What the thin lines or bands mean; with both in one figure, when each is used."""
    if len(spreads) == 1:
        return SPREAD_TEXT[next(iter(spreads))]
    return (f"{SPREAD_TEXT['lines']} ({MAX_SEED_LINES} seeds or fewer), "
            f"{SPREAD_TEXT['band']} (more than {MAX_SEED_LINES} seeds)")


def _notes(said: Panels, last: int) -> list[str]:
    notes = []
    if last == 1:
        notes.append("Each run trained for 1 epoch: a curve is a single point")
    if said.split:
        notes.append("A group whose band would hide another group's line has its own panel")
    for names, places in said.coincide.items():
        notes.append(f"Coinciding, drawn dashed in turns: {' = '.join(names)} ({'; '.join(places)})")
    return notes


# ------------------------------------------------------------------------------- tuning history


def history_figure(ctx: FigureContext, hist: pd.DataFrame, facets: dict[tuple[str, str], tuple[str, str]]) -> Figure:
    """Best validation value so far against trials, one panel per problem and one line per activation;
    each trial as a dot (x: pruned)."""
    hist = hist.assign(panel=[facets[k][0] for k in zip(hist["study"], hist["group"])],
                       series=[facets[k][1] for k in zip(hist["study"], hist["group"])])
    panels = list(dict.fromkeys(hist["panel"]))
    series = list(dict.fromkeys(hist["series"]))
    cols = min(len(panels), MAX_PANEL_COLUMNS)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=ctx.figsize(3.6 * cols + 0.6, 3.0 * rows + 0.6), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        mine = hist[hist["panel"] == panel]
        for name, sub in mine.groupby("series", sort=False):
            color = ctx.colors[name]
            tag(ax.step(sub["n"], sub["best_so_far"], where="post", color=color, linewidth=2), name)
            done = sub[sub["state"] == SlotState.COMPLETED]
            tag(ax.scatter(done["n"], done["value"], color=color, s=16, alpha=0.6), name)
            pruned = sub[(sub["state"] == SlotState.PRUNED) & sub["value"].notna()]
            tag(ax.scatter(pruned["n"], pruned["value"], color=color, marker="x", s=20, alpha=0.6), name)
        if ctx.direction == "minimize" and use_log(mine["value"], "minimize"):
            ax.set_yscale("log")  # this panel's errors span more than a factor of 10
        ax.set_title(panel, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    ylabel = ("validation metric: each panel's study's (errors lower, accuracies higher is better)"
              if ctx.direction == "mixed" else metric_label(ctx.metric, ctx.direction))
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    legend = {name: line_entry(ctx.colors[name], lw=2) for name in series}
    fig.suptitle("Tuning history: best so far (line), each trial (dot; x = pruned)")
    return ctx.save(fig, "history", "Tuning history: best validation value so far against trials", legend)

