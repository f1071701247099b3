"""Running tests on both TMAF kernels: the native C++ one and the PyTorch reference.

Importable from any test (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import os

import pytest

from tmafbench import activations
from tmafbench.activations.kernels import native



def has_compiler() -> bool:
    try:
        native.compiler()
    except OSError:
        return False
    return True


def native_expected() -> bool:
    """Whether the native kernel must work here: a C++ compiler exists and TMAFBENCH_KERNEL=torch is not set."""
    return has_compiler() and os.environ.get("TMAFBENCH_KERNEL", "").lower() != "torch"


#: The kernels to test: the PyTorch reference always, the native one wherever a C++ compiler exists.
#: A native kernel that fails to build there fails its tests (`select`), never turns them into skips.
KERNELS = ["torch"] + (["native"] if native_expected() else [])


def select(monkeypatch: pytest.MonkeyPatch, kernel: str | None) -> None:
    """Make `kernel` the one TMAF activations use (None: leave the default)."""
    if kernel == "torch":
        monkeypatch.setenv("TMAFBENCH_KERNEL", "torch")
    else:
        monkeypatch.delenv("TMAFBENCH_KERNEL", raising=False)
    if kernel == "native":
        assert native.load(), f"the native TMAF kernel did not build: {native.unavailable_reason()}"


def with_kernels(names: list[str]) -> list:
    """pytest params (name, kernel): every kernel for activations that run one, None for the others."""
    return [pytest.param(name, kernel, id=f"{name}-{kernel}" if kernel else name)
            for name in names for kernel in (KERNELS if activations.uses_kernel(name) else [None])]
