"""The Triton kernels of triton_kernel.py (imported only where triton is installed; see there).

Element e of the flattened [N, C, S] input is (n, column, position); the thresholds of row (d, r)
are the padded row grid.thresholds[d, r] = (-inf, s_1 + shift_d, ..., s_m + shift_d, +inf).
"""

import triton
import triton.language as tl


@triton.jit
def interval(thr_ptr, base, v, valid, M, STEPS: tl.constexpr):
    """#{k < M : thr[base + 1 + k] < v}: binary lifting over the padded row (2^STEPS > M); NaN -> M."""
    q = tl.zeros(v.shape, dtype=tl.int32)
    for step in tl.static_range(STEPS):
        cand = q + (1 << (STEPS - 1 - step))
        inside = cand <= M
        t = tl.load(thr_ptr + base + cand, mask=valid & inside, other=float("inf"))
        q = tl.where(inside & (t < v), cand, q)
    return tl.where(v != v, M, q)


@triton.jit
def tmaf_forward(x_ptr, out_ptr, tab_ptr, thr_ptr, rows_ptr, total, C, S, Cf, Cb, K,
                 D: tl.constexpr, STEPS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """out[n, i, s] = sum over diagonals d (in order) of t_d[j, q_d(x[n, j, s])] x[n, j, s], j = i - r_d."""
    e = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    inb = e < total
    s = e % S
    i = (e // S) % C
    n = e // (S * C)
    M = K - 1
    acc = tl.zeros([BLOCK_SIZE], dtype=out_ptr.dtype.element_ty)
    for d in tl.static_range(D):
        r = tl.load(rows_ptr + d)
        j = i - r  # the input column that feeds row i on diagonal d
        ok = inb & (j >= 0) & (j < C)
        v = tl.load(x_ptr + (n * C + j) * S + s, mask=ok, other=0.0)
        row = tl.where(Cb > 1, j, 0)
        q = interval(thr_ptr, (d * Cb + row) * (M + 2), v, ok, M, STEPS)
        t = tl.load(tab_ptr + (d * Cf + tl.where(Cf > 1, j, 0)) * K + q, mask=ok, other=0.0)
        term = t * v
        if d == 0:
            acc = tl.where(v == 0, v, term + 0.0)  # +0 for 0 * negative; a zero input passes as is
        else:
            acc = tl.where(ok, acc + term, acc)
    tl.store(out_ptr + e, acc, mask=inb)


@triton.jit
def tmaf_backward(x_ptr, grad_ptr, gx_ptr, tab_ptr, thr_ptr, rows_ptr, gtab_ptr, total, C, S, Cf, Cb, K,
                  D: tl.constexpr, STEPS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """grad_x[n, j, s] = sum over d (in order) of t_d[j, q_d] grad[n, j + r_d, s]; the values' gradient
    gets grad[n, j + r_d, s] x[n, j, s] in float64 by atomic adds."""
    e = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    inb = e < total
    s = e % S
    j = (e // S) % C
    n = e // (S * C)
    M = K - 1
    v = tl.load(x_ptr + e, mask=inb, other=0.0)
    gx = tl.zeros([BLOCK_SIZE], dtype=gx_ptr.dtype.element_ty)
    for d in tl.static_range(D):
        r = tl.load(rows_ptr + d)
        i = j + r  # the row that column j feeds on diagonal d
        ok = inb & (i >= 0) & (i < C)
        g = tl.load(grad_ptr + (n * C + i) * S + s, mask=ok, other=0.0)
        row = tl.where(Cb > 1, j, 0)
        q = interval(thr_ptr, (d * Cb + row) * (M + 2), v, ok, M, STEPS)
        entry = (d * Cf + tl.where(Cf > 1, j, 0)) * K + q
        term = tl.load(tab_ptr + entry, mask=ok, other=0.0) * g
        if d == 0:
            gx = term
        else:
            gx = tl.where(ok, gx + term, gx)
        tl.atomic_add(gtab_ptr + entry, g.to(tl.float64) * v.to(tl.float64), mask=ok)
    tl.store(gx_ptr + e, gx, mask=inb)
