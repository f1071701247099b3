"""Piecewise linear trainable activations: APL (Agostinelli et al. 2015) and PWLU (Zhou et al. 2021).

Both keep one set of parameters per feature (dimension 1 of [N, C] or [N, C, *S]), or one set for
the layer with share="layer". `uniform_cells` is the cell lookup that PWLU and the spline
activation (spline.py) share: a per-feature uniform grid, located by arithmetic, never by search.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from tmafbench.registries import ACTIVATIONS
from tmafbench.activations.base import Activation, Share, feature_view, sum_over_samples
from tmafbench.activations.compiled import Compiled
from tmafbench.activations.tmaf import check_share
from tmafbench.errors import InputError

#: APL starting points: the paper's random slopes and hinges, or slopes 0 (exactly ReLU).
APLInit = Literal["paper", "relu"]


def flat_rows(cell: torch.Tensor, rows: int, segments: int) -> torch.Tensor:
    """Cell numbers -1..segments-2 (float, [N, C, *S]) -> int32 rows of a [rows * segments, P] table.

    Row (feature c, cell k) is c * segments + k + 1: segment 0 is left of the grid. A NaN input
    lands on row 0 (its output is NaN anyway) instead of indexing out of range.
    """
    if rows * segments >= 2**24:  # beyond this float32 no longer holds every row number exactly
        raise ValueError(f"table of {rows} x {segments} segments is too large for the cell lookup")
    offset = torch.arange(rows, device=cell.device, dtype=cell.dtype).mul_(segments).add_(1.0)
    index = (cell + feature_view(offset, cell)).to(torch.int32)
    return index.clamp_(0, rows * segments - 1)


def uniform_cells(x: torch.Tensor, lo: torch.Tensor, inv_width: torch.Tensor, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, cell): u = (x - lo) * inv_width in cell units, cell = floor(u) clamped to -1..cells.

    x [N, C, *S]; lo, inv_width [Cp] (detached or not: cell carries no gradient). Cell -1 is left
    of the grid, `cells` right of it.
    """
    u = (x - feature_view(lo, x)) * feature_view(inv_width, x)
    return u, u.detach().floor().clamp_(-1, cells)


class PolynomialLookup(torch.autograd.Function):
    """out = sum_p table[index, p] * t^p: a per-element polynomial whose coefficients are a table row.

    t [M] (any float), index [M] int32 rows of table [R, P]. Saves t and the int32 index only. The
    table's gradient is one weighted `bincount` per column (a single pass each, unlike
    index_add_ on a multi-column table, which was 20x slower here).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, index: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(t, index, table)
        picked = table.index_select(0, index)  # [M, P]
        out = picked[:, -1]
        for p in range(table.shape[1] - 2, -1, -1):
            out = torch.addcmul(picked[:, p], out, t)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        t, index, table = ctx.saved_tensors
        rows, order = table.shape
        grad_t = grad_table = None
        if ctx.needs_input_grad[0] and order > 1:
            picked = table.index_select(0, index)
            slope = picked[:, -1] * (order - 1)  # d/dt by Horner: sum_p p c_p t^(p-1)
            for p in range(order - 2, 0, -1):
                slope = torch.addcmul(picked[:, p] * p, slope, t)
            grad_t = grad * slope
        if ctx.needs_input_grad[2]:
            columns, weight = [], grad
            for p in range(order):
                columns.append(torch.bincount(index, weights=weight, minlength=rows))
                if p + 1 < order:
                    weight = weight * t
            grad_table = torch.stack(columns, dim=1).to(table.dtype)
        return grad_t, None, grad_table


class _APLFunction(torch.autograd.Function):
    """max(0, x) + sum_s a_s max(0, b_s - x), hinge by hinge in place; saves x only.

    With m_s = [x < b_s]: d y / d x = [x > 0] - sum_s a_s m_s, d y / d a_s = (b_s - x) m_s and
    d y / d b_s = a_s m_s, so each hinge's parameter gradients come from two per-feature sums,
    G1_s = sum g m_s and G2_s = sum g x m_s (d a_s = b_s G1_s - G2_s, d b_s = a_s G1_s). A loop over
    the S hinges of in-place passes, against one [N, C, *S, S] tensor through autograd: 6x instead
    of 12x PReLU's time on [4096, 1024] and 5x instead of 12x on [128, 64, 32, 32] (7x instead of
    6x on [20000, 20]), with x the only tensor saved instead of five times its size.

    The parameters come hinge-major, a and b [S, Cp], so that each hinge's values are one
    feature-contiguous row: compiled, inductor then vectorises every loop across the features (with
    [Cp, S] it read them with stride S and wrote scalar code: 7x PReLU on [256, 512]).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, a, b)
        out = torch.relu(x)
        for s in range(a.shape[0]):
            bs = feature_view(b[s], x)  # [1, Cp, 1..]
            out.addcmul_(torch.sub(bs, x).clamp_min_(0.0), feature_view(a[s], x))  # a_s = 0 adds exact zeros
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, a, b = ctx.saved_tensors
        rows = a.shape[1]
        grad_x = grad.masked_fill(x <= 0, 0.0)
        g1, g2 = [], []
        for s in range(a.shape[0]):
            g_in = grad.masked_fill(x >= feature_view(b[s], x), 0.0)  # g m_s
            g1.append(sum_over_samples(g_in, rows))
            g2.append(sum_over_samples(g_in * x, rows))
            grad_x.addcmul_(g_in, feature_view(a[s], x), value=-1.0)
        g1, g2 = torch.stack(g1), torch.stack(g2)  # [S, Cp]
        return grad_x, b * g1 - g2, a * g1


