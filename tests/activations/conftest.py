"""Helpers shared by the activation tests."""

from __future__ import annotations

import pytest
import torch

from kernel_choice import KERNELS, select


@pytest.fixture(params=KERNELS)
def backend(request, monkeypatch) -> str:
    """Run the test on each TMAF kernel (TMAFBENCH_KERNEL=torch selects the PyTorch reference)."""
    select(monkeypatch, request.param)
    return request.param


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every value table distinct random entries (breakpoint parameters are left alone)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.startswith("breakpoint"):
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 1.5 - 0.25)
    return module
