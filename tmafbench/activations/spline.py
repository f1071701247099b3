"""A KAN-style spline activation (after Liu et al. 2024, "KAN: Kolmogorov-Arnold Networks", and
the efficient-kan implementation): w_b silu(x) + w_s sum_i c_i B_i(x).

B_i are the cubic B-splines on a uniform grid of G intervals over [left, right], extended by
k = 3 knots on each side (knots t_j = left + (j - 3) h, j = 0..G + 6, h = (right - left) / G), so
there are G + 3 of them and together they sum to 1 on [left, right]; outside [t_0, t_{G+6}] the
spline part is 0 and only w_b silu(x) remains.

Here the function sits on each feature (neuron or channel), not on each edge of a KAN: a layer
has C of them, with coefficients [C, G + 3] and weights w_b, w_s [C] (or one set with
share="layer"). The grid is fixed (KAN's grid refinement is not implemented).

Evaluation is local: on knot cell m (t_m <= x < t_{m+1}, local t = (x - t_m) / h) only B_{m-3}..B_m
are non-zero, with the uniform cubic B-spline pieces (1-t)^3/6, (3t^3 - 6t^2 + 4)/6,
(-3t^3 + 3t^2 + 3t + 1)/6 and t^3/6. So each cell is one cubic in t, and the layer evaluates one
table lookup and one Horner step per element instead of G + 3 basis functions.

Initialisation, as in KAN: w_b = w_s = 1 and small random coefficients, c_i ~ U(-1/2, 1/2) *
noise / G (noise = 0.1, the scale efficient-kan's noise draw has), so the unit starts as SiLU plus
a small random spline; noise = 0 starts it as SiLU exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tmafbench.registries import ACTIVATIONS
from tmafbench.activations.base import Activation, Share, feature_view
from tmafbench.activations.compiled import Compiled
from tmafbench.activations.piecewise import PolynomialLookup, flat_rows, uniform_cells
from tmafbench.activations.tmaf import check_share
from tmafbench.errors import InputError

ORDER = 3  # cubic

#: Power-basis coefficients (t^0..t^3) of the four uniform cubic B-spline pieces, B_{m-3}..B_m.
CUBIC_PIECES = torch.tensor([
    [1.0, -3.0, 3.0, -1.0],
    [4.0, 0.0, -6.0, 3.0],
    [1.0, 3.0, 3.0, -3.0],
    [0.0, 0.0, 0.0, 1.0],
], dtype=torch.float64) / 6.0


def cell_polynomials(coefficients: torch.Tensor, spline_weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[Cp, G + 8, 4]: w_s times the cubic (in local t) on each knot cell, a zero cell at each end."""
    c = coefficients.to(dtype)
    padded = F.pad(c, (ORDER, ORDER))  # [Cp, G + 9]: the bases that do not exist are 0
    windows = padded.unfold(1, ORDER + 1, 1)  # [Cp, G + 6, 4]: cell m uses c_{m-3}..c_m
    cubics = windows @ CUBIC_PIECES.to(device=c.device, dtype=dtype)  # [Cp, G + 6, 4] in t^0..t^3
    cubics = cubics * spline_weight.to(dtype)[:, None, None]
    return F.pad(cubics, (0, 0, 1, 1))  # nothing left of t_0 or right of t_{G+6}


