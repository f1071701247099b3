"""A Triton kernel for banded TMAF (diagonal, tri-diagonal, any bandwidth): the GPU path.

On CUDA tensors, when triton is installed, `banded_tmaf` (kernels/__init__.py) runs this kernel
instead of the PyTorch reference: one pass over the input forward and one backward, with the
input as the only tensor saved. It computes the definition of spec.py and reference.py step by step:
- the interval index is the count of thresholds below the input (thresholds: spec.GridTensors,
  rounded down to the input dtype, so the comparison is exact), found by a branch-free binary
  search of ceil(log2(m + 1)) steps over the row; NaN lands in the last interval;
- the output adds each diagonal's term in diagonal order (the main diagonal's `t v + 0`, a zero
  input passed through, then `out + t v` for each off-diagonal whose column exists), and grad_x
  the same way, with multiply and add kept separate (no fused multiply-add: enable_fp_fusion=False);
- the values' gradient is summed in float64 by atomic adds and rounded to the table's dtype.
So outputs and grad_x are the reference's bits; the values' gradient is the same float64 sum in
another order (atomics), which can move its last bit. Trainable breakpoints (the relaxed
breakpoint gradient) stay on the reference.

On the CPU it runs under Triton's interpreter (TRITON_INTERPRET=1), which is how the test suite
checks it against the reference without a GPU (tests/activations/test_triton_kernel.py).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from tmafbench.activations.kernels.spec import BandSpec, GridTensors

BLOCK = 1024


def available() -> bool:
    """True when triton can be imported here."""
    return importlib.util.find_spec("triton") is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def supports(x: torch.Tensor, spec: BandSpec) -> bool:
    """True when this kernel can run on x: triton installed, x on CUDA (or any device under the
    interpreter, where this process can use it: `interpreter_usable`), a float dtype Triton
    handles, and no breakpoint gradient."""
    if spec.bump_width > 0 or x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return False
    return available() and ((x.is_cuda and not interpreted()) or (interpreted() and interpreter_usable()))


def interpreter_usable() -> bool:
    """Whether triton.language can run under the interpreter in this process. Its own helpers
    (tl.zeros among them) are `@triton.jit` functions, made compiled or interpreted once, when
    triton.language is first imported: a process that imported it before TRITON_INTERPRET=1 was set
    cannot interpret our kernels ("Cannot call @triton.jit'd outside of the scope of a kernel")."""
    import sys

    language = sys.modules.get("triton.language")
    if language is None:
        return True
    from triton.runtime.interpreter import InterpretedFunction  # type: ignore[import-untyped]

    return isinstance(language.zeros, InterpretedFunction)


@functools.lru_cache(maxsize=1)
def _kernels():
    """The jitted kernels (_triton_jit.py; imported on first use, after `supports` said yes)."""
    from tmafbench.activations.kernels import _triton_jit

    return _triton_jit.tmaf_forward, _triton_jit.tmaf_backward


def _launch_options() -> dict:
    # Keep multiply and add separate, as the reference computes them (the interpreter ignores it).
    return {} if interpreted() else {"enable_fp_fusion": False}


def _geometry(x3: torch.Tensor, tab: torch.Tensor, grid: GridTensors) -> tuple:
    n, c, s = x3.shape
    d, cf, k = tab.shape
    steps = max(1, (k - 1).bit_length())  # 2^steps > m
    return n * c * s, c, s, cf, grid.thresholds.shape[1], k, d, steps


class TritonBandedTMAF(torch.autograd.Function):
    """apply(x [N, C, *S], grid, spec, *tables): the reference's contract, breakpoints fixed."""

    @staticmethod
    def forward(ctx, x, grid: GridTensors, spec: BandSpec, *tables):
        import triton  # type: ignore[import-untyped]

        x3 = x.reshape(x.shape[0], x.shape[1], -1).contiguous()
        tab = torch.stack(tables).to(x.dtype).contiguous()  # [D, Cf, K]
        thr = grid.thresholds.to(x.device).contiguous()
        rows = torch.tensor(spec.rows, dtype=torch.int32, device=x.device)
        total, c, s, cf, cb, k, d, steps = _geometry(x3, tab, grid)
        out = torch.empty_like(x3)
        forward, _ = _kernels()
        forward[(triton.cdiv(total, BLOCK),)](x3, out, tab, thr, rows, total, c, s, cf, cb, k, D=d, STEPS=steps,
                                              BLOCK_SIZE=BLOCK, **_launch_options())
        ctx.save_for_backward(x3, tab, thr, rows)
        ctx.grid, ctx.dtypes = grid, [t.dtype for t in tables]
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        import triton  # type: ignore[import-untyped]

        x3, tab, thr, rows = ctx.saved_tensors
        total, c, s, cf, cb, k, d, steps = _geometry(x3, tab, ctx.grid)
        shape = grad.shape
        grad = grad.reshape(x3.shape).contiguous()
        gx = torch.empty_like(x3)
        gtab = torch.zeros(tab.shape, dtype=torch.float64, device=x3.device)
        _, backward = _kernels()
        backward[(triton.cdiv(total, BLOCK),)](x3, grad, gx, tab, thr, rows, gtab, total, c, s, cf, cb, k, D=d,
                                               STEPS=steps, BLOCK_SIZE=BLOCK, **_launch_options())
        return (gx.view(shape), None, None, *(gtab[i].to(dtype) for i, dtype in enumerate(ctx.dtypes)))


def banded_tmaf(x: torch.Tensor, tables: list[torch.Tensor], grid: GridTensors, spec: BandSpec) -> torch.Tensor:
    """The Triton kernel's banded TMAF (breakpoints fixed: see `supports`)."""
    return TritonBandedTMAF.apply(x, grid, spec, *tables)
