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
from scipy import stats as sps  # noqa: E402

from tmafbench.core import RunStatus  # noqa: E402
from tmafbench.reports import stats  # noqa: E402
from tmafbench.reports.frames import SEED_AXIS, ReportData  # noqa: E402

MAX_FACETS = 4  # sweep values shown side by side; more are thinned evenly (first and last kept)
MAX_PREDICTION_FIGURES = 3
MAX_FEATURES = 4  # learned activation curves drawn per layer
MAX_LAYERS = 4
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


def metric_label(metric: str, direction: str) -> str:
    units = {"rel_l2": "relative L2 error", "mse": "mean squared error", "max_abs": "max abs error",
             "accuracy": "accuracy", "cross_entropy": "cross-entropy (nats)", "train_loss": "train loss"}
    base = metric.removeprefix("val_")
    text = units.get(base, base)
    text = f"validation {text}" if metric.startswith("val_") else f"test {text}" if base != "train_loss" else text
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


def _mean_ci(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and t-based 95% CI half-width of `value` per `by` group."""
    agg = frame.groupby(by, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    tcrit = sps.t.ppf(0.975, np.maximum(agg["count"] - 1, 1))
    agg["half"] = np.where(agg["count"] > 1, tcrit * agg["std"] / np.sqrt(agg["count"]), 0.0)
    return agg


def _palette(series: list[str]) -> dict[str, tuple]:
    return dict(zip(series, sns.color_palette("tab10", n_colors=max(len(series), 1))))


# ----------------------------------------------------------------------------------- figures


def learning_curves(ctx: FigureContext) -> list[Figure]:
    """Mean over seeds with a 95% CI band: test metric (top) and train loss (bottom) vs epoch."""
    data = ctx.data
    done = _completed(data)
    names = [m for m in (ctx.metric, "train_loss") if m in set(data.epochs["name"])]
    if not names or done.empty:
        return []
    ep = data.epochs[data.epochs["name"].isin(names)].dropna(subset=["value"])
    ep = ep.merge(done[["cell_id", "series", "sweep"]], on="cell_id")
    if ep.empty:
        return []
    facets = _facet_values(data)
    colors = ctx.colors
    fig, axes = plt.subplots(len(names), len(facets), figsize=ctx.figsize(max(4 * len(facets), 6.5), 3.2 * len(names)),
                             squeeze=False, sharex=True, sharey="row")
    for row, name in enumerate(names):
        direction = ctx.direction if name == ctx.metric else "minimize"
        for col, value in enumerate(facets):
            ax = axes[row][col]
            sub = ep[(ep["name"] == name) & _in_facet(ep, data, value)]
            for series, f in _mean_ci(sub, ["series", "epoch"]).groupby("series", sort=False):
                ax.plot(f["epoch"], f["mean"], color=colors[series], label=series, lw=1.5)
                ax.fill_between(f["epoch"], f["mean"] - f["half"], f["mean"] + f["half"], color=colors[series], alpha=0.2)
            if _use_log(sub["value"], direction):
                _log_axis(ax)
                # With few seeds a t band can reach below zero; keep the axis on the seeds' own range
                # (over the whole row: the y axis is shared).
                row_values = ep.loc[ep["name"] == name, "value"]
                low, high = row_values.min(), row_values.max()
                if low > 0:
                    ax.set_ylim(low / 1.5, high * 1.5)
            ax.set_title(f"{data.sweep}={_axis_text(value)}" if data.sweep else "", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric_label(name, direction) if col == 0 else "", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle("Learning curves: mean over seeds, band = 95% CI")
    return [ctx.save(fig, "learning_curves", "Learning curves (mean over seeds, 95% CI band)")]


def metric_vs_axis(ctx: FigureContext, summary: pd.DataFrame) -> list[Figure]:
    """Final metric against the sweep axis, one line per series, 95% CI bars (Table 3.1's shape)."""
    data = ctx.data
    if not data.sweep or summary["n"].sum() == 0:
        return []
    fig, ax = plt.subplots(figsize=ctx.figsize(6.5, 4.2))
    order = list(dict.fromkeys(summary["sweep"]))
    numeric = all(_is_number(v) for v in order)
    colors = ctx.colors
    for series, f in summary[summary["n"] > 0].groupby("series", sort=False):
        x = f["sweep"].astype(float) if numeric else f["sweep"].map(lambda v: order.index(v))
        yerr = np.vstack([f["mean"] - f["ci_low"], f["ci_high"] - f["mean"]])
        ax.errorbar(x, f["mean"], yerr=np.nan_to_num(yerr), marker="o", capsize=3, label=series, color=colors[series])
    if not numeric:
        ax.set_xticks(range(len(order)), [str(v) for v in order])
    elif all(float(v).is_integer() for v in order):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if _use_log(summary["mean"], ctx.direction):
        _log_axis(ax)
    ax.set_xlabel(data.sweep)
    ax.set_ylabel(metric_label(ctx.metric, ctx.direction))
    ax.set_title(f"Final {ctx.metric} by {data.sweep} (mean, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [ctx.save(fig, "metric_vs_axis", f"Final {ctx.metric} against {data.sweep}")]


def seeds_plot(ctx: FigureContext) -> list[Figure]:
    """Every seed as a point over a box plot, per series (and sweep value)."""
    data = ctx.data
    done = _completed(data)
    if ctx.metric not in data.finals or done.empty:
        return []
    frame = done.assign(value=done["cell_id"].map(data.finals[ctx.metric])).dropna(subset=["value"])
    if frame.empty:
        return []
    x = "sweep" if data.sweep else "series"
    dodge = bool(data.sweep)  # series side by side within each sweep value
    frame = frame.assign(sweep=frame["sweep"].map(_axis_text))
    width = 1.2 + 0.6 * frame[x].nunique() * (frame["series"].nunique() if dodge else 1) ** 0.5
    fig, ax = plt.subplots(figsize=ctx.figsize(min(max(width, 5), 16), 4.2))
    common = dict(data=frame, x=x, y="value", hue="series", palette=ctx.colors, dodge=dodge, ax=ax)
    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated `vert`
        warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
        sns.boxplot(**common, showfliers=False, fill=False, linewidth=1, legend=dodge)
    sns.stripplot(**common, size=4, alpha=0.8, legend=False, zorder=3)
    if _use_log(frame["value"], ctx.direction):
        _log_axis(ax)
    ax.set_ylabel(metric_label(ctx.metric, ctx.direction))
    ax.set_xlabel(data.sweep or "")
    ax.tick_params(axis="x", labelrotation=30 if not data.sweep else 0, labelsize=8)
    ax.set_title(f"Final {ctx.metric}: every seed (points) over box plots")
    if dodge:
        ax.legend(fontsize=7, title=None)
    return [ctx.save(fig, "seeds", f"Final {ctx.metric}, every seed")]


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


def learned_activations(ctx: FigureContext) -> list[Figure]:
    """alpha(s)*s for a few features per layer, per series, beside ReLU s -> max(s, 0)."""
    data = ctx.data
    done = _completed(data).sort_values(SEED_AXIS).drop_duplicates("series")
    stored = data.artifacts("activation_curves", done["cell_id"])
    rows = [r for r in done.itertuples() if int(r.cell_id) in stored][:MAX_FACETS]
    if not rows:
        return []
    layers = max(min(len(stored[int(r.cell_id)]["modules"]), MAX_LAYERS) for r in rows)
    fig, axes = plt.subplots(len(rows), layers, figsize=ctx.figsize(max(3.2 * layers, 5.5), 2.6 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        curves = stored[int(row.cell_id)]
        s = np.asarray(curves["s"], float)
        modules = list(curves["modules"].items())[:MAX_LAYERS]
        for j in range(layers):
            ax = axes[i][j]
            if j >= len(modules):
                ax.axis("off")
                continue
            name, features = modules[j]
            for k, y in enumerate(features[:MAX_FEATURES]):
                ax.plot(s, y, lw=1.2, label=f"feature {k}")
            ax.plot(s, np.maximum(s, 0), "k--", lw=1, label="ReLU")
            ax.set_title(f"{row.series}: {name}", fontsize=8)
            ax.set_xlabel("s (pre-activation)", fontsize=8)
            ax.set_ylabel("output", fontsize=8)
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=6)
    fig.suptitle(f"Learned activations (seed {rows[0].seed}), ReLU dashed", fontsize=10)
    return [ctx.save(fig, "learned_activations", "Learned activations beside ReLU")]


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
                 lambda: predictions(ctx), lambda: learned_activations(ctx), lambda: timing(ctx)):
        figures.extend(draw())
    return figures

