"""Running tests on both TMAF kernels: the native C++ one and the PyTorch reference.

Importable from any test (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import pytest

from tmafbench import activations
from tmafbench.activations.kernels import native

#: The kernels to test: the PyTorch reference always, the native one when it builds here.
KERNELS = ["torch"] + (["native"] if native.load() else [])


def select(monkeypatch: pytest.MonkeyPatch, kernel: str | None) -> None:
    """Make `kernel` the one TMAF activations use (None: leave the default)."""
    if kernel == "torch":
        monkeypatch.setenv("TMAFBENCH_KERNEL", "torch")
    else:
        monkeypatch.delenv("TMAFBENCH_KERNEL", raising=False)


def with_kernels(names: list[str]) -> list:
    """pytest params (name, kernel): every kernel for activations that run one, None for the others."""
    return [pytest.param(name, kernel, id=f"{name}-{kernel}" if kernel else name)
            for name in names for kernel in (KERNELS if activations.uses_kernel(name) else [None])]
