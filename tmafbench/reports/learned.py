"""What the activations learned: their curves beside ReLU, and trainable breakpoints over the grid
they started from. One row of panels per group (its first completed seed), one panel per layer."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from tmafbench.reports.frames import SEED_AXIS
from tmafbench.reports.labels import label_all
from tmafbench.reports.plotting import (
    MAX_FACETS,
    Figure,
    FigureContext,
    completed,
    line_entry,
    tag,
)

MAX_FEATURES = 4  # learned activation curves drawn per layer
MAX_LAYERS = 4
STARTING_GRID = "starting grid"


def _layer_panels(ctx: FigureContext, artifact: str, width: float, min_width: float, height: float):
    """A grid of panels for a per-layer artifact: one row per series (its first completed seed that
    stored `artifact`, at most MAX_FACETS), one panel per module (at most MAX_LAYERS).

    Returns (figure, rows, panels) with panels as (ax, row, stored payload, module name, module
    data); panels a row has no module for are switched off. None when no run stored the artifact.
    """
    done = completed(ctx.data).sort_values(SEED_AXIS).drop_duplicates("series")
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
    return fig, rows, panels


def _seed_text(rows) -> str:
    seeds = sorted({int(r.seed) for r in rows})
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {label_all([str(s) for s in seeds])}"


def learned_activations(ctx: FigureContext) -> list[Figure]:
    """alpha(s)*s for a few features per layer, per series, beside ReLU s -> max(s, 0). The features
    take shades of one colour map, so that they are not read as groups (whose colours are the report's)."""
    laid = _layer_panels(ctx, "activation_curves", 3.2, 5.5, 2.6)
    if laid is None:
        return []
    fig, rows, panels = laid
    shades = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, MAX_FEATURES))
    legend = {}
    for ax, row, curves, name, features in panels:
        s = np.asarray(curves["s"], float)
        for k, y in enumerate(features[:MAX_FEATURES]):
            tag(ax.plot(s, y, lw=1.2, color=shades[k]), f"feature {k}")
            legend.setdefault(f"feature {k}", line_entry(shades[k], lw=1.2))
        tag(ax.plot(s, np.maximum(s, 0), "k--", lw=1), "ReLU")
        ax.set_title(f"{row.series}: {name}", fontsize=8)
        ax.set_xlabel("s (pre-activation)", fontsize=8)
        ax.set_ylabel("output", fontsize=8)
        ax.grid(alpha=0.3)
    legend = dict(sorted(legend.items())) | {"ReLU": line_entry("black", lw=1, ls="--")}
    fig.suptitle(f"Learned activations ({_seed_text(rows)}) of the first features of each layer, ReLU dashed",
                 fontsize=10)
    return [ctx.save(fig, "learned_activations", "Learned activations beside ReLU", legend)]


def learned_breakpoints(ctx: FigureContext) -> list[Figure]:
    """Trainable breakpoints after training (ticks, one row per feature) over the grid they started
    from (grey lines), for the first completed seed of each series that trains them."""
    laid = _layer_panels(ctx, "breakpoints", 3.6, 6.0, 2.4)
    if laid is None:
        return []
    fig, rows, panels = laid
    legend = {}
    for ax, row, _payload, name, grid in panels:
        for s in grid["initial"]:
            tag(ax.axvline(s, color="0.75", lw=0.6, zorder=0), STARTING_GRID)
        color = ctx.colors[row.series]
        for k, learned in enumerate(grid["learned"]):
            tag(ax.plot(learned, [k] * len(learned), "|", ms=7, color=color), row.series)
        legend[row.series] = line_entry(color, marker="|", ls="none", markersize=9)
        ax.set_yticks(range(len(grid["learned"])))
        ax.set_ylabel("feature", fontsize=8)
        ax.set_xlabel("breakpoint position", fontsize=8)
        ax.set_title(f"{row.series}: {name}", fontsize=8)
    legend[STARTING_GRID] = line_entry("0.75", lw=0.8)
    fig.suptitle(f"Learned breakpoints ({_seed_text(rows)}) over the grid they started from", fontsize=10)
    return [ctx.save(fig, "learned_breakpoints", "Learned breakpoints over their starting grid", legend)]