def _cells(x: torch.Tensor, rows: int, segments: int, start: float, inv_h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, index): the local coordinate of x in its knot cell and the flat table row of that cell."""
    cells = segments - 2  # G + 2k knot cells
    lo = torch.full((rows,), start, dtype=x.dtype, device=x.device)
    u, cell = uniform_cells(x, lo, torch.full_like(lo, inv_h), cells)
    t = u - cell.clamp(0, cells)  # local coordinate in the cell (any value in the zero end cells)
    return t, flat_rows(cell, rows, segments)


#: CUBIC_PIECES as Python numbers: constants in the compiled graph.
_PIECES = CUBIC_PIECES.tolist()


def kan_function(x: torch.Tensor, coefficients: torch.Tensor, base_weight: torch.Tensor, spline_weight: torch.Tensor,
                 start: float, inv_h: float) -> torch.Tensor:
    """The spline activation as dense elementwise operations, for torch.compile; `coefficients` come
    basis-major, [G + 3, Cp]. Each element evaluates the four cubic pieces of its knot cell once and
    picks, for every basis function, the piece that covers the cell (or 0): no gather, and no
    scatter in the backward, whose per-feature sums inductor fuses into one loop. (The form with a
    gather of each element's cubic, as the eager path computes it, compiled to a per-element
    scatter-add for the coefficients' gradient: 4.0 / 8.5 / 4.2x PReLU against 3.3 / 6.0 / 2.5x
    here, on [20000, 20], [256, 512], [32, 64, 32, 32].) Same values as the eager path up to rounding."""
    n_basis = coefficients.shape[0]
    cells = n_basis + ORDER  # G + 6 knot cells
    u = (x - start) * inv_h
    cell = u.detach().floor().clamp(-1, cells)
    t = u - cell.clamp(0, cells)
    pieces = [((p[3] * t + p[2]) * t + p[1]) * t + p[0] for p in _PIECES]  # B_{m-3}..B_m on cell m
    spline = None
    for i in range(n_basis):
        r = i + ORDER - cell  # B_i covers cell m with its piece r = i - m + 3, when 0 <= r <= 3
        b = torch.where(r == 0, pieces[0], torch.where(r == 1, pieces[1], torch.where(
            r == 2, pieces[2], torch.where(r == 3, pieces[3], 0.0))))
        term = feature_view(coefficients[i].to(x.dtype), x) * b
        spline = term if spline is None else spline + term
    return (spline * feature_view(spline_weight.to(x.dtype), x)
            + F.silu(x) * feature_view(base_weight.to(x.dtype), x))


_KAN = Compiled(kan_function, "kan-spline")


@ACTIVATIONS.register("kan-spline")
class KANSpline(Activation):
    """KAN-style spline (Liu et al. 2024; efficient-kan): w_b silu(x) + w_s sum_i c_i B_i(x), cubic
    B-splines on `grid_size` intervals of [left, right] plus 3 knots each side; per feature, not per edge."""

    trainable = True
    #: Compiled only with TMAFBENCH_COMPILE=on: it stays above 3x PReLU on MLP shapes and compiles
    #: in about a minute per graph here (README).
    compile_by_default = False

    def __init__(self, num_features: int, grid_size: int = 5, left: float = -1.0, right: float = 1.0,
                 noise: float = 0.1, share: Share = "feature"):
        super().__init__(num_features)
        self.share = check_share(share)
        if int(grid_size) < 1:
            raise InputError(f"kan-spline grid_size must be >= 1, got {grid_size}")
        if not float(left) < float(right):
            raise InputError(f"kan-spline needs left < right, got left={left}, right={right}")
        self.grid_size, self.left, self.right = int(grid_size), float(left), float(right)
        rows = self.num_features if share == "feature" else 1
        noise_draw = torch.rand(rows, self.grid_size + ORDER) - 0.5  # global (trial-seeded) generator
        self.coefficients = nn.Parameter(noise_draw * (float(noise) / self.grid_size))  # c_i
        self.base_weight = nn.Parameter(torch.ones(rows))  # w_b
        self.spline_weight = nn.Parameter(torch.ones(rows))  # w_s

    @property
    def h(self) -> float:
        return (self.right - self.left) / self.grid_size

    def cell_polynomials(self, dtype: torch.dtype) -> torch.Tensor:
        """[Cp, G + 8, 4]: w_s times the cubic (in local t) on each knot cell, a zero cell at each end."""
        return cell_polynomials(self.coefficients, self.spline_weight, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_features(x, per_feature=self.share == "feature")
        start, inv_h = self.left - ORDER * self.h, 1.0 / self.h
        if _KAN.enabled(self.compile_by_default, x):
            return _KAN(self.compile_by_default, x, self.coefficients.t().contiguous(), self.base_weight,
                        self.spline_weight, start, inv_h)
        table = self.cell_polynomials(x.dtype)
        t, index = _cells(x, table.shape[0], table.shape[1], start, inv_h)
        spline = PolynomialLookup.apply(t.reshape(-1), index.reshape(-1), table.reshape(-1, ORDER + 1)).view(x.shape)
        return torch.addcmul(spline, F.silu(x), feature_view(self.base_weight.to(x.dtype), x))

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, range=[{self.left}, {self.right}], share={self.share!r}"
