"""How reports write values, axes, metrics and file names (reports/labels.py)."""

from __future__ import annotations

import math

from tmafbench.reports.labels import (
    axis_text,
    axis_title,
    label_all,
    metric_label,
    slug,
)


def test_values_read_as_written_and_a_missing_one_says_what_the_cell_is():
    assert axis_text(3.0) == "3" and axis_text(0.5) == "0.5" and axis_text("[-5,5]/10") == "[-5,5]/10"
    assert axis_text(None, "intervals") == "no grid" and axis_text(math.nan, "grid") == "no grid"
    assert axis_text(None, "width") == "no width" and axis_text(None) == "none"
    assert axis_title("n", 3.0) == "n=3" and axis_title("intervals", None) == "no grid"


def test_slugs_metric_labels_and_lists():
    assert slug(3.0) == "3" and slug("[-5,5]/10") == "_-5_5__10" and slug("h0.05") == "h0.05"
    assert slug(None) == "none"
    assert metric_label("val_rel_l2", "minimize") == "validation relative L2 error (lower is better)"
    assert metric_label("accuracy", "maximize") == "test accuracy (higher is better)"
    assert metric_label("train_loss", "minimize") == "train loss (lower is better)"
    assert label_all(["a"]) == "a" and label_all(["a", "b", "c"]) == "a, b and c"
