"""TMAF kernels: `banded_tmaf` picks the fused native CPU kernel or the portable PyTorch one.

Selection: the native kernel (native.py, C++) on CPU for float32/float64 when it builds; otherwise
the PyTorch reference (reference.py), which runs on any device. Set TMAFBENCH_KERNEL=torch to force
the PyTorch path. On the CPU both give the same bits (outputs and gradients), whatever the thread
count; both save only the input for backward. The shared definitions are in spec.py.
"""

from __future__ import annotations

from typing import Sequence

import torch

from tmafbench.activations.kernels import native
from tmafbench.activations.kernels.reference import ReferenceBandedTMAF
from tmafbench.activations.kernels.spec import BandSpec, GridTensors, grid_tensors

__all__ = ["BandSpec", "GridTensors", "backend_for", "banded_tmaf", "grid_tensors", "kernel_on"]


def backend_for(x: torch.Tensor) -> str:
    """"native" or "torch": the implementation `banded_tmaf` uses for x."""
    return "native" if native.supports(x) else "torch"


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
    if (backend or backend_for(x)) == "native":
        return native.banded_tmaf(x, list(tables), breakpoints, grid, spec)
    return ReferenceBandedTMAF.apply(x, breakpoints, grid, spec, *tables)
