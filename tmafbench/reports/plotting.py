"""The drawing rules every report figure follows, written once:

- one colour per group, the same in every figure of a report (`Palette`);
- one legend per figure, outside the panels, naming exactly what is drawn (`finish`): every drawn
  artist carries a gid that is a legend label (`tag`), which the figure tests check;
- every axis can be read: tick labels on every panel, and a log axis with fewer than three powers
  of ten in view labels its minor ticks in plain numbers (`readable_axes`);
- the band rule (`spread_of`): up to MAX_SEED_LINES seeds a line shows every seed, above it a band
  over the middle half; and where a band would hide another group's line, each group gets its own
  panel (`hides`);
- lines that coincide stay visible: dashed in turns over each other, and named (`coinciding`): learning
  curves and predictions.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, count
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # never a display; reports render headless

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import Container
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from PIL import Image

from tmafbench.core import RunStatus
from tmafbench.reports.frames import ReportData
from tmafbench.reports.labels import axis_title

# Up to this many seeds per line, learning curves draw every seed; above it, a band over the middle half.
MAX_SEED_LINES = 10
# A band hides another group's line when that line runs inside it for more than this share of epochs.
HIDE_SHARE = 0.1
# Two curves coincide when they differ by less than this share of the panel's height at this share of
# their points or more (a line 1 to 2 points wide on a panel about 200 points high hides the other).
COINCIDE_SHARE = 0.01
COINCIDE_POINTS = 0.9
LEGEND_FONT = 8
IMAGE_FORMATS = ("png", "svg", "pdf")


def spread_of(seeds: int) -> str:
    """The band rule: "lines" (every seed a thin line) up to MAX_SEED_LINES seeds, else "band"."""
    return "band" if seeds > MAX_SEED_LINES else "lines"


SPREAD_TEXT = {"lines": "thin lines = each seed", "band": "band = middle half of the seeds"}


class Palette:
    """One colour per name, given in first-seen order and never changed by later names: tab10 first,
    then further qualitative palettes, then evenly spaced hues."""

    def __init__(self, names: Iterable[str] = ()):
        self._colors: dict[str, tuple] = {}
        self._next = _colors()
        for name in names:
            self[name]

    def __getitem__(self, name: str) -> tuple:
        if name not in self._colors:
            self._colors[name] = next(self._next)
        return self._colors[name]


def _colors() -> Iterator[tuple]:
    named = [plt.get_cmap(m).colors for m in ("tab10", "Dark2", "Set1")]
    seen: list[tuple] = []
    for color in chain(*named):
        rgb = tuple(float(c) for c in color[:3])
        if all(sum(abs(a - b) for a, b in zip(rgb, other)) > 0.25 for other in seen):  # skip near-repeats
            seen.append(rgb)
            yield rgb
    golden = 0.618033988749895
    for k in count():
        yield tuple(float(c) for c in matplotlib.colors.hsv_to_rgb(((k * golden) % 1.0, 0.75, 0.75)))


def tag(artists, gid: str) -> None:
    """Name what was drawn by its legend label (an artist, a container such as errorbar's, a list)."""
    if isinstance(artists, Artist):
        artists.set_gid(gid)
    elif isinstance(artists, (Container, list, tuple)):
        for item in artists:
            if item is not None:
                tag(item, gid)
    elif isinstance(artists, dict):  # boxplot's parts
        tag(list(artists.values()), gid)


def line_entry(color, **style) -> Line2D:
    """A legend handle for a line (or, with marker= and ls="none", a point)."""
    return Line2D([], [], color=color, **{"lw": 1.8, **style})


def hides(x: np.ndarray, low: np.ndarray, high: np.ndarray, line: Mapping[float, float]) -> bool:
    """Whether another group's line runs inside the band [low, high] for more than HIDE_SHARE of its epochs."""
    inside = [low[i] <= line[e] <= high[i] for i, e in enumerate(x) if e in line and np.isfinite(line[e])]
    return bool(inside) and sum(inside) > HIDE_SHARE * len(inside)


def coinciding(curves: Mapping[str, Mapping[float, float]], log: bool) -> list[list[str]]:
    """Groups of names whose curves (x -> value, on the same x) lie within COINCIDE_SHARE of the panel's
    height of each other (on the log scale when the panel is log) at COINCIDE_POINTS of their points or
    more: one line would hide the other along most of its path. First name first."""
    def scale(values: np.ndarray) -> np.ndarray:
        return np.log10(np.where(values > 0, values, np.nan)) if log else values

    arrays = {name: (np.asarray(list(c), float), scale(np.asarray(list(c.values()), float))) for name, c in curves.items()}
    finite = np.concatenate([v[np.isfinite(v)] for _, v in arrays.values()]) if arrays else np.array([])
    if len(arrays) < 2 or finite.size < 2:
        return []
    tolerance = COINCIDE_SHARE * (float(finite.max() - finite.min()) or 1.0)
    clusters: list[list[str]] = []
    for name, (x, y) in arrays.items():
        for cluster in clusters:
            first_x, first_y = arrays[cluster[0]]
            if len(x) == len(first_x) and np.array_equal(x, first_x):
                close = np.abs(y - first_y) <= tolerance  # NaN (a missing value) is not close
                if close.mean() >= COINCIDE_POINTS:
                    cluster.append(name)
                    break
        else:
            clusters.append([name])
    return [c for c in clusters if len(c) > 1]


def turn_dashes(position: int, size: int) -> tuple | str:
    """Line style of the position-th of `size` coinciding lines: the first solid, the others dashed in
    turns so that each colour shows along the shared path."""
    if position == 0:
        return "-"
    dash = 4.0
    return ((position - 1) * dash, (dash, dash * (size - 1)))


# ----------------------------------------------------------------------------- axes and legend


def _plain(value: float, _pos=None) -> str:
    return f"{value:g}"


def readable_axes(fig: MplFigure) -> None:
    """Tick labels on every panel (shared axes hide them on inner panels), and a log axis with fewer
    than three powers of ten in view labels its minor ticks too (2 and 5 x 10^k; 2, 3, 5 x 10^k within
    a decade), every label in plain numbers."""
    for ax in fig.axes:
        if not ax.axison:
            continue
        ax.tick_params(labelbottom=True, labelleft=True)
        for axis, limits in ((ax.yaxis, ax.get_ylim()), (ax.xaxis, ax.get_xlim())):
            if axis.get_scale() != "log":
                continue
            low, high = sorted(limits)
            powers = math.floor(math.log10(high)) - math.ceil(math.log10(low)) + 1 if low > 0 else 3
            if powers >= 3:
                axis.set_minor_formatter(NullFormatter())  # decades are labelled; minor labels would clutter
                continue
            ratio = high / low
            subs = (2.0, 5.0) if ratio > 10 else (2.0, 3.0, 5.0) if ratio > 3 else tuple(float(s) for s in range(2, 10))
            axis.set_minor_locator(LogLocator(base=10, subs=subs))
            axis.set_minor_formatter(FuncFormatter(_plain))
            axis.set_major_formatter(FuncFormatter(_plain))
            axis.set_tick_params(which="minor", labelsize=axis.get_ticklabels()[0].get_fontsize()
                                 if axis.get_ticklabels() else 9)


def finish(fig: MplFigure, legend: Mapping[str, Artist] | None) -> None:
    """Readable axes, then the one legend to the right of the panels (the figure widens to hold it,
    in as many columns as its height needs), then one tight layout for the panels beside it."""
    readable_axes(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if not legend:
            _fit_suptitle(fig, 1.0)
            fig.tight_layout()
            return
        width, height = fig.get_size_inches()
        handle, box = _legend(fig, legend, height)
        extra = box.width / fig.dpi + 0.2
        # A legend taller than the figure makes the figure taller (the panels stretch with it).
        height = max(height, box.height / fig.dpi + 0.3)
        fig.set_size_inches(width + extra, height)
        share = width / (width + extra)
        _fit_suptitle(fig, share)
        fig.tight_layout(rect=(0, 0, share, 1))
        # Level with the top of the panels, or higher where the legend would reach below the figure.
        top = max((ax.get_position().y1 for ax in fig.axes if ax.axison), default=1.0)
        top = max(top, min(1.0, (box.height / fig.dpi + 0.1) / height))
        handle.set_bbox_to_anchor((share + 0.05 / (width + extra), top), transform=fig.transFigure)


def _legend(fig: MplFigure, legend: Mapping[str, Artist], height: float):
    """The figure legend, in as many columns (up to 4) as it needs to be no taller than the figure."""
    usable = max(height - 0.4, 1.0) * fig.dpi
    ncol = 1
    while True:
        handle = fig.legend(list(legend.values()), list(legend), loc="upper left", bbox_to_anchor=(1.0, 1.0),
                            frameon=False, fontsize=LEGEND_FONT, ncol=ncol)
        box = handle.get_window_extent(fig.canvas.get_renderer())
        if box.height <= usable or ncol >= 4:
            return handle, box
        handle.remove()
        ncol = min(4, max(ncol + 1, math.ceil(box.height * ncol / usable)))


def _fit_suptitle(fig: MplFigure, share: float) -> None:
    """Centre the figure's title over the panels (the left `share` of the width); where it is wider,
    over the whole figure; where it is wider still, wrap its lines."""
    title = fig._suptitle  # matplotlib keeps the suptitle here; None without one
    if title is None or not title.get_text():
        return
    renderer = fig.canvas.get_renderer()
    full = fig.get_size_inches()[0] * fig.dpi
    title.set_x(share / 2)
    wide = title.get_window_extent(renderer).width
    if wide <= 0.98 * share * full:
        return
    title.set_x(0.5)
    if wide > 0.98 * full:
        lines = title.get_text().split("\n")
        chars = max(20, int(max(len(line) for line in lines) * 0.95 * full / wide))
        title.set_text("\n".join(textwrap.fill(line, chars) for line in lines))


# ----------------------------------------------------------------------------- figure records


@dataclass
class Figure:
    name: str
    title: str
    paths: dict[str, Path] = field(default_factory=dict)  # format -> file
    note: str = ""  # a sentence shown under the figure (what the figure itself says in its title)


@dataclass
class FigureContext:
    data: ReportData | None
    metric: str  # column in finals (e.g. "rel_l2" or "val_accuracy")
    direction: str
    baseline: str | None
    folder: Path
    formats: tuple[str, ...]
    scale: float = 1.0  # < 1 for quick renders (tests)
    prefix: str = ""  # file-name prefix (one per task when a report covers several)
    palette: Palette | None = None  # the report's colours (one per group, shared by every figure)
    drawn: list | None = None  # when a list, each matplotlib figure is kept in it (tests inspect them)

    def save(self, fig, name: str, title: str, legend: Mapping[str, Artist] | None = None, note: str = "") -> Figure:
        """Lay out (`finish`: readable axes, the one legend) and write `fig` in every format once."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self.prefix + name
        record = Figure(name, title, note=note)
        finish(fig, legend)
        for ext in self.formats:
            path = self.folder / f"{name}.{ext}"
            if ext == "png":
                _save_png(fig, path)
            else:
                # SVG text stays text (not glyph paths): smaller files, faster writes.
                with plt.rc_context({"svg.fonttype": "none"}):
                    fig.savefig(path, dpi=100)
            record.paths[ext] = path
        if self.drawn is not None:
            self.drawn.append(fig)
        plt.close(fig)
        return record

    @property
    def colors(self) -> Palette:
        """One colour per series, the same in every figure (the report's palette when it gave one)."""
        if self.palette is None:
            self.palette = Palette(dict.fromkeys(self.data.cells["series"]) if self.data is not None else ())
        return self.palette

    def figsize(self, w: float, h: float) -> tuple[float, float]:
        return (w * self.scale, h * self.scale)


def _save_png(fig: MplFigure, path: Path) -> None:
    """The figure at 100 dpi in 256 colours: a chart has a few hues and their anti-aliased edges, which
    a palette keeps to the eye at about a third of the bytes of full colour (committed reports are
    rebuilt, and every rebuild adds its figures to the repository's history)."""
    canvas = FigureCanvasAgg(fig) if not isinstance(fig.canvas, FigureCanvasAgg) else fig.canvas
    fig.set_dpi(100)
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    image.quantize(256, method=Image.Quantize.FASTOCTREE).save(path, format="PNG")


def completed(data: ReportData) -> pd.DataFrame:
    return data.cells[data.cells["status"] == RunStatus.COMPLETED]


def use_log(values, direction: str) -> bool:
    """A log scale for positive errors that span more than a factor of 10."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return direction == "minimize" and len(v) > 0 and bool(np.all(v > 0)) and v.max() / v.min() > 10


MAX_FACETS = 4  # sweep values shown side by side; more are thinned evenly (first and last kept)


def facet_values(data: ReportData) -> list:
    """Sweep values to show side by side (all, or an even thinning to MAX_FACETS)."""
    if not data.sweep:
        return [None]
    values = list(dict.fromkeys(data.cells["sweep"]))
    if len(values) <= MAX_FACETS:
        return values
    picks = np.linspace(0, len(values) - 1, MAX_FACETS).round().astype(int)
    return [values[i] for i in sorted(set(picks))]


def in_facet(frame: pd.DataFrame, data: ReportData, value) -> pd.Series:
    if data.sweep is None:
        return pd.Series(True, index=frame.index)
    return frame["sweep"].map(lambda v: str(v) == str(value))


def facet_title(data: ReportData, value) -> str:
    """"n=3", "no grid" (a group without the sweep axis), or "" when nothing is swept."""
    return axis_title(data.sweep, value) if data.sweep else ""
