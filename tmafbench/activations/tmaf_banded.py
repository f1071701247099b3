"""Tri-diagonal (paper eq. 2.4) and banded TMAF.

Column j of the matrix T(y) holds piecewise-constant functions of y_j, so

    out_i = alpha_i(y_i) y_i + beta_{i+1}(y_{i+1}) y_{i+1} + gamma_{i-1}(y_{i-1}) y_{i-1}

alpha is `values` (the diagonal), beta is `values_upper` (row j-1, grid shifted by offset_beta,
default h/3) and gamma `values_lower` (row j+1, shifted by offset_gamma, default 2h/3); h is the
interval width (the mean width for explicit breakpoints). On [N, C, H, W] the coupling runs across
neighbouring channels at each pixel. `values_upper[0]` and `values_lower[C-1]` have no row to feed
and keep a zero gradient.

Banded, bandwidth b: diagonals k = 1..b above and below, named values_upper / values_lower for
k = 1 and values_upper_k / values_lower_k beyond. Their grids are shifted by (2k-1)h/(2b+1) (upper)
and 2k h/(2b+1) (lower): distinct offsets in (0, h), which for b = 1 are the tri-diagonal h/3, 2h/3.
"""

from __future__ import annotations

from typing import Sequence

from tmafbench.registries import ACTIVATIONS
from tmafbench.activations.grid import Grid
from tmafbench.activations.base import Share
from tmafbench.activations.tmaf import BandedTMAFBase, Init


def banded_shifts(bandwidth: int, h: float) -> list[float]:
    """Grid offsets in diagonal order: main, upper 1, lower 1, upper 2, lower 2, ..."""
    shifts = [0.0]
    for k in range(1, bandwidth + 1):
        shifts += [(2 * k - 1) * h / (2 * bandwidth + 1), 2 * k * h / (2 * bandwidth + 1)]
    return shifts


def _offset(value: float | None, default: float, name: str) -> float:
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


@ACTIVATIONS.register("tmaf-tridiag")
class TridiagTMAF(BandedTMAFBase):
    """Tri-diagonal TMAF (eq. 2.4): neighbours' piecewise-constant coefficients on shifted grids."""

    def __init__(
        self,
        num_features: int,
        lo: float | None = None,
        hi: float | None = None,
        intervals: int | None = None,
        breakpoints: Sequence[float] | None = None,
        init: Init = "relu",
        slope: float = 0.01,
        share: Share = "feature",
        train_breakpoints: bool = False,
        offset_beta: float | None = None,
        offset_gamma: float | None = None,
    ):
        grid = Grid.from_params(lo, hi, intervals, breakpoints)
        h = grid.width
        shifts = (0.0, _offset(offset_beta, h / 3, "offset_beta"), _offset(offset_gamma, 2 * h / 3, "offset_gamma"))
        super().__init__(num_features, grid, shifts, init, slope, share, train_breakpoints)


@ACTIVATIONS.register("tmaf-banded")
class BandedTMAF(BandedTMAFBase):
    """Banded TMAF: 2b+1 diagonals of piecewise-constant coefficients (b=0 tmaf, b=1 tmaf-tridiag)."""

    def __init__(
        self,
        num_features: int,
        bandwidth: int = 2,
        lo: float | None = None,
        hi: float | None = None,
        intervals: int | None = None,
        breakpoints: Sequence[float] | None = None,
        init: Init = "relu",
        slope: float = 0.01,
        share: Share = "feature",
        train_breakpoints: bool = False,
    ):
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or bandwidth < 0:
            raise ValueError(f"bandwidth must be an integer >= 0, got {bandwidth!r}")
        grid = Grid.from_params(lo, hi, intervals, breakpoints)
        super().__init__(num_features, grid, banded_shifts(bandwidth, grid.width), init, slope, share, train_breakpoints)
