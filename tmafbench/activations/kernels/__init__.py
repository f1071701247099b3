"""TMAF kernels: `banded_tmaf` picks the fused native CPU kernel or the portable PyTorch one.

Selection: the native kernel (native.py) on CPU for float32/float64 when a C compiler is
available; otherwise the PyTorch reference (reference.py), which runs on any device. Set
TMAFBENCH_KERNEL=torch to force the PyTorch path. Both save only the input for backward.
"""

from __future__ import annotations

import os

import torch

from tmafbench.activations.kernels import native
from tmafbench.activations.kernels.reference import ReferenceBandedTMAF
from tmafbench.activations.kernels.spec import BandSpec

__all__ = ["BandSpec", "backend_for", "banded_tmaf"]


def backend_for(x: torch.Tensor) -> str:
    """"native" or "torch": the implementation `banded_tmaf` uses for x."""
    if os.environ.get("TMAFBENCH_KERNEL", "").lower() != "torch" and native.supports(x):
        return "native"
    return "torch"


def banded_tmaf(
    x: torch.Tensor, tables: torch.Tensor, breakpoints: torch.Tensor, spec: BandSpec, backend: str | None = None
) -> torch.Tensor:
    """Apply a banded TMAF. x: [N, C, *S]; tables: [D, Cf, K]; breakpoints: [Cb, K-1]. Returns x's shape."""
    shape = x.shape
    x3 = x.reshape(shape[0], shape[1], -1).contiguous()  # [N, C, S]
    tables = tables.to(x.dtype)
    fn = {"native": native.NativeBandedTMAF, "torch": ReferenceBandedTMAF}[backend or backend_for(x)]
    return fn.apply(x3, tables, breakpoints, spec).view(shape)
