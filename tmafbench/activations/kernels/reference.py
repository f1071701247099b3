"""Portable PyTorch implementation of banded TMAF (any device, any float dtype).

It is the fallback when the native CPU kernel is unavailable (no C compiler, CUDA, half
precision) and the oracle the native kernel is tested against. Like the native kernel it saves
only the input for backward and recomputes the interval index; the values' gradient is one
`index_add_` per diagonal on a flat (feature * K + index) index, never a one-hot tensor.
Comparisons happen in the input's dtype (the native kernel compares in double).
"""

from __future__ import annotations

import torch

from tmafbench.activations.kernels.spec import BandSpec


def _bucket(x3: torch.Tensor, bp: torch.Tensor) -> torch.Tensor:
    """Interval index (int64, [N, C, S]) with right-closed intervals: #{k : s_k < x}."""
    n, c, s = x3.shape
    if bp.shape[0] == 1:
        return torch.bucketize(x3, bp[0], right=False)
    # Per-feature breakpoints [C, m]: searchsorted wants the feature axis first.
    rows = x3.transpose(0, 1).reshape(c, n * s).contiguous()
    return torch.searchsorted(bp, rows, right=False).view(c, n, s).transpose(0, 1)


def _flat(idx: torch.Tensor, cf: int, k: int) -> torch.Tensor:
    """Index into the flattened [Cf, K] table: feature * K + interval."""
    if cf == 1:
        return idx
    offs = torch.arange(cf, device=idx.device).mul_(k).view(1, cf, 1)
    return idx + offs


def _shift_rows(t: torch.Tensor, r: int) -> torch.Tensor:
    """out[:, j + r] = t[:, j] (zero-filled): column j feeds row j + r."""
    if r == 0:
        return t
    out = torch.zeros_like(t)
    if r > 0:
        out[:, r:] = t[:, :-r]
    else:
        out[:, :r] = t[:, -r:]
    return out


def _diag_grids(bp: torch.Tensor, spec: BandSpec, dtype: torch.dtype) -> list[torch.Tensor]:
    return [(bp.detach().double() + sh).to(dtype).contiguous() for sh in spec.shifts]


class ReferenceBandedTMAF(torch.autograd.Function):
    """out = sum_d shift_rows(tables[d][c, idx_d(x)] * x, rows[d])."""

    @staticmethod
    def forward(ctx, x3, tables, bp, spec: BandSpec):  # x3 [N,C,S], tables [D,Cf,K], bp [Cb,m]
        ctx.spec = spec
        ctx.save_for_backward(x3, tables, bp)
        _, cf, k = tables.shape
        out = None
        for d, grid in enumerate(_diag_grids(bp, spec, x3.dtype)):
            alpha = tables[d].reshape(-1)[_flat(_bucket(x3, grid), cf, k)]
            term = _shift_rows(alpha.mul_(x3), spec.rows[d])
            if out is None:  # main diagonal, like relu: +0 for 0 * (x < 0); a zero x passes as is
                out = torch.where(x3 == 0, x3, term.add_(0.0))
            else:
                out.add_(term)
        return out

    @staticmethod
    def backward(ctx, grad):
        x3, tables, bp = ctx.saved_tensors
        spec: BandSpec = ctx.spec
        grad = grad.contiguous()
        _, cf, k = tables.shape
        gx = torch.zeros_like(x3) if ctx.needs_input_grad[0] else None
        gtab = torch.zeros_like(tables)
        want_bp = ctx.needs_input_grad[2] and spec.inv_tau > 0
        gbp = torch.zeros(bp.shape, dtype=torch.float64, device=bp.device) if want_bp else None
        for d, grid in enumerate(_diag_grids(bp, spec, x3.dtype)):
            g = _shift_rows(grad, -spec.rows[d])  # grad of the row that column j feeds, at j
            idx = _bucket(x3, grid)
            flat = _flat(idx, cf, k)
            table = tables[d].reshape(-1)
            if gx is not None:
                gx.add_(table[flat] * g)
            gv = g * x3
            gtab[d].view(-1).index_add_(0, flat.reshape(-1), gv.reshape(-1))
            if gbp is not None:
                _relaxed_breakpoint_grad(gbp, gv, x3, idx, flat, table, grid, spec.inv_tau)
        return gx, gtab, (gbp.to(bp.dtype) if gbp is not None else None), None


def _relaxed_breakpoint_grad(gbp, gv, x3, idx, flat, table, grid, inv_tau) -> None:
    """Add -sum gv * jump_q * bump(x - s_q) for the breakpoints q bounding each x (see tmaf.py)."""
    m = grid.shape[1]
    c = x3.shape[1]
    per_feature = grid.shape[0] != 1
    for side in (0, 1):  # 0: breakpoint left of x (q = idx - 1), 1: right of x (q = idx)
        q = idx - 1 + side
        ok = (q >= 0) & (q < m)
        qc = q.clamp(0, m - 1)
        fq = flat - idx + qc  # table index of the value left of breakpoint q
        jump = table[(fq + 1).clamp(max=table.numel() - 1)] - table[fq]
        if per_feature:
            bflat = qc + torch.arange(c, device=x3.device).view(1, c, 1) * m
            s = grid.reshape(-1)[bflat]
        else:
            bflat, s = qc, grid[0][qc]
        u = (x3 - s).double().abs() * inv_tau
        e = torch.exp(-u)
        bump = e / (1 + e) ** 2 * inv_tau
        contrib = torch.where(ok, -(gv.double() * jump.double() * bump), 0.0)
        gbp.view(-1).index_add_(0, bflat.reshape(-1), contrib.reshape(-1))
