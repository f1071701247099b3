"""Diagonal TMAF (paper eq. 2.2 and 2.3) and the banded machinery shared with tmaf_banded.py.

`y_i = alpha_i(x_i) * x_i`, where alpha_i is piecewise constant on a grid: t_0 on (-inf, s_1],
t_j on (s_j, s_{j+1}], t_m on (s_m, inf) (closed on the right). The values t are the parameter
`values`, [features, m + 1] (or [1, m + 1] with share="layer").

Banded form (tmaf_banded.py): diagonal d (row offset r_d, grid shifted by delta_d) adds
`D_d,j(y_j) * y_j` to output row j + r_d. Bandwidth 0 is this diagonal TMAF.

Trainable breakpoints (`train_breakpoints=True`, the paper's proposed extension). The output
jumps by (t_{k+1} - t_k) y at breakpoint s_k, so d out / d s_k is a delta function. We relax it:
the delta is replaced by a smooth bump of half-width a = BREAKPOINT_KERNEL_WIDTH * h (h: the
interval width), evaluated for the two breakpoints that bound each input:

    d loss / d s_k  ~=  - sum over inputs y next to s_k of  grad * y * (t_{k+1} - t_k) * k_a(y - s_k)

with k_a(u) = 15/(16 a) (1 - (u/a)^2)^2 on |u| < a, else 0 (it integrates to 1). With a = h its
support covers exactly the two intervals next to each breakpoint of a uniform grid, so taking the
two bounding breakpoints loses nothing there; and it needs only +, -, * and /, so both kernels
compute it to the same bits. The forward pass stays the exact piecewise-constant function.
Breakpoints are kept strictly increasing by parametrising them as a first breakpoint plus positive
gaps: s_1 = breakpoint_first, s_{q+1} = s_q + softplus(breakpoint_gaps_q) + eps. They are per
feature with share="feature" and shared with share="layer". With trainable breakpoints the relu
init is exact only up to the rounding of the cumulative sum.
"""

from __future__ import annotations

from typing import Literal, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import nn

from tmafbench.registries import ACTIVATIONS
from tmafbench.activations.base import Activation, Share
from tmafbench.activations.grid import Grid
from tmafbench.activations.kernels import BandSpec, GridTensors, banded_tmaf, grid_tensors
from tmafbench.errors import InputError

#: Starting values; Literal types let the registry (and the option-matrix test) list the choices.
Init = Literal["relu", "leaky", "identity", "random"]
INITS: tuple[str, ...] = get_args(Init)
SHARES: tuple[str, ...] = get_args(Share)


def check_share(share: str) -> str:
    if share not in SHARES:
        raise InputError(f"share must be one of {', '.join(SHARES)}; got {share!r}")
    return share


def initial_values(grid: Grid, init: str, slope: float, rows: int) -> torch.Tensor:
    """[rows, m + 1] starting values of the diagonal for `init`."""
    k = grid.num_values
    if init == "identity":
        return torch.ones(rows, k)
    if init == "random":
        return torch.rand(rows, k)  # U(0, 1), from the global (trial-seeded) generator
    if init not in ("relu", "leaky"):
        raise InputError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    z = grid.zero_index()
    if z is None:
        raise InputError(
            f"init={init!r}: 0 must be a breakpoint for an exact relu/leaky init, but grid {grid.label} "
            f"has none (use an even number of intervals on a symmetric range, add 0 to breakpoints, "
            f"or use init='identity' or 'random')"
        )
    t = torch.ones(k)
    # values[q] belongs to the interval (s_{q-1}, s_q]; q <= z lies at or left of s_z = 0.
    t[: z + 1] = 0.0 if init == "relu" else float(slope)
    return t.expand(rows, k).clone()


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))  # log(exp(y) - 1), stable for large y


