"""Figures of a task's comparison (matplotlib Agg). Each function draws only when its data exists.

Every figure function takes the report data and returns the `Figure` records it wrote (possibly
none). Files are `<folder>/<name>.<ext>` for each requested image format (png, svg, pdf). The
drawing rules they share (colours, the one legend, readable axes, the band rule) are in plotting.py;
learning curves in curves.py, the learned activations and breakpoints in learned.py.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from tmafbench.reports import stats
from tmafbench.reports.curves import learning_curves
from tmafbench.reports.frames import SEED_AXIS
from tmafbench.reports.labels import (
    axis_text,
    is_missing,
    label_all,
    metric_label,
    slug,
)
from tmafbench.reports.learned import learned_activations, learned_breakpoints
from tmafbench.reports.plotting import (
    IMAGE_FORMATS,
    Figure,
    FigureContext,
    coinciding,
    completed,
    facet_title,
    facet_values,
    in_facet,
    line_entry,
    tag,
    turn_dashes,
    use_log,
)

__all__ = ["IMAGE_FORMATS", "Figure", "FigureContext", "draw_all"]

MAX_PREDICTION_FIGURES = 3
MAX_TICKED_VALUES = 12  # a numeric sweep with at most this many values gets a tick at each
CUT = "interval reaches 0 or below (cut by the log axis)"
SEED_LINK = "one seed's runs"


def draw_all(ctx: FigureContext, summary: pd.DataFrame) -> list[Figure]:
    """Every figure whose data exists, in reading order."""
    figures: list[Figure] = []
    for draw in (lambda: metric_vs_axis(ctx, summary), lambda: seeds_plot(ctx), lambda: learning_curves(ctx),
                 lambda: predictions(ctx), lambda: learned_activations(ctx), lambda: learned_breakpoints(ctx),
                 lambda: timing(ctx)):
        figures.extend(draw())
    return figures


def metric_vs_axis(ctx: FigureContext, summary: pd.DataFrame) -> list[Figure]:
    """Final metric against the sweep axis, one line per series, 95% CI bars (Table 3.1's shape).

    A group without the swept axis (ReLU when the grid is swept) is a dashed line across, with its
    interval as a band. On a log axis an interval that reaches 0 or below cannot be drawn whole: its
    bar runs to the bottom of the axes and ends in an open triangle, which the legend names.
    """
    data = ctx.data
    if not data.sweep or summary["n"].sum() == 0:
        return []
    shown = summary[summary["n"] > 0]
    placed = shown[~shown["sweep"].map(is_missing)]
    if placed.empty:
        return []
    fig, ax = plt.subplots(figsize=ctx.figsize(6.5, 4.2))
    order = list(dict.fromkeys(placed["sweep"]))
    numeric = all(_is_number(v) for v in order)
    log = use_log(shown["mean"], ctx.direction)
    if log:
        ax.set_yscale("log")
        positive = pd.concat([shown["mean"], shown["ci_low"][shown["ci_low"] > 0]]).dropna()
        ax.set_ylim(positive.min() / 2, max(shown["ci_high"].max(), shown["mean"].max()) * 1.5)
    bottom = ax.get_ylim()[0] if log else -np.inf
    legend, cut = {}, False
    for series, f in shown.groupby("series", sort=False):  # the report's order
        color = ctx.colors[series]
        if f["sweep"].map(is_missing).all():
            _across(ax, f.iloc[0], color, bottom, data.sweep, legend)
            continue
        f = f[~f["sweep"].map(is_missing)]
        x = f["sweep"].astype(float) if numeric else f["sweep"].map(lambda v: order.index(v))
        low = np.maximum(f["ci_low"], bottom)
        yerr = np.vstack([f["mean"] - low, f["ci_high"] - f["mean"]])
        tag(ax.errorbar(x, f["mean"], yerr=np.nan_to_num(yerr), marker="o", capsize=3, color=color), series)
        legend[series] = line_entry(color, marker="o", lw=1.5)
        below = (f["ci_low"] <= bottom).to_numpy()
        if below.any():
            cut = True
            tag(ax.plot(np.asarray(x)[below], np.full(below.sum(), bottom), marker="v", markersize=7, ls="none",
                        markerfacecolor="white", color=color, clip_on=False, zorder=4), CUT)
    if cut:
        legend[CUT] = line_entry("black", marker="v", markerfacecolor="white", ls="none", markersize=7)
    _sweep_ticks(ax, order, numeric)
    ax.set_xlabel(data.sweep)
    ax.set_ylabel(metric_label(ctx.metric, ctx.direction))
    method = shown["ci_method"].iloc[0]
    ax.set_title(f"Final {ctx.metric} by {data.sweep} (mean, 95% CI: {method})", fontsize=10)
    ax.grid(alpha=0.3)
    return [ctx.save(fig, "metric_vs_axis", f"Final {ctx.metric} against {data.sweep}", legend)]


def _across(ax, row, color, bottom: float, sweep: str, legend: dict) -> None:
    """A group without the swept axis: its mean as a dashed line across, its interval as a band
    (down to the bottom of a log axis at most)."""
    label = f"{row['series']} ({axis_text(None, sweep)}: across)"
    tag(ax.axhline(row["mean"], color=color, ls="--", lw=1.5), label)
    if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]):
        tag(ax.axhspan(max(row["ci_low"], bottom), row["ci_high"], color=color, alpha=0.12, lw=0), label)
    legend[label] = line_entry(color, ls="--", lw=1.5)


def _sweep_ticks(ax, order: list, numeric: bool) -> None:
    """Categories by name; numbers at their values (a log x axis when they span a factor of 10)."""
    if not numeric:
        ax.set_xticks(range(len(order)), [axis_text(v) for v in order])
        ax.set_xlim(-0.5, len(order) - 0.5)
        return
    values = sorted(float(v) for v in order)
    if values[0] > 0 and values[-1] / values[0] >= 10:
        ax.set_xscale("log")
    if len(values) <= MAX_TICKED_VALUES:
        ax.set_xticks(values, [axis_text(v) for v in values])
        ax.minorticks_off()
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=all(v.is_integer() for v in values)))


def seeds_plot(ctx: FigureContext) -> list[Figure]:
    """Every seed as a point over a box plot, per series (side by side within each sweep value), with a
    thin grey line linking each seed's runs: seeds are paired across activations."""
    data = ctx.data
    done = completed(data)
    if ctx.metric not in data.finals or done.empty:
        return []
    frame = done.assign(value=done["cell_id"].map(data.finals[ctx.metric])).dropna(subset=["value"])
    if frame.empty:
        return []
    series = list(dict.fromkeys(frame["series"]))
    categories = list(dict.fromkeys(frame["sweep"])) if data.sweep else [None]
    # Each category holds only the series it has, side by side.
    present = {str(c): [s for s in series if ((frame["series"] == s) & _is(frame, data, c)).any()] for c in categories}

    def position(category, name: str) -> float:
        if not data.sweep:
            return series.index(name)
        names = present[str(category)]
        step = 0.8 / len(names)
        return categories.index(category) + (names.index(name) - (len(names) - 1) / 2) * step

    frame = frame.assign(x=[position(c, name) for c, name in zip(frame["sweep"], frame["series"])])
    slots = sum(len(v) for v in present.values()) if data.sweep else len(series)
    width = 1.2 + 0.6 * len(categories) * (slots / len(categories)) ** 0.5 if data.sweep else 1.2 + 0.6 * len(series)
    fig, ax = plt.subplots(figsize=ctx.figsize(min(max(width, 5), 16), 4.2))
    linked = False
    for _, runs in frame.groupby(["sweep", "seed"] if data.sweep else ["seed"], sort=False, dropna=False):
        if len(runs) > 1:
            linked = True
            tag(ax.plot(runs["x"], runs["value"], color="grey", lw=0.6, alpha=0.45, zorder=1), SEED_LINK)
    legend = {}
    for name in series:
        mine = frame[frame["series"] == name]
        boxes = [(x, f["value"].to_numpy()) for x, f in mine.groupby("x")]
        step = min((0.8 / len(present[str(c)]) for c in categories if name in present[str(c)]), default=1.0) \
            if data.sweep else 1.0
        color = ctx.colors[name]
        tag(ax.boxplot([v for _, v in boxes], positions=[x for x, _ in boxes], widths=0.7 * step, showfliers=False,
                       manage_ticks=False, boxprops={"color": color}, whiskerprops={"color": color},
                       capprops={"color": color}, medianprops={"color": color, "lw": 1.5}), name)
        tag(ax.scatter(mine["x"], mine["value"], s=16, color=color, alpha=0.85, zorder=3), name)
        legend[name] = line_entry(color, marker="o", lw=1)
    if linked:
        legend[SEED_LINK] = line_entry("grey", lw=0.8, alpha=0.6)
    if use_log(frame["value"], ctx.direction):
        ax.set_yscale("log")
    if data.sweep:
        ax.set_xticks(range(len(categories)), [axis_text(v, data.sweep) for v in categories])
    else:
        ax.set_xticks(range(len(series)), series, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, (len(categories) if data.sweep else len(series)) - 0.4)
    ax.set_ylabel(metric_label(ctx.metric, ctx.direction))
    ax.set_xlabel(data.sweep or "")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"Final {ctx.metric}: every seed (points) over box plots\ngrey lines link the runs of one seed",
                 fontsize=10)
    return [ctx.save(fig, "seeds", f"Final {ctx.metric}, every seed, linked across activations", legend)]


