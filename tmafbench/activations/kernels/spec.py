"""What a banded-TMAF kernel call needs besides the tensors, and the rules both kernels share.

Both kernels (native.py and reference.py) compute exactly the same numbers; the pieces of that
definition that are data rather than code live here, so that they are written once:
- `grid_tensors`: the shifted breakpoints of every diagonal, as float64 positions and as
  thresholds in the input dtype that make the interval test exact;
- `chunk_samples` and `LANES`: the fixed order in which the values' (and breakpoints') gradient
  is summed, which depends on the shape only, never on the thread count;
- `BandSpec.bump_width` and `BandSpec.bump`: the kernel of the relaxed breakpoint gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Partial sums per gradient entry inside a chunk: element (n, c, s) goes to lane (c*S + s) % LANES.
LANES = 8
# tol1 of the native kernel's interval estimate, in units of rounding r = eps / 2: tmaf_cpu.cpp uses
# tol1 = 4 * epsilon. `_uniform_estimate` proves the estimate safe with this value, so the two must
# agree (tests/activations/test_native_build.py reads the C++ line to check).
ESTIMATE_TOL1_UNITS = 8
#: A chunk holds at least this many elements, and at least 16 times the number of gradient
#: entries, so that the per-chunk partial sums stay under an eighth of the input's size.
CHUNK_MIN_ELEMENTS = 1 << 14
CHUNK_ENTRY_FACTOR = 16


@dataclass(frozen=True)
class BandSpec:
    """Static description of one banded TMAF evaluation.

    shifts[d]: offset of diagonal d's grid from the base grid; rows[d]: column j of diagonal d feeds
    output row j + rows[d] (0 main, -1 upper/beta, +1 lower/gamma, -2, +2, ...). `uniform` (lo, h)
    is set when the shared base grid is lo + k h, which allows the arithmetic index estimate.
    bump_width > 0 switches on the relaxed breakpoint gradient: the half-width of its kernel
    (see tmaf.py).
    """

    shifts: tuple[float, ...]
    rows: tuple[int, ...]
    uniform: tuple[float, float] | None = None
    bump_width: float = 0.0

    def __post_init__(self) -> None:
        if not self.rows or self.rows[0] != 0 or len(self.rows) != len(self.shifts):
            raise ValueError("BandSpec: rows must start with the main diagonal (0) and match shifts")

    @property
    def bump(self) -> tuple[float, float]:
        """(1 / a, 15 / (16 a)) of the breakpoint kernel k(u) = 15/(16 a) (1 - (u/a)^2)^2 on |u| < a,
        with a = bump_width; (0, 0) without a breakpoint gradient."""
        a = self.bump_width
        return (1.0 / a, 15.0 / (16.0 * a)) if a > 0 else (0.0, 0.0)


@dataclass(frozen=True)
class GridTensors:
    """The grids of every diagonal for one input dtype.

    thresholds: [D, Cb, m + 2] in the input dtype: -inf, then fl64(s_k + shift_d) rounded DOWN to
    the dtype, then +inf. For every value v of that dtype, `thr < v` holds exactly when
    `s_k + shift_d < v` holds for the float64 breakpoint, so the interval test is exact.
    positions: [D, Cb, m] float64: the shifted breakpoints themselves (the breakpoint gradient's kernel
    is centred on them).
    lows, tols, inv_h: for uniform grids, lo + shift_d, a tolerance and 1 / h: the native kernel then
    takes ceil(u), u = (v - lo) / h evaluated in the input dtype and clamped to [-1/2, m + 1/2], as
    the index wherever u is farther than tol0 + tol1 (u + 1/2) from an integer (tol0 here; tol1 = 8
    units of rounding, in the kernel), and uses the thresholds for the rest. () and 0.0 otherwise.
    """

    thresholds: torch.Tensor
    positions: torch.Tensor
    lows: tuple[float, ...]
    tols: tuple[float, ...]
    inv_h: float


def round_down(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 values -> the largest `dtype` number <= each of them."""
    rounded = values.to(dtype)
    too_high = rounded.double() > values
    if bool(too_high.any()):
        below = torch.nextafter(rounded, torch.full_like(rounded, -math.inf))
        rounded = torch.where(too_high, below, rounded)
    return rounded


def grid_tensors(breakpoints: torch.Tensor, spec: BandSpec, dtype: torch.dtype) -> GridTensors:
    """Thresholds and positions of every diagonal from breakpoints [Cb, m] (any float dtype)."""
    bp = breakpoints.detach().to(torch.float64)
    shifts = torch.tensor(spec.shifts, dtype=torch.float64, device=bp.device).view(-1, 1, 1)
    positions = (bp.unsqueeze(0) + shifts).contiguous()  # [D, Cb, m], each rounded to the nearest double
    inf = torch.full((*positions.shape[:2], 1), math.inf, dtype=dtype, device=bp.device)
    thresholds = torch.cat([-inf, round_down(positions, dtype), inf], dim=2).contiguous()
    uniform = _uniform_estimate(positions, spec, dtype) if spec.uniform is not None and bp.shape[0] == 1 else None
    lows, tols, inv_h = uniform or ((), (), 0.0)
    return GridTensors(thresholds, positions, lows, tols, inv_h)


def _uniform_estimate(positions: torch.Tensor, spec: BandSpec, dtype: torch.dtype):
    """(lows, tol0s, 1/h) for the kernel's index estimate, or None when rounding could exceed a
    quarter interval (a grid far from 0 relative to h): the kernel then searches every input.

    With u = fl(fl(v - fl(lo)) * fl(1/h)) and unit roundoff r of the dtype,
    |u - (v - lo)/h| <= 1.01 r (|lo|/h + 3.01 |u| + 1); and the float64 breakpoints sit within eps of
    lo + k h (eps measured below, with the float64 rounding of the measurement added). So
    tol0 = 2 r (|lo|/h + 2) + 2 eps/h with tol1 = ESTIMATE_TOL1_UNITS r (in the kernel) bounds both
    for every u in [-1/2, m + 1/2]; outside that range u is clamped and its index is 0 or m either way."""
    lo, h = spec.uniform
    r = torch.finfo(dtype).eps / 2
    m = positions.shape[2]
    k = torch.arange(m, dtype=torch.float64, device=positions.device)
    lows, tols = [], []
    for d, shift in enumerate(spec.shifts):
        lo_d = lo + shift
        pos = positions[d, 0]
        eps = ((pos - (lo_d + k * h)).abs() + 4 * 2.0**-53 * (pos.abs() + abs(lo_d) + k * h)).max().item()
        tol0 = 2 * r * (abs(lo_d) / h + 2) + 2 * eps / h
        if tol0 + ESTIMATE_TOL1_UNITS * r * (m + 1) >= 0.25:
            return None
        lows.append(lo_d)
        tols.append(tol0)
    return tuple(lows), tuple(tols), 1.0 / h


def chunk_samples(samples: int, per_sample: int, entries: int) -> int:
    """Samples per chunk of the gradient sums: a function of the shape alone (never the thread count)."""
    target = max(CHUNK_MIN_ELEMENTS, CHUNK_ENTRY_FACTOR * entries)
    return max(1, min(samples, -(-target // max(1, per_sample))))