class BandedTMAFBase(Activation):
    """Piecewise-constant matrix activation with 2 * bandwidth + 1 diagonals (see module docstring)."""

    trainable = True
    #: Half-width of the breakpoint relaxation's kernel, as a fraction of the (mean) interval width.
    BREAKPOINT_KERNEL_WIDTH = 1.0

    def __init__(
        self,
        num_features: int,
        grid: Grid,
        shifts: Sequence[float],
        init: str,
        slope: float,
        share: str,
        train_breakpoints: bool,
    ):
        super().__init__(num_features)
        self.grid = grid
        self.share = check_share(share)
        self.init = init
        self.train_breakpoints = bool(train_breakpoints)
        rows = self.num_features if share == "feature" else 1
        self.values = nn.Parameter(initial_values(grid, init, slope, rows))
        bandwidth = (len(shifts) - 1) // 2
        self._names, self._rows = ["values"], [0]
        for k in range(1, bandwidth + 1):
            suffix = "" if k == 1 else f"_{k}"
            for name, row in ((f"values_upper{suffix}", -k), (f"values_lower{suffix}", k)):
                # Off-diagonal values start at 0: the layer starts as its diagonal.
                self.register_parameter(name, nn.Parameter(torch.zeros(rows, grid.num_values)))
                self._names.append(name)
                self._rows.append(row)
        self.shifts = tuple(float(s) for s in shifts)
        self._init_breakpoints(rows)
        uniform = (grid.lo, grid.width) if grid.uniform and not self.train_breakpoints else None
        bump_width = self.BREAKPOINT_KERNEL_WIDTH * grid.width if self.train_breakpoints else 0.0
        self.spec = BandSpec(self.shifts, tuple(self._rows), uniform, bump_width)
        self._fixed_bp: dict[tuple[torch.device, bool], torch.Tensor] = {}
        self._fixed_grids: dict[tuple[torch.device, torch.dtype, bool], GridTensors] = {}
        # Trainable breakpoints: ((device, dtype), the breakpoints, their GridTensors) of the last call.
        self._trainable_grid: tuple[tuple[torch.device, torch.dtype, bool], torch.Tensor, GridTensors] | None = None

    @property
    def bandwidth(self) -> int:
        return (len(self._names) - 1) // 2

    def _init_breakpoints(self, rows: int) -> None:
        if not self.train_breakpoints:
            return
        bp = torch.tensor(self.grid.breakpoints, dtype=torch.float64)
        self._gap_floor = 1e-6 * self.grid.width
        gaps = (bp[1:] - bp[:-1] - self._gap_floor).clamp_min(1e-12)
        self.breakpoint_first = nn.Parameter(bp[:1].float().expand(rows, 1).clone())
        self.breakpoint_gaps = nn.Parameter(_inverse_softplus(gaps).float().expand(rows, bp.numel() - 1).clone())

    def breakpoints(self) -> torch.Tensor:
        """Current breakpoints, [Cb, m]: Cb = 1 for a fixed or shared grid, else num_features."""
        if self.train_breakpoints:
            gaps = F.softplus(self.breakpoint_gaps) + self._gap_floor
            return torch.cat([self.breakpoint_first, self.breakpoint_first + gaps.cumsum(dim=1)], dim=1)
        # One per device and mode: a tensor made under torch.inference_mode cannot be saved for backward.
        key = (self._parameters["values"].device, torch.is_inference_mode_enabled())
        if key not in self._fixed_bp:  # float64 so that comparisons with the input are exact
            self._fixed_bp[key] = torch.tensor([self.grid.breakpoints], dtype=torch.float64, device=key[0])
        return self._fixed_bp[key]

    def tables(self) -> list[torch.Tensor]:
        """Each diagonal's values, [Cf, K], in the order values, upper, lower, upper_2, ... (spec.rows)."""
        return [self._parameters[name] for name in self._names]  # (not getattr: this runs on every call)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_features(x, per_feature=self.share == "feature")
        breakpoints = self.breakpoints()
        return banded_tmaf(x, self.tables(), breakpoints, self.spec, grid=self._grid(breakpoints, x))

    def _grid(self, breakpoints: torch.Tensor, x: torch.Tensor) -> GridTensors:
        """The thresholds for x's device and dtype. A fixed grid's are built once. Trainable breakpoints'
        are rebuilt only when the breakpoints changed (about ten tensor operations and a device sync
        saved per call). The breakpoints themselves are recomputed on every call all the same (five
        small operations): they carry the autograd graph back to the parameters, and comparing them
        with the cached ones is the key. The parameters' version counters would be cheaper, but
        torch's fused optimisers (Adam(fused=True), measured with torch 2.14) update parameters
        without advancing them."""
        # Tensors made under torch.inference_mode (an evaluation) cannot be saved for a later training
        # step's backward, so each mode keeps its own tables.
        key = (x.device, x.dtype, torch.is_inference_mode_enabled())
        if self.train_breakpoints:
            values = breakpoints.detach()
            cached = self._trainable_grid
            if (cached is None or cached[0] != key or cached[1].dtype != values.dtype
                    or not torch.equal(cached[1], values)):
                cached = self._trainable_grid = (key, values.clone(), grid_tensors(values, self.spec, x.dtype))
            return cached[2]
        if key not in self._fixed_grids:
            self._fixed_grids[key] = grid_tensors(breakpoints.to(x.device), self.spec, x.dtype)
        return self._fixed_grids[key]

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, grid={self.grid.label}, bandwidth={self.bandwidth}, "
            f"init={self.init!r}, share={self.share!r}, train_breakpoints={self.train_breakpoints}"
        )


@ACTIVATIONS.register("tmaf")
class TMAF(BandedTMAFBase):
    """Diagonal TMAF (eq. 2.2-2.3): y_i = alpha_i(x_i) x_i, piecewise constant alpha_i (default grid [-5,5]/10)."""

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
    ):
        grid = Grid.from_params(lo, hi, intervals, breakpoints)
        super().__init__(num_features, grid, (0.0,), init, slope, share, train_breakpoints)

