"""Figures (matplotlib Agg + seaborn). Each function draws only when its data exists.

Every figure function takes the report data and returns the `Figure` records it wrote (possibly
none). Files are `<folder>/<name>.<ext>` for each requested image format (png, svg, pdf).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # never a display; reports render headless

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from tmafbench.core import RunStatus, base_metric  # noqa: E402
from tmafbench.reports import stats  # noqa: E402
from tmafbench.reports.frames import SEED_AXIS, ReportData, training_set_metric  # noqa: E402

MAX_FACETS = 4  # sweep values shown side by side; more are thinned evenly (first and last kept)
MAX_PREDICTION_FIGURES = 3
MAX_FEATURES = 4  # learned activation curves drawn per layer
MAX_LAYERS = 4
# Up to this many seeds per series, learning curves draw every seed; above it, the middle half.
MAX_SEED_LINES = 10
# Runs with at most this many epochs get markers: a single epoch is a point, not an invisible line.
MARKER_EPOCHS = 3
IMAGE_FORMATS = ("png", "svg", "pdf")


@dataclass
class Figure:
    name: str
    title: str
    paths: dict[str, Path] = field(default_factory=dict)  # format -> file


@dataclass
class FigureContext:
    data: ReportData
    metric: str  # column in finals (e.g. "rel_l2" or "val_accuracy")
    direction: str
    baseline: str | None
    folder: Path
    formats: tuple[str, ...]
    scale: float = 1.0  # < 1 for quick renders (tests)
    prefix: str = ""  # file-name prefix (one per task when a report covers several)

    def save(self, fig, name: str, title: str) -> Figure:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self.prefix + name
        record = Figure(name, title)
        # One tight layout for all formats: bbox_inches="tight" or constrained layout would redo
        # the (text-heavy, slow) layout at every save.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
        for ext in self.formats:
            path = self.folder / f"{name}.{ext}"
            # SVG text stays text (not glyph paths): smaller files, faster writes.
            with plt.rc_context({"svg.fonttype": "none"}):
                fig.savefig(path, dpi=100)
            record.paths[ext] = path
        plt.close(fig)
        return record

    @property
    def colors(self) -> dict[str, tuple]:
        """One colour per series, the same in every figure."""
        return _palette(list(dict.fromkeys(self.data.cells["series"])))

    def figsize(self, w: float, h: float) -> tuple[float, float]:
        return (w * self.scale, h * self.scale)


# The set a metric was measured on, by its prefix (core.SET_PREFIXES); no prefix: the test set.
SET_WORDS = {"val_": "validation", "train_": "training-set", "": "test"}


def metric_label(metric: str, direction: str) -> str:
    units = {"rel_l2": "relative L2 error", "mse": "mean squared error", "max_abs": "max abs error",
             "accuracy": "accuracy", "cross_entropy": "cross-entropy (nats)", "train_loss": "train loss"}
    base = base_metric(metric)
    text = units.get(base, base)
    if base != "train_loss":
        text = f"{SET_WORDS.get(metric.removesuffix(base), 'test')} {text}"
    return f"{text} ({'lower' if direction == 'minimize' else 'higher'} is better)"


def _log_axis(ax) -> None:
    """Log y scale without minor tick labels (each is a mathtext layout: slow and cluttered)."""
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(NullFormatter())


def _use_log(values: pd.Series | np.ndarray, direction: str) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return direction == "minimize" and len(v) > 0 and bool(np.all(v > 0)) and v.max() / v.min() > 10


def _facet_values(data: ReportData) -> list:
    """Sweep values to show side by side (all, or an even thinning to MAX_FACETS)."""
    if not data.sweep:
        return [None]
    values = list(dict.fromkeys(data.cells["sweep"]))
    if len(values) <= MAX_FACETS:
        return values
    picks = np.linspace(0, len(values) - 1, MAX_FACETS).round().astype(int)
    return [values[i] for i in sorted(set(picks))]


def _in_facet(frame: pd.DataFrame, data: ReportData, value) -> pd.Series:
    if data.sweep is None:
        return pd.Series(True, index=frame.index)
    return frame["sweep"].map(lambda v: str(v) == str(value))


def _completed(data: ReportData) -> pd.DataFrame:
    return data.cells[data.cells["status"] == RunStatus.COMPLETED]


def _palette(series: list[str]) -> dict[str, tuple]:
    return dict(zip(series, sns.color_palette("tab10", n_colors=max(len(series), 1))))


# ----------------------------------------------------------------------------------- figures


def learning_curves(ctx: FigureContext) -> list[Figure]:
    """Test metric (top), the same metric on the training set when the runs measured it
    (evaluate_train), and train loss (bottom) against epoch: the mean over seeds, with every seed as
    a thin line under it (or, above MAX_SEED_LINES seeds, a band over the middle half of them)."""
    data = ctx.data
    done = _completed(data)
    on_train = training_set_metric(data, ctx.metric)
    names = [m for m in (ctx.metric, on_train, "train_loss") if m and m in set(data.epochs["name"])]
    if not names or done.empty:
        return []
    ep = data.epochs[data.epochs["name"].isin(names)].dropna(subset=["value"])
    ep = ep.merge(done[["cell_id", "series", "sweep"]], on="cell_id")
    if ep.empty:
        return []
    facets = _facet_values(data)
    colors = ctx.colors
    many = ep.groupby("series")["cell_id"].nunique().max() > MAX_SEED_LINES
    marker = "o" if ep["epoch"].max() <= MARKER_EPOCHS else None
    fig, axes = plt.subplots(len(names), len(facets), figsize=ctx.figsize(max(4 * len(facets), 6.5), 3.2 * len(names)),
                             squeeze=False, sharex=True, sharey="row")
    for row, name in enumerate(names):
        direction = ctx.direction if name in (ctx.metric, on_train) else "minimize"
        for col, value in enumerate(facets):
            ax = axes[row][col]
            sub = ep[(ep["name"] == name) & _in_facet(ep, data, value)]
            for series, f in sub.groupby("series", sort=False):
                by_epoch = f.groupby("epoch")["value"]
                if many:
                    ax.fill_between(by_epoch.quantile(0.25).index, by_epoch.quantile(0.25), by_epoch.quantile(0.75),
                                    color=colors[series], alpha=0.2, lw=0)
                else:
                    for _, run in f.groupby("cell_id"):
                        ax.plot(run["epoch"], run["value"], color=colors[series], lw=0.7, alpha=0.35,
                                marker=marker, markersize=3)
                mean = by_epoch.mean()
                ax.plot(mean.index, mean, color=colors[series], label=series, lw=1.8, marker=marker, markersize=6)
            if _use_log(sub["value"], direction):
                _log_axis(ax)
            ax.set_title(f"{data.sweep}={_axis_text(value)}" if data.sweep else "", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric_label(name, direction) if col == 0 else "", fontsize=8)
            if marker:  # a few epochs: one tick each, with room around a single one
                last = int(ep["epoch"].max())
                ax.set_xticks(range(1, last + 1))
                ax.set_xlim(0.5, last + 0.5)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    spread = "band = middle half of the seeds" if many else "thin lines = each seed"
    fig.suptitle(f"Learning curves: mean over seeds (thick), {spread}")
    return [ctx.save(fig, "learning_curves", f"Learning curves (mean over seeds; {spread})")]


def metric_vs_axis(ctx: FigureContext, summary: pd.DataFrame) -> list[Figure]:
    """Final metric against the sweep axis, one line per series, 95% CI bars (Table 3.1's shape).

    On a log axis an interval that reaches 0 or below cannot be drawn whole: its bar runs to the
    bottom of the axes, ends in an open triangle, and the figure says so.
    """
    data = ctx.data
    if not data.sweep or summary["n"].sum() == 0:
        return []
    fig, ax = plt.subplots(figsize=ctx.figsize(6.5, 4.2))
    order = list(dict.fromkeys(summary["sweep"]))
    numeric = all(_is_number(v) for v in order)
    shown = summary[summary["n"] > 0]
    log = _use_log(shown["mean"], ctx.direction)
    if log:
        _log_axis(ax)
        positive = pd.concat([shown["mean"], shown["ci_low"][shown["ci_low"] > 0]]).dropna()
        ax.set_ylim(positive.min() / 2, max(shown["ci_high"].max(), shown["mean"].max()) * 1.5)
    bottom = ax.get_ylim()[0] if log else -np.inf
    cut = False
    for series, f in shown.groupby("series", sort=False):
        x = f["sweep"].astype(float) if numeric else f["sweep"].map(lambda v: order.index(v))
        low = np.maximum(f["ci_low"], bottom)
        yerr = np.vstack([f["mean"] - low, f["ci_high"] - f["mean"]])
        color = ctx.colors[series]
        ax.errorbar(x, f["mean"], yerr=np.nan_to_num(yerr), marker="o", capsize=3, label=series, color=color)
        below = (f["ci_low"] <= bottom).to_numpy()
        if below.any():
            cut = True
            ax.plot(np.asarray(x)[below], np.full(below.sum(), bottom), marker="v", markersize=7, ls="none",
                    markerfacecolor="white", color=color, clip_on=False, zorder=4)
    if not numeric:
        ax.set_xticks(range(len(order)), [str(v) for v in order])
    elif all(float(v).is_integer() for v in order):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(data.sweep)
    ax.set_ylabel(metric_label(ctx.metric, ctx.direction))
    method = shown["ci_method"].iloc[0]
    ax.set_title(f"Final {ctx.metric} by {data.sweep} (mean, 95% CI: {method})")
    if cut:
        ax.text(0.01, 0.01, "▽ the interval reaches 0 or below: cut by the log axis", transform=ax.transAxes,
                fontsize=7, va="bottom")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [ctx.save(fig, "metric_vs_axis", f"Final {ctx.metric} against {data.sweep}")]


def seeds_plot(ctx: FigureContext) -> list[Figure]:
    """Every seed as a point over a box plot, per series (side by side within each sweep value), with a
    thin grey line linking each seed's runs: seeds are paired across activations."""
    data = ctx.data
    done = _completed(data)
    if ctx.metric not in data.finals or done.empty:
        return []
    frame = done.assign(value=done["cell_id"].map(data.finals[ctx.metric])).dropna(subset=["value"])
    if frame.empty:
        return []
    series = list(dict.fromkeys(frame["series"]))
    categories = list(dict.fromkeys(frame["sweep"])) if data.sweep else [None]
    step = 0.8 / len(series) if data.sweep else 1.0  # the series share each sweep value's slot

    def position(sweep_value, name: str) -> float:
        if not data.sweep:
            return series.index(name)
        return categories.index(sweep_value) + (series.index(name) - (len(series) - 1) / 2) * step

    frame = frame.assign(x=[position(v, name) for v, name in zip(frame["sweep"], frame["series"])])
    width = 1.2 + 0.6 * len(categories) * len(series) ** 0.5 if data.sweep else 1.2 + 0.6 * len(series)
    fig, ax = plt.subplots(figsize=ctx.figsize(min(max(width, 5), 16), 4.2))
    for _, runs in frame.groupby(["sweep", "seed"] if data.sweep else ["seed"], sort=False, dropna=False):
        if len(runs) > 1:
            ax.plot(runs["x"], runs["value"], color="grey", lw=0.6, alpha=0.45, zorder=1)
    for name in series:
        mine = frame[frame["series"] == name]
        boxes = [(x, f["value"].to_numpy()) for x, f in mine.groupby("x")]
        color = ctx.colors[name]
        ax.boxplot([v for _, v in boxes], positions=[x for x, _ in boxes], widths=0.7 * step, showfliers=False,
                   manage_ticks=False, boxprops={"color": color}, whiskerprops={"color": color},
                   capprops={"color": color}, medianprops={"color": color, "lw": 1.5})
        ax.scatter(mine["x"], mine["value"], s=16, color=color, alpha=0.85, zorder=3, label=name)
    if _use_log(frame["value"], ctx.direction):
        _log_axis(ax)
    if data.sweep:
        ax.set_xticks(range(len(categories)), [_axis_text(v) for v in categories])
        ax.legend(fontsize=7)
    else:
        ax.set_xticks(range(len(series)), series, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, (len(categories) if data.sweep else len(series)) - 0.4)
    ax.set_ylabel(metric_label(ctx.metric, ctx.direction))
    ax.set_xlabel(data.sweep or "")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"Final {ctx.metric}: every seed (points) over box plots\ngrey lines link the runs of one seed",
                 fontsize=10)
    return [ctx.save(fig, "seeds", f"Final {ctx.metric}, every seed, linked across activations")]


