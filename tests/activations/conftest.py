"""Helpers shared by the activation tests."""

from __future__ import annotations

import pytest
import torch

from tmafbench.activations.kernels import native

#: Kernel backends to run exactness tests on: the portable one always, the native one when it builds.
BACKENDS = ["torch"] + (["native"] if native.load() is not None else [])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """Force one TMAF kernel backend for the test (TMAFBENCH_KERNEL=torch selects the portable one)."""
    if request.param == "torch":
        monkeypatch.setenv("TMAFBENCH_KERNEL", "torch")
    else:
        monkeypatch.delenv("TMAFBENCH_KERNEL", raising=False)
    return request.param


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every value table distinct random entries (breakpoint parameters are left alone)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.startswith("breakpoint"):
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 1.5 - 0.25)
    return module
