"""Interval grids of the piecewise-constant TMAF functions.

A grid is m increasing breakpoints s_1 < ... < s_m. They split the line into m + 1 intervals,
closed on the right as in the paper (eq. 2.2): (-inf, s_1], (s_1, s_2], ..., (s_m, inf). So a grid
carries m + 1 values per feature. The uniform grid `lo, hi, intervals` puts breakpoints at
lo, lo + h, ..., hi with h = (hi - lo) / intervals: `intervals` inner intervals, m = intervals + 1
breakpoints and intervals + 2 values (the paper's [-5, 5] with h = 1: 10 inner intervals, 12 values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from tmafbench.errors import InputError

DEFAULT_LO, DEFAULT_HI, DEFAULT_INTERVALS = -5.0, 5.0, 10


@dataclass(frozen=True)
class Grid:
    """Increasing breakpoints; `uniform` grids also keep lo and h for the arithmetic bucket index."""

    breakpoints: tuple[float, ...]
    uniform: bool

    @classmethod
    def uniform_grid(cls, lo: float, hi: float, intervals: int) -> "Grid":
        """Breakpoints lo, lo + h, ..., hi with h = (hi - lo) / intervals."""
        lo, hi = float(lo), float(hi)
        if isinstance(intervals, bool) or int(intervals) != intervals:
            raise InputError(f"intervals must be an integer, got {intervals!r}")
        intervals = int(intervals)
        if intervals < 1:
            raise InputError(f"a grid needs at least 1 interval, got intervals={intervals}")
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise InputError(f"grid needs finite lo < hi, got lo={lo:g}, hi={hi:g}")
        h = (hi - lo) / intervals
        # lo + k*h, with the end point pinned to hi so that rounding never moves it.
        points = tuple(lo + k * h for k in range(intervals)) + (hi,)
        return cls(_snap_zero(points, h), uniform=True)

    @classmethod
    def explicit(cls, breakpoints: Sequence[float]) -> "Grid":
        """A grid from explicit, strictly increasing, finite breakpoints."""
        try:
            points = tuple(float(s) for s in breakpoints)
        except (TypeError, ValueError):
            raise InputError(f"breakpoints must be a list of numbers, got {breakpoints!r}") from None
        if not points:
            raise InputError("breakpoints must hold at least one value (a grid needs at least 1 interval)")
        if not all(math.isfinite(s) for s in points):
            raise InputError(f"breakpoints must be finite, got {list(points)}")
        bad = [i for i in range(1, len(points)) if points[i] <= points[i - 1]]
        if bad:
            i = bad[0]
            raise InputError(
                f"breakpoints must be strictly increasing, but breakpoints[{i}]={points[i]:g} <= "
                f"breakpoints[{i - 1}]={points[i - 1]:g}"
            )
        return cls(points, uniform=False)

    @classmethod
    def from_params(
        cls,
        lo: float | None = None,
        hi: float | None = None,
        intervals: int | None = None,
        breakpoints: Sequence[float] | None = None,
    ) -> "Grid":
        """Uniform `lo, hi, intervals` (defaults -5, 5, 10) or explicit `breakpoints`, never both."""
        if breakpoints is not None:
            given = [n for n, v in (("lo", lo), ("hi", hi), ("intervals", intervals)) if v is not None]
            if given:
                raise InputError(f"give either breakpoints or lo/hi/intervals, not both (also got {', '.join(given)})")
            return cls.explicit(breakpoints)
        return cls.uniform_grid(
            DEFAULT_LO if lo is None else lo,
            DEFAULT_HI if hi is None else hi,
            DEFAULT_INTERVALS if intervals is None else intervals,
        )

    @property
    def m(self) -> int:
        """Number of breakpoints."""
        return len(self.breakpoints)

    @property
    def num_values(self) -> int:
        """Values per feature: one per interval, m + 1."""
        return self.m + 1

    @property
    def intervals(self) -> int:
        """Inner (bounded) intervals, m - 1."""
        return self.m - 1

    @property
    def lo(self) -> float:
        return self.breakpoints[0]

    @property
    def hi(self) -> float:
        return self.breakpoints[-1]

    @property
    def width(self) -> float:
        """h for a uniform grid; the mean inner width of an explicit one (1.0 with a single breakpoint)."""
        return (self.hi - self.lo) / self.intervals if self.m > 1 else 1.0

    def zero_index(self) -> int | None:
        """Index k with breakpoints[k] == 0, or None when 0 is not a breakpoint."""
        return next((k for k, s in enumerate(self.breakpoints) if s == 0.0), None)

    @property
    def label(self) -> str:
        """Short text for tables: "[-5,5]/10" for uniform grids, "bp(-1,0,2)" for explicit ones."""
        if self.uniform:
            return f"[{self.lo:g},{self.hi:g}]/{self.intervals}"
        if self.m <= 6:
            return "bp(" + ",".join(f"{s:g}" for s in self.breakpoints) + ")"
        return f"bp[{self.lo:g},{self.hi:g}]x{self.m}"


def _snap_zero(points: tuple[float, ...], h: float) -> tuple[float, ...]:
    """Make a breakpoint that is 0 up to rounding exactly 0 (so relu init stays exact)."""
    return tuple(0.0 if abs(s) < 1e-9 * h else s for s in points)
