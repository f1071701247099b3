"""TMAF kernels: `banded_tmaf` picks the fused native CPU kernel, the Triton GPU kernel or the
portable PyTorch one.

Selection: the native kernel (native.py, C++) on CPU for float32/float64 when it builds; the
Triton kernel (triton_kernel.py) on CUDA when triton is installed and the breakpoints are fixed;
otherwise the PyTorch reference (reference.py), which runs on any device. Set
TMAFBENCH_KERNEL=torch to force the PyTorch path. On the CPU the native kernel and the reference
give the same bits (outputs and gradients), whatever the thread count; the Triton kernel gives the
reference's outputs and input gradients, and the values' gradient up to the order of a float64
sum. All save only the input for backward. The shared definitions are in spec.py.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from tmafbench.activations.kernels import native, triton_kernel
from tmafbench.activations.kernels.reference import ReferenceBandedTMAF
from tmafbench.activations.kernels.spec import BandSpec, GridTensors, grid_tensors

__all__ = ["BandSpec", "GridTensors", "backend_for", "banded_tmaf", "grid_tensors", "kernel_on"]


def backend_for(x: torch.Tensor, spec: BandSpec | None = None) -> str:
    """"native", "triton" or "torch": the implementation `banded_tmaf` uses for x (and spec)."""
    if native.supports(x):
        return "native"
    if (x.is_cuda and os.environ.get("TMAFBENCH_KERNEL", "").lower() != "torch"
            and triton_kernel.supports(x, spec or BandSpec((0.0,), (0,)))):
        return "triton"
    return "torch"


def kernel_on(device: str) -> str:
    """"native" or "torch": the implementation TMAF layers use on `device` in this process (builds
    the native kernel on a CPU if it is not built yet, as the first TMAF call would)."""
    return "native" if device == "cpu" and native.load() else "torch"


def banded_tmaf(
    x: torch.Tensor,
    tables: Sequence[torch.Tensor],
    breakpoints: torch.Tensor,
    spec: BandSpec,
    backend: str | None = None,
    grid: GridTensors | None = None,
) -> torch.Tensor:
    """Apply a banded TMAF to x [N, C, *S]: `tables` holds each diagonal's [Cf, K] values, in the
    order of spec.rows; breakpoints are [Cb, K-1]. Returns x's shape.

    `grid` is `grid_tensors(breakpoints, spec, x.dtype)`; callers with a fixed grid pass it cached.
    """
    if grid is None:
        grid = grid_tensors(breakpoints, spec, x.dtype)
    chosen = backend or backend_for(x, spec)
    if chosen == "native":
        return native.banded_tmaf(x, list(tables), breakpoints, grid, spec)
    if chosen == "triton":
        if not triton_kernel.supports(x, spec):
            raise ValueError("the Triton kernel needs triton, a CUDA tensor (or TRITON_INTERPRET=1 set before triton "
                             "was first imported) and fixed breakpoints")
        return triton_kernel.banded_tmaf(x, list(tables), grid, spec)
    return ReferenceBandedTMAF.apply(x, breakpoints, grid, spec, *tables)
