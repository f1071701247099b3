"""Activation library: the ReLU family, trainable baselines, TMAF (diagonal, tri-diagonal, banded)
and the trainable-activation family (PAU, APL, PWLU, a KAN-style spline, trainable Swish).

Every activation is built by name with the number of features (dimension 1 of its input)::

    act = create("tmaf", num_features=64, lo=-5, hi=5, intervals=10)

`factory(name, **params)` validates the parameters now and returns `num_features -> Module`,
which is what models take.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

# Importing the modules registers their activations.
from tmafbench.activations import fixed, piecewise, rational, spline, tmaf, tmaf_banded, trainable  # noqa: F401
from tmafbench.registries import ACTIVATIONS
from tmafbench.activations.base import Activation
from tmafbench.activations.grid import Grid
from tmafbench.activations.tmaf import BandedTMAFBase

__all__ = ["Activation", "available", "create", "describe", "factory", "grid_info", "uses_kernel"]


def available() -> list[str]:
    """Names of every registered activation, sorted."""
    return ACTIVATIONS.available()


def create(name: str, num_features: int, **params: Any) -> nn.Module:
    """Build activation `name` for `num_features` features; unknown names/params raise ValueError."""
    return ACTIVATIONS.create(name, int(num_features), **params)


def factory(name: str, **params: Any) -> Callable[[int], nn.Module]:
    """Validate `name` and `params` now (by building one instance) and return `num_features -> Module`."""
    create(name, 1, **params)

    def build(num_features: int) -> nn.Module:
        return create(name, num_features, **params)

    build.__name__ = f"make_{name.replace('-', '_')}"
    return build


def describe() -> list[tuple[str, str, str]]:
    """(name, one-line summary, parameters with defaults) for every activation."""
    return ACTIVATIONS.describe()


def uses_kernel(name: str) -> bool:
    """True when activation `name` runs the TMAF kernel (native C++ or the PyTorch reference)."""
    return issubclass(ACTIVATIONS.entry(name).factory, BandedTMAFBase)


def grid_info(name: str, params: dict[str, Any] | None = None) -> tuple[str | None, int | None]:
    """(grid label, inner interval count) of a grid activation, e.g. ("[-5,5]/10", 10); (None, None) otherwise."""
    params = dict(params or {})
    ACTIVATIONS.check_params(name, params)
    if not uses_kernel(name):
        return None, None
    grid = Grid.from_params(*(params.get(k) for k in ("lo", "hi", "intervals", "breakpoints")))
    return grid.label, grid.intervals
