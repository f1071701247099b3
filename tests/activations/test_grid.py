"""Interval grids: breakpoints, counts, labels and validation."""

from __future__ import annotations

import pytest

from tmafbench.activations.grid import Grid


def test_paper_grid():
    g = Grid.from_params()
    assert g.breakpoints == tuple(float(k) for k in range(-5, 6))
    assert (g.m, g.num_values, g.intervals, g.width, g.label) == (11, 12, 10, 1.0, "[-5,5]/10")
    assert g.uniform and g.zero_index() == 5


def test_fine_grid_has_an_exact_zero_and_end_points():
    g = Grid.from_params(intervals=100)
    assert g.breakpoints[50] == 0.0 and g.breakpoints[0] == -5.0 and g.breakpoints[-1] == 5.0
    assert g.num_values == 102 and g.label == "[-5,5]/100"


def test_explicit_grid():
    g = Grid.from_params(breakpoints=[-1, 0, 2.5])
    assert not g.uniform and g.m == 3 and g.intervals == 2 and g.width == pytest.approx(1.75)
    assert g.label == "bp(-1,0,2.5)"
    assert Grid.explicit([0.0]).num_values == 2  # a single breakpoint: relu's grid
    assert Grid.explicit(range(10)).label == "bp[0,9]x10"


@pytest.mark.parametrize("kwargs,message", [
    ({"breakpoints": [1, 0]}, "strictly increasing"),
    ({"breakpoints": [0, float("nan")]}, "finite"),
    ({"breakpoints": "abc"}, "list of numbers"),
    ({"intervals": -1}, "at least 1 interval"),
    ({"lo": 0, "hi": float("inf")}, "finite lo < hi"),
])
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Grid.from_params(**kwargs)