def predictions(ctx: FigureContext) -> list[Figure]:
    """1-D tasks: target and each series' prediction on the stored grid, plus a zoom (paper Figs 2, 5)."""
    data = ctx.data
    done = _completed(data).sort_values(SEED_AXIS)
    first = done.drop_duplicates("group")  # lowest completed seed of each group
    stored = data.artifacts("predictions", first["cell_id"])
    if not stored:
        return []
    figures = []
    facets = _facet_values(data)
    if len(facets) > MAX_PREDICTION_FIGURES:  # the easiest, a middle one and the hardest
        facets = [facets[0], facets[len(facets) // 2], facets[-1]]
    for value in facets:
        cells = first[_in_facet(first, data, value) & first["cell_id"].isin(stored)]
        if cells.empty:
            continue
        ref = stored[int(cells["cell_id"].iloc[0])]
        x, target = np.asarray(ref["x"], float), np.asarray(ref["target"], float)
        lo, hi = _oscillating_window(x, target)
        fig, (full, zoom) = plt.subplots(1, 2, figsize=ctx.figsize(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
        colors = ctx.colors
        for ax in (full, zoom):
            ax.plot(x, target, color="black", lw=2.2, label="target")
            for row in cells.itertuples():
                pred = stored[int(row.cell_id)]
                ax.plot(pred["x"], pred["prediction"], lw=1.1, color=colors[row.series],
                        label=f"{row.series} (seed {row.seed})")
            ax.set_xlabel("x")
            ax.grid(alpha=0.3)
        full.axvspan(lo, hi, color="grey", alpha=0.15)
        zoom.set_xlim(lo, hi)
        inside = (x >= lo) & (x <= hi)
        pad = 0.1 * (np.ptp(target[inside]) or 1.0)
        zoom.set_ylim(target[inside].min() - pad, target[inside].max() + pad)
        full.set_ylabel("u(x)")
        where = f"{data.sweep}={_axis_text(value)}" if data.sweep else ""
        full.set_title("target and predictions" + (f" ({where})" if where else ""), fontsize=10)
        zoom.set_title(f"zoom on [{lo:.3g}, {hi:.3g}] (most oscillation)", fontsize=10)
        full.legend(fontsize=7)
        suffix = f"_{data.sweep}-{_slug(value)}" if data.sweep else ""
        figures.append(ctx.save(fig, f"predictions{suffix}", "Target and predictions" + (f", {where}" if where else "")))
    return figures


def _oscillating_window(x: np.ndarray, y: np.ndarray, share: float = 0.2) -> tuple[float, float]:
    """The x-window (share of the points) where the target bends most: max sum of |second difference|."""
    if len(x) < 10:
        return float(x.min()), float(x.max())
    bend = np.abs(np.diff(y, 2))
    width = max(int(len(x) * share), 3)
    scores = np.convolve(bend, np.ones(width), mode="valid")
    start = int(np.argmax(scores))
    return float(x[start]), float(x[min(start + width + 1, len(x) - 1)])


def _layer_panels(ctx: FigureContext, artifact: str, width: float, min_width: float, height: float):
    """A grid of panels for a per-layer artifact: one row per series (its first completed seed that
    stored `artifact`, at most MAX_FACETS), one panel per module (at most MAX_LAYERS).

    Returns (figure, axes, rows, panels) with panels as (ax, row, stored payload, module name, module
    data); panels a row has no module for are switched off. None when no run stored the artifact.
    """
    done = _completed(ctx.data).sort_values(SEED_AXIS).drop_duplicates("series")
    stored = ctx.data.artifacts(artifact, done["cell_id"])
    rows = [r for r in done.itertuples() if int(r.cell_id) in stored][:MAX_FACETS]
    if not rows:
        return None
    layers = max(min(len(stored[int(r.cell_id)]["modules"]), MAX_LAYERS) for r in rows)
    fig, axes = plt.subplots(len(rows), layers, figsize=ctx.figsize(max(width * layers, min_width), height * len(rows)),
                             squeeze=False)
    panels = []
    for i, row in enumerate(rows):
        payload = stored[int(row.cell_id)]
        modules = list(payload["modules"].items())[:MAX_LAYERS]
        for j, ax in enumerate(axes[i]):
            if j < len(modules):
                panels.append((ax, row, payload, *modules[j]))
            else:
                ax.axis("off")
    return fig, axes, rows, panels


def learned_activations(ctx: FigureContext) -> list[Figure]:
    """alpha(s)*s for a few features per layer, per series, beside ReLU s -> max(s, 0)."""
    laid = _layer_panels(ctx, "activation_curves", 3.2, 5.5, 2.6)
    if laid is None:
        return []
    fig, axes, rows, panels = laid
    for ax, row, curves, name, features in panels:
        s = np.asarray(curves["s"], float)
        for k, y in enumerate(features[:MAX_FEATURES]):
            ax.plot(s, y, lw=1.2, label=f"feature {k}")
        ax.plot(s, np.maximum(s, 0), "k--", lw=1, label="ReLU")
        ax.set_title(f"{row.series}: {name}", fontsize=8)
        ax.set_xlabel("s (pre-activation)", fontsize=8)
        ax.set_ylabel("output", fontsize=8)
        ax.grid(alpha=0.3)
    for row_axes in axes:
        row_axes[0].legend(fontsize=6)
    fig.suptitle(f"Learned activations (seed {rows[0].seed}), ReLU dashed", fontsize=10)
    return [ctx.save(fig, "learned_activations", "Learned activations beside ReLU")]


def learned_breakpoints(ctx: FigureContext) -> list[Figure]:
    """Trainable breakpoints after training (dots, one row per feature) over the grid they started
    from (grey lines), for the first completed seed of each series that trains them."""
    laid = _layer_panels(ctx, "breakpoints", 3.6, 6.0, 2.4)
    if laid is None:
        return []
    fig, _axes, rows, panels = laid
    for ax, row, _payload, name, grid in panels:
        for s in grid["initial"]:
            ax.axvline(s, color="0.8", lw=0.6, zorder=0)
        for k, learned in enumerate(grid["learned"]):
            ax.plot(learned, [k] * len(learned), "|", ms=7, color=ctx.colors.get(row.series))
        ax.set_yticks(range(len(grid["learned"])))
        ax.set_ylabel("feature", fontsize=8)
        ax.set_xlabel("breakpoint position", fontsize=8)
        ax.set_title(f"{row.series}: {name}", fontsize=8)
    fig.suptitle(f"Learned breakpoints (seed {rows[0].seed}; grey: the grid they started from)", fontsize=10)
    return [ctx.save(fig, "learned_breakpoints", "Learned breakpoints over their starting grid")]


def timing(ctx: FigureContext) -> list[Figure]:
    """Each run's median epoch time divided by its baseline group's median (same hardware)."""
    if ctx.baseline is None:
        return []
    ratios = stats.run_timing_ratios(ctx.data, ctx.baseline)
    if ratios.empty:
        return []
    order = list(dict.fromkeys(ratios["series"]))
    fig, ax = plt.subplots(figsize=ctx.figsize(6.5, 0.9 + 0.45 * len(order)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
        sns.boxplot(data=ratios, y="series", x="ratio", order=order, hue="series", palette=ctx.colors, ax=ax,
                    showfliers=False, fill=False, linewidth=1, legend=False)
    sns.stripplot(data=ratios, y="series", x="ratio", order=order, hue="series", palette=ctx.colors, ax=ax,
                  size=3, alpha=0.6, legend=False)
    ax.axvline(1.0, color="black", lw=1, ls="--")
    low, high = min(ratios["ratio"].min(), 1.0), max(ratios["ratio"].max(), 1.0)
    pad = 0.06 * (high - low) or 0.05
    ax.set_xlim(low - pad, high + pad)  # the slowest run is not drawn on the frame
    ax.set_xlabel(f"epoch time / {ctx.baseline} epoch time (same hardware; 1 = as fast)")
    ax.set_ylabel("")
    hardware = ", ".join(sorted(ratios["hardware"].unique()))
    ax.set_title(f"Epoch time relative to {ctx.baseline}\n{hardware}", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return [ctx.save(fig, "timing", f"Epoch time relative to {ctx.baseline}")]


def _is_number(value) -> bool:
    try:
        float(value)
        return value is not None and not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def _axis_text(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _slug(value) -> str:
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def draw_all(ctx: FigureContext, summary: pd.DataFrame) -> list[Figure]:
    """Every figure whose data exists, in reading order."""
    figures: list[Figure] = []
    for draw in (lambda: metric_vs_axis(ctx, summary), lambda: seeds_plot(ctx), lambda: learning_curves(ctx),
                 lambda: predictions(ctx), lambda: learned_activations(ctx), lambda: learned_breakpoints(ctx),
                 lambda: timing(ctx)):
        figures.extend(draw())
    return figures