def apl_function(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """APL of x with hinge-major slopes a and hinges b [S, Cp], through _APLFunction, eagerly or
    compiled. Compiled, inductor fuses its forward into one loop and its backward (the 2 S
    per-feature sums included) into one more, and still saves only x: the same function in plain
    operations made it save a boolean mask per hinge, which inductor's CPU code stores element by
    element (15x slower)."""
    return _APLFunction.apply(x, a.to(x.dtype), b.to(x.dtype))


_APL = Compiled(apl_function, "apl")


@ACTIVATIONS.register("apl")
class APL(Activation):
    """Adaptive piecewise linear unit (Agostinelli et al. 2015): max(0, x) + sum_s a_s max(0, b_s - x).

    S = `hinges` per feature. init="paper" draws the slopes a_s ~ U(-0.2, 0.2) and the hinges
    b_s ~ N(0, 0.5^2), as the authors' released code does; init="relu" keeps those hinges but sets
    every a_s = 0, which is ReLU bit for bit until the first update.
    """

    trainable = True
    #: TMAFBENCH_COMPILE=auto compiles it (activations/compiled.py): measured to pay, README.
    compile_by_default = True

    def __init__(self, num_features: int, hinges: int = 5, init: APLInit = "paper", share: Share = "feature"):
        super().__init__(num_features)
        self.share = check_share(share)
        if int(hinges) < 1:
            raise InputError(f"apl hinges must be >= 1, got {hinges}")
        if init not in ("paper", "relu"):
            raise InputError(f"unknown apl init {init!r}; choose one of: paper, relu")
        self.init = init
        rows = self.num_features if share == "feature" else 1
        # From the global (trial-seeded) generator, like the network's weights.
        slopes = torch.empty(rows, int(hinges)).uniform_(-0.2, 0.2)
        self.slopes = nn.Parameter(slopes if init == "paper" else torch.zeros_like(slopes))  # a_s
        self.hinges = nn.Parameter(torch.randn(rows, int(hinges)) * 0.5)  # b_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_features(x, per_feature=self.share == "feature")
        # Hinge-major copies, made before (outside) the compiled region: inside it, inductor would
        # fuse the copy away and read [Cp, S] with stride S again.
        return _APL(self.compile_by_default, x, self.slopes.t().contiguous(), self.hinges.t().contiguous())

    def extra_repr(self) -> str:
        return f"hinges={self.slopes.shape[1]}, init={self.init!r}, share={self.share!r}"


@ACTIVATIONS.register("pwlu")
class PWLU(Activation):
    """Piecewise linear unit (Zhou, Zhu and Zhong, ICCV 2021): linear between trainable values at
    `pieces` + 1 uniform points of a trainable range [left, right], trainable slopes outside it.

    With B_i = left + (i / N) (right - left) and values Y_0..Y_N:
    f(x) = Y_0 + K_l (x - B_0) for x < B_0; Y_N + K_r (x - B_N) for x >= B_N; linear in between.
    It starts as ReLU (Y_i = relu(B_i), K_l = 0, K_r = 1): bit for bit when 0 is one of the B_i
    (an even N on a symmetric range, like the default 16 pieces on [-3, 3]).

    align=True is the paper's statistics-based realignment: for the first `align_steps` training
    batches the unit stays as it is (its parameters get no gradient) while it tracks the input's
    per-feature mean and standard deviation (exponential average, momentum 0.9, started from the
    first batch); on the next training batch it resets to ReLU on [mean - 3 std, mean + 3 std]
    and trains from there. The paper counts the first phase in epochs (5); a layer sees batches,
    so it is counted in batches here.
    """

    trainable = True
    MOMENTUM = 0.9  # of the running statistics, as in the paper
    SIGMAS = 3.0  # half-width of the realigned range, in standard deviations
    MIN_STD = 1e-3  # floor of the realigned half-width / SIGMAS (a constant feature has std 0)

    def __init__(self, num_features: int, pieces: int = 16, left: float = -3.0, right: float = 3.0,
                 align: bool = False, align_steps: int = 100, share: Share = "feature"):
        super().__init__(num_features)
        self.share = check_share(share)
        if int(pieces) < 1:
            raise InputError(f"pwlu pieces must be >= 1, got {pieces}")
        if not float(left) < float(right):
            raise InputError(f"pwlu needs left < right, got left={left}, right={right}")
        if int(align_steps) < 1:
            raise InputError(f"pwlu align_steps must be >= 1, got {align_steps}")
        self.pieces, self.align, self.align_steps = int(pieces), bool(align), int(align_steps)
        rows = self.num_features if share == "feature" else 1
        self.left = nn.Parameter(torch.full((rows,), float(left)))
        self.right = nn.Parameter(torch.full((rows,), float(right)))
        self.values = nn.Parameter(torch.zeros(rows, self.pieces + 1))  # Y_0..Y_N
        self.slope_left = nn.Parameter(torch.zeros(rows))  # K_l
        self.slope_right = nn.Parameter(torch.ones(rows))  # K_r
        self.reset_to_relu(self.left.detach(), self.right.detach())
        if self.align:
            self.register_buffer("running_mean", torch.zeros(rows))
            self.register_buffer("running_std", torch.zeros(rows))
            self.register_buffer("align_step", torch.zeros((), dtype=torch.long))  # phase-one batches seen

    @torch.no_grad()
    def reset_to_relu(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """Range [left, right] ([Cp] each), Y_i = relu(B_i), slopes 0 and 1."""
        self.left.copy_(left)
        self.right.copy_(right)
        self.values.copy_(torch.relu(self.breakpoints(torch.float32)))
        self.slope_left.zero_()
        self.slope_right.fill_(1.0)

    def breakpoints(self, dtype: torch.dtype) -> torch.Tensor:
        """B_i = (i / N) * (right - left) + left, [Cp, N + 1], in `dtype` (the lookup uses the same formula)."""
        left, right = self.left.to(dtype), self.right.to(dtype)
        frac = torch.arange(self.pieces + 1, device=left.device, dtype=dtype) / self.pieces
        return frac * (right - left)[:, None] + left[:, None]

    def segments(self, dtype: torch.dtype) -> torch.Tensor:
        """[Cp, N + 2, 2]: (intercept, slope) in x of each segment, left extension first."""
        bp, y = self.breakpoints(dtype), self.values.to(dtype)
        inner = (y[:, 1:] - y[:, :-1]) / (bp[:, 1:] - bp[:, :-1])  # [Cp, N]
        slopes = torch.cat([self.slope_left.to(dtype)[:, None], inner, self.slope_right.to(dtype)[:, None]], dim=1)
        origin = torch.cat([bp[:, :1], bp[:, :-1], bp[:, -1:]], dim=1)  # each segment's anchor point
        anchor = torch.cat([y[:, :1], y[:, :-1], y[:, -1:]], dim=1)
        return torch.stack([anchor - slopes * origin, slopes], dim=-1)

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """Cell k of x (B_k <= x < B_{k+1}; -1 left of B_0, N from B_N on), exact at the breakpoints."""
        n = self.pieces
        left = self.left.detach().to(x.dtype)
        width = self.right.detach().to(x.dtype) - left
        _, cell = uniform_cells(x, left, n / width, n)
        # Rounding in u can put x one cell off next to a breakpoint; compare with the breakpoints
        # themselves (same formula as `breakpoints`), so that e.g. relu's kink at 0 is exact.
        w, lo = feature_view(width, x), feature_view(left, x)
        cell.sub_((x < (cell / n).mul_(w).add_(lo)).to(x.dtype))
        cell.add_((x >= ((cell + 1.0) / n).mul_(w).add_(lo)).to(x.dtype))
        return cell.clamp_(-1, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_features(x, per_feature=self.share == "feature")
        frozen = self.align and self.training and self._phase_one(x)
        table = self.segments(x.dtype)
        if frozen:
            table = table.detach()  # phase one: the unit does not learn yet
        rows, segments = table.shape[0], table.shape[1]
        index = flat_rows(self.cells(x), rows, segments)
        # intercept + slope * x with the segment's (intercept, slope)
        return PolynomialLookup.apply(x.reshape(-1), index.reshape(-1), table.reshape(-1, 2)).view(x.shape)

    @torch.no_grad()
    def _phase_one(self, x: torch.Tensor) -> bool:
        """Track the input statistics while in phase one; realign when it ends. True while in phase one."""
        step = int(self.align_step)
        if step > self.align_steps:
            return False
        if step == self.align_steps:  # phase one is over: realign once, then learn
            std = self.running_std.clamp_min(self.MIN_STD)
            self.reset_to_relu(self.running_mean - self.SIGMAS * std, self.running_mean + self.SIGMAS * std)
            self.align_step.fill_(step + 1)
            return False
        dims = [0, *range(2, x.dim())] if self.share == "feature" else list(range(x.dim()))
        mean = x.mean(dim=dims).float().reshape(-1)
        std = x.std(dim=dims, correction=0).float().reshape(-1)
        if step == 0:
            self.running_mean.copy_(mean)
            self.running_std.copy_(std)
        else:
            self.running_mean.lerp_(mean, 1 - self.MOMENTUM)
            self.running_std.lerp_(std, 1 - self.MOMENTUM)
        self.align_step.fill_(step + 1)
        return True

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}, align={self.align}, share={self.share!r}"
