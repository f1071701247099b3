"""How a report writes a value, an axis, a metric and a file name: one rule for tables, figures and
documents. A pure module (no pandas, no matplotlib), importable by every part of the reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tmafbench.core import base_metric

# Axes that only a grid-based activation has: an activation without one (ReLU) reads "no grid".
GRID_AXES = frozenset({"grid", "intervals"})
# The set a metric was measured on, by its prefix (core.SET_PREFIXES); no prefix: the test set.
SET_WORDS = {"val_": "validation", "train_": "training-set", "": "test"}
UNITS = {"rel_l2": "relative L2 error", "mse": "mean squared error", "max_abs": "max abs error",
         "accuracy": "accuracy", "cross_entropy": "cross-entropy (nats)", "train_loss": "train loss"}


def is_missing(value: Any) -> bool:
    """None, or a float NaN (pandas' missing value)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def axis_text(value: Any, axis: str | None = None) -> str:
    """A cell's value on an axis as a reader reads it: 3 for 3.0; a missing value says what the cell
    is ("no grid" for an activation without a grid, else "no <axis>"), never None or a dash."""
    if is_missing(value):
        if axis in GRID_AXES:
            return "no grid"
        return f"no {axis}" if axis else "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def axis_title(axis: str, value: Any) -> str:
    """A panel title or column header: "n=3", or what the cell is when it has no value ("no grid")."""
    return axis_text(value, axis) if is_missing(value) else f"{axis}={axis_text(value, axis)}"


def slug(value: Any) -> str:
    """A file-name part: letters, digits, '-' and '.' kept, anything else '_' (3.0 -> '3')."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in axis_text(value))


def metric_label(metric: str, direction: str) -> str:
    """'test relative L2 error (lower is better)': the set, the quantity and which way is better."""
    base = base_metric(metric)
    text = UNITS.get(base, base)
    if base != "train_loss":
        text = f"{SET_WORDS.get(metric.removesuffix(base), 'test')} {text}"
    return f"{text} ({'lower' if direction == 'minimize' else 'higher'} is better)"


def label_all(labels: Sequence[str]) -> str:
    """'a, b and c'."""
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + f" and {labels[-1]}"
