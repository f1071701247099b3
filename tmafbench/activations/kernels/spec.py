"""What a banded-TMAF kernel call needs besides the tensors, and the rules both kernels share.

Both kernels (native.py and reference.py) compute exactly the same numbers; the pieces of that
definition that are data rather than code live here, so that they are written once:
- `grid_tensors`: the shifted breakpoints of every diagonal, as float64 positions and as
  thresholds in the input dtype that make the interval test exact;
- `chunk_samples` and `LANES`: the fixed order in which the values' (and breakpoints') gradient
  is summed, which depends on the shape only, never on the thread count;
- `BandSpec.bump_width` and `bump_constants`: the kernel of the relaxed breakpoint gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Partial sums per gradient entry inside a chunk: element (n, c, s) goes to lane (c*S + s) % LANES.
LANES = 8
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


@dataclass(frozen=True)
class GridTensors:
    """The grids of every diagonal for one input dtype.

    thresholds: [D, Cb, m + 2] in the input dtype: -inf, then fl64(s_k + shift_d) rounded DOWN to
    the dtype, then +inf. For every value v of that dtype, `thr < v` holds exactly when
    `s_k + shift_d < v` holds for the float64 breakpoint, so the interval test is exact.
    positions: [D, Cb, m] float64: the shifted breakpoints themselves (the breakpoint gradient's kernel
    is centred on them). lows, inv_h: the uniform grid's lo + shift_d and 1 / h, used only for an
    index estimate that the thresholds then check; () and 0.0 for other grids.
    """

    thresholds: torch.Tensor
    positions: torch.Tensor
    lows: tuple[float, ...]
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
    if spec.uniform is not None and bp.shape[0] == 1:
        lo, h = spec.uniform
        return GridTensors(thresholds, positions, tuple(lo + s for s in spec.shifts), 1.0 / h)
    return GridTensors(thresholds, positions, (), 0.0)


def chunk_samples(samples: int, per_sample: int, entries: int) -> int:
    """Samples per chunk of the gradient sums: a function of the shape alone (never the thread count)."""
    target = max(CHUNK_MIN_ELEMENTS, CHUNK_ENTRY_FACTOR * entries)
    return max(1, min(samples, -(-target // max(1, per_sample))))


def bump_constants(spec: BandSpec) -> tuple[float, float]:
    """(1 / a, 15 / (16 a)) of the breakpoint kernel k(u) = 15/(16 a) (1 - (u/a)^2)^2 on |u| < a."""
    a = spec.bump_width
    return (1.0 / a, 15.0 / (16.0 * a)) if a > 0 else (0.0, 0.0)