def _is(frame: pd.DataFrame, data, category) -> pd.Series:
    return in_facet(frame, data, category)


def predictions(ctx: FigureContext) -> list[Figure]:
    """1-D tasks: target and each series' prediction on the stored grid, plus a zoom (paper Figs 2, 5)."""
    data = ctx.data
    done = completed(data).sort_values(SEED_AXIS)
    first = done.drop_duplicates("group")  # lowest completed seed of each group
    stored = data.artifacts("predictions", first["cell_id"])
    if not stored:
        return []
    figures = []
    facets = facet_values(data)
    if len(facets) > MAX_PREDICTION_FIGURES:  # the easiest, a middle one and the hardest
        facets = [facets[0], facets[len(facets) // 2], facets[-1]]
    rank = {s: i for i, s in enumerate(dict.fromkeys(data.cells["series"]))}
    first = first.sort_values("series", key=lambda col: col.map(rank), kind="stable")  # the report's order
    for value in facets:
        cells = first[in_facet(first, data, value) & first["cell_id"].isin(stored)]
        if cells.empty:
            continue
        figures.append(_prediction_figure(ctx, cells, stored, value))
    return figures


def _prediction_figure(ctx: FigureContext, cells: pd.DataFrame, stored: dict, value) -> Figure:
    data = ctx.data
    ref = stored[int(cells["cell_id"].iloc[0])]
    x, target = np.asarray(ref["x"], float), np.asarray(ref["target"], float)
    lo, hi = _oscillating_window(x, target)
    fig, (full, zoom) = plt.subplots(1, 2, figsize=ctx.figsize(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    legend = {"target": line_entry("black", lw=2.2)}
    curves = {row.series: dict(zip(stored[int(row.cell_id)]["x"], stored[int(row.cell_id)]["prediction"]))
              for row in cells.itertuples()}
    styles = {}
    clusters = coinciding(curves, log=False)
    for cluster in clusters:
        styles.update({s: turn_dashes(i, len(cluster)) for i, s in enumerate(cluster)})
    for ax in (full, zoom):
        tag(ax.plot(x, target, color="black", lw=2.2), "target")
        for row in cells.itertuples():
            pred = stored[int(row.cell_id)]
            tag(ax.plot(pred["x"], pred["prediction"], lw=1.1, color=ctx.colors[row.series],
                        ls=styles.get(row.series, "-")), row.series)
            legend[row.series] = line_entry(ctx.colors[row.series], lw=1.1)
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
    window = f"zoom on [{lo:.3g}, {hi:.3g}] (most oscillation)"
    tag(full.axvspan(lo, hi, color="grey", alpha=0.15), "zoom window")
    legend["zoom window"] = Patch(color="grey", alpha=0.15)
    zoom.set_xlim(lo, hi)
    inside = (x >= lo) & (x <= hi)
    pad = 0.1 * (np.ptp(target[inside]) or 1.0)
    zoom.set_ylim(target[inside].min() - pad, target[inside].max() + pad)
    full.set_ylabel("u(x)")
    where = facet_title(data, value)
    seeds = sorted({int(s) for s in cells["seed"]})
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"each group's lowest completed seed: {label_all([str(s) for s in seeds])}"
    full.set_title("target and predictions" + (f" ({where})" if where else "") + f", {seed_text}", fontsize=10)
    zoom.set_title(window, fontsize=10)
    if clusters:
        fig.suptitle("Coinciding, drawn dashed in turns: " + "; ".join(" = ".join(c) for c in clusters), fontsize=9)
    if data.sweep:
        suffix = f"_{data.sweep}-{slug(value)}" if not is_missing(value) else f"_{slug(axis_text(value, data.sweep))}"
    else:
        suffix = ""
    return ctx.save(fig, f"predictions{suffix}", "Target and predictions" + (f", {where}" if where else ""), legend)


def _oscillating_window(x: np.ndarray, y: np.ndarray, share: float = 0.2) -> tuple[float, float]:
    """The x-window (share of the points) where the target bends most: max sum of |second difference|."""
    if len(x) < 10:
        return float(x.min()), float(x.max())
    bend = np.abs(np.diff(y, 2))
    width = max(int(len(x) * share), 3)
    scores = np.convolve(bend, np.ones(width), mode="valid")
    start = int(np.argmax(scores))
    return float(x[start]), float(x[min(start + width + 1, len(x) - 1)])


def timing(ctx: FigureContext) -> list[Figure]:
    """Each run's median epoch time divided by its baseline group's median (same hardware), a box per
    group; a group whose ratio's spread includes 1 is named as noisy (stats.timing_spread)."""
    if ctx.baseline is None:
        return []
    ratios = stats.run_timing_ratios(ctx.data, ctx.baseline)
    if ratios.empty:
        return []
    order = list(dict.fromkeys(ratios["series"]))
    fig, ax = plt.subplots(figsize=ctx.figsize(6.5, 1.1 + 0.45 * len(order)))
    rng = np.random.default_rng(0)  # the points' vertical jitter, the same at every build
    legend = {}
    for i, name in enumerate(order):
        values = ratios.loc[ratios["series"] == name, "ratio"].to_numpy()
        color = ctx.colors[name]
        tag(ax.boxplot([values], positions=[i], orientation="horizontal", widths=0.6, showfliers=False, manage_ticks=False,
                       boxprops={"color": color}, whiskerprops={"color": color}, capprops={"color": color},
                       medianprops={"color": color, "lw": 1.5}), name)
        tag(ax.scatter(values, i + rng.uniform(-0.15, 0.15, len(values)), s=9, color=color, alpha=0.6, zorder=3), name)
        legend[name] = line_entry(color, marker="o", lw=1)
    same = f"1 = as fast as {ctx.baseline}"
    tag(ax.axvline(1.0, color="black", lw=1, ls="--"), same)
    legend[same] = line_entry("black", lw=1, ls="--")
    ax.set_yticks(range(len(order)), order)
    ax.set_ylim(len(order) - 0.5, -0.5)  # first group on top
    low, high = min(ratios["ratio"].min(), 1.0), max(ratios["ratio"].max(), 1.0)
    pad = 0.06 * (high - low) or 0.05
    ax.set_xlim(low - pad, high + pad)  # the slowest run is not drawn on the frame
    ax.set_xlabel(f"epoch time / {ctx.baseline} epoch time (same hardware)")
    hardware = ", ".join(sorted(ratios["hardware"].unique()))
    spread = stats.timing_spread(ctx.data, ctx.baseline)
    noisy = ratios.loc[ratios["group"].isin(spread.loc[spread["noisy"], "group"]), "series"].unique().tolist()
    flag = f"\nnoisy, the spread includes 1: {label_all(noisy)}" if noisy else ""
    ax.set_title(f"Epoch time relative to {ctx.baseline}, each run\n{hardware}{flag}", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    note = (f"Noisy: the epoch times of {label_all(noisy)} overlap {ctx.baseline}'s too much to tell which is "
            "faster (the timing table's spread includes 1)." if noisy else "")
    return [ctx.save(fig, "timing", f"Epoch time relative to {ctx.baseline}", legend, note)]


def _is_number(value) -> bool:
    try:
        float(value)
        return value is not None and not isinstance(value, bool)
    except (TypeError, ValueError):
        return False
