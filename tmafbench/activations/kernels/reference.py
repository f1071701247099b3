"""Portable PyTorch implementation of banded TMAF (any device, any float dtype).

It is the fallback when the native CPU kernel is unavailable (no compiler, CUDA, half precision)
and the oracle the native kernel is tested against: on the CPU both give the same bits, outputs and
gradients alike. It follows the definition in tmaf_cpu.cpp step by step:
- interval indices by bucketize/searchsorted against the thresholds of spec.GridTensors (exact);
- each diagonal's term added in diagonal order, columns that point outside [0, C) left out;
- the values' and breakpoints' gradients summed in float64 in the fixed order of spec.py: one
  `index_add_` per diagonal into per-(chunk, lane) slots (on the CPU a 1-D index_add_ adds its
  source in index order; tests/activations check that), then the lanes and chunks in order.
On CUDA the slots are filled with atomic adds, so the gradients' last bits can vary between runs.
Like the native kernel it saves only the input (and the small tables) for backward.
"""

from __future__ import annotations

import torch

from tmafbench.activations.kernels.spec import LANES, BandSpec, GridTensors, chunk_samples


def bucket(x3: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Interval index (int64, [N, C, S]) = #{k : thr_k < x}; thresholds [Cb, m + 2] padded with -inf, +inf."""
    thr = thresholds[:, 1:-1]
    n, c, s = x3.shape
    if thr.shape[0] == 1:
        return torch.bucketize(x3, thr[0].contiguous(), right=False)
    # Per-feature thresholds [C, m]: searchsorted wants the feature axis first.
    rows = x3.transpose(0, 1).reshape(c, n * s).contiguous()
    # Back to [N, C, S], contiguous: the gradients computed from it must have x's memory layout
    # (PyTorch's convolutions sum in another order for other strides).
    return torch.searchsorted(thr.contiguous(), rows, right=False).view(c, n, s).transpose(0, 1).contiguous()


def columns(r: int, c: int) -> tuple[int, int]:
    """Columns j whose row j + r exists: range(j0, j1)."""
    return max(0, -r), min(c, c - r)


def feature_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Flat index into a [Cf, K] table for interval indices idx [N, C, S]: feature * K + interval."""
    cf, k = table.shape
    if cf == 1:
        return idx
    return idx + torch.arange(cf, device=idx.device).mul_(k).view(1, cf, 1)


class ReferenceBandedTMAF(torch.autograd.Function):
    """out[:, j + r_d] += tables[d][j, idx_d(x_j)] * x_j for each diagonal d, in order.

    apply(x [N, C, *S], breakpoints [Cb, m], grid, spec, *tables): one [Cf, K] table per diagonal."""

    @staticmethod
    def forward(ctx, x, bp, grid: GridTensors, spec: BandSpec, *tables):
        x3 = x.reshape(x.shape[0], x.shape[1], -1).contiguous()  # [N, C, S]
        tab = torch.stack(tables).to(x.dtype)  # [D, Cf, K]
        c = x3.shape[1]
        out = None
        for d, r in enumerate(spec.rows):
            table = tab[d]
            term = table.reshape(-1)[feature_rows(table, bucket(x3, grid.thresholds[d]))].mul_(x3)
            if d == 0:  # like relu: +0 for 0 * (x < 0); a zero x passes as is
                out = torch.where(x3 == 0, x3, term.add_(0.0))
            else:
                j0, j1 = columns(r, c)
                out[:, j0 + r:j1 + r] += term[:, j0:j1]
        ctx.save_for_backward(x3, tab, bp)
        ctx.grid, ctx.spec, ctx.dtypes = grid, spec, [t.dtype for t in tables]
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        x3, tables, bp = ctx.saved_tensors
        grid: GridTensors = ctx.grid
        spec: BandSpec = ctx.spec
        n, c, s = x3.shape
        d_count, cf, k = tables.shape
        entries = tables.numel()
        sums = OrderedSums(n, c, s, chunk_samples(n, c * s, entries), x3.device)
        want_bp = ctx.needs_input_grad[1] and spec.bump_width > 0
        tab_slots = sums.slots(entries)
        bp_slots = sums.slots(bp.numel()) if want_bp else None
        shape = grad.shape  # the output's, which is x's
        grad = grad.reshape(x3.shape).contiguous()
        x64 = x3.double()
        gx = None
        for d, r in enumerate(spec.rows):
            j0, j1 = columns(r, c)
            table = tables[d]
            idx = bucket(x3, grid.thresholds[d])
            rows = feature_rows(table, idx)[:, j0:j1]  # [N, Cv, S]: the valid columns only
            idx = idx[:, j0:j1]
            g = grad[:, j0 + r:j1 + r]  # the gradient of the row that column j feeds
            term = table.reshape(-1)[rows] * g
            if d == 0:
                gx = term
            else:
                gx[:, j0:j1] += term
            gv = g.double() * x64[:, j0:j1]
            sums.add(tab_slots, entries, j0, j1, d * cf * k + rows, gv)
            if want_bp:
                _breakpoint_terms(sums, bp_slots, bp.numel(), j0, j1, d, idx, rows, table, gv, x64, grid, spec)
        gtab = sums.total(tab_slots, entries).to(tables.dtype).view(tables.shape)
        gbp = sums.total(bp_slots, bp.numel()).to(bp.dtype).view(bp.shape) if want_bp else None
        return (gx.view(shape), gbp, None, None, *(gtab[d].to(dtype) for d, dtype in enumerate(ctx.dtypes)))


class OrderedSums:
    """Float64 sums in the fixed order of spec.py: per (chunk, lane) slot, then lanes, then chunks."""

    def __init__(self, n: int, c: int, s: int, chunk: int, device: torch.device):
        self.chunks = -(-n // chunk)
        chunk_of = torch.arange(n, device=device).div_(chunk, rounding_mode="floor").view(n, 1, 1)
        lane_of = (torch.arange(c * s, device=device) % LANES).view(1, c, s)
        self.slot = chunk_of * LANES + lane_of  # [N, C, S]

    def slots(self, entries: int) -> torch.Tensor:
        return torch.zeros(self.chunks * LANES * entries, dtype=torch.float64, device=self.slot.device)

    def add(self, slots: torch.Tensor, entries: int, j0: int, j1: int, entry: torch.Tensor, values: torch.Tensor) -> None:
        """Add values[..] at entry[..] (both [N, Cv, S, *extra], columns j0..j1-1), in row-major order."""
        slot = self.slot[:, j0:j1]
        while slot.dim() < entry.dim():
            slot = slot.unsqueeze(-1)
        slots.index_add_(0, (slot * entries + entry).reshape(-1), values.reshape(-1))

    def total(self, slots: torch.Tensor, entries: int) -> torch.Tensor:
        lanes = slots.view(self.chunks, LANES, entries)
        per_chunk = lanes[:, 0].clone()
        for lane in range(1, LANES):
            per_chunk += lanes[:, lane]
        total = torch.zeros(entries, dtype=torch.float64, device=slots.device)
        for i in range(self.chunks):
            total += per_chunk[i]
        return total


def _breakpoint_terms(sums, slots, entries, j0, j1, d, idx, rows, table, gv, x64, grid, spec) -> None:
    """The relaxed gradient of the breakpoints on both sides of each input (tmaf.py):
    -(g x) (t_{k+1} - t_k) kernel(x - position_k), for k = idx - 1 (left) and k = idx (right)."""
    m = grid.positions.shape[2]
    flat = table.reshape(-1)
    per_feature = grid.positions.shape[1] != 1
    inv_a, kc = spec.bump
    terms, keys = [], []
    row = torch.arange(j0, j1, device=idx.device).view(1, -1, 1) * m if per_feature else 0
    for k in (idx - 1, idx):  # left, then right breakpoint of each input
        ok = (k >= 0) & (k < m)
        kk = k.clamp(0, m - 1)
        left = rows - idx + kk  # table index of the value left of breakpoint kk
        jump = (flat[left + 1] - flat[left]).double()
        key = row + kk
        z = (x64[:, j0:j1] - grid.positions[d].reshape(-1)[key]) * inv_a
        w = 1 - z * z
        bump = torch.where(z.abs() < 1, (kc * w) * w, 0.0)
        terms.append(torch.where(ok, -((gv * jump) * bump), 0.0))
        keys.append(torch.where(ok, key, -1))
    term, key = torch.stack(terms, dim=-1), torch.stack(keys, dim=-1)  # [N, Cv, S, 2]
    valid = key >= 0
    slot = sums.slot[:, j0:j1].unsqueeze(-1).expand_as(key)
    slots.index_add_(0, (slot * entries + key)[valid], term[valid])
