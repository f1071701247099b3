"""Fixed (parameter-free) activations: the ReLU family and friends.

They keep no per-feature state, so they accept any channel count on dimension 1; `num_features`
is taken only so that every activation has the same factory signature.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from tmafbench.registries import ACTIVATIONS
from tmafbench.activations.base import Activation
from tmafbench.errors import InputError


class FixedActivation(Activation):
    """An elementwise function with no parameters; subclasses implement `fn`."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_features(x, per_feature=False)
        return self.fn(x)


@ACTIVATIONS.register("relu")
class ReLU(FixedActivation):
    """max(x, 0)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


@ACTIVATIONS.register("leaky_relu")
class LeakyReLU(FixedActivation):
    """x for x > 0, negative_slope * x otherwise."""

    def __init__(self, num_features: int, negative_slope: float = 0.01):
        super().__init__(num_features)
        self.negative_slope = float(negative_slope)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


@ACTIVATIONS.register("elu")
class ELU(FixedActivation):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""

    def __init__(self, num_features: int, alpha: float = 1.0):
        super().__init__(num_features)
        self.alpha = float(alpha)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x, self.alpha)


@ACTIVATIONS.register("selu")
class SELU(FixedActivation):
    """Self-normalising ELU (Klambauer et al. 2017)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.selu(x)


@ACTIVATIONS.register("gelu")
class GELU(FixedActivation):
    """x * Phi(x); approximate='tanh' uses the tanh formula."""

    def __init__(self, num_features: int, approximate: Literal["none", "tanh"] = "none"):
        super().__init__(num_features)
        if approximate not in ("none", "tanh"):
            raise InputError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


@ACTIVATIONS.register("softplus")
class Softplus(FixedActivation):
    """log(1 + exp(beta x)) / beta."""

    def __init__(self, num_features: int, beta: float = 1.0):
        super().__init__(num_features)
        if float(beta) <= 0:
            raise InputError(f"softplus beta must be > 0, got {beta}")
        self.beta = float(beta)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x, beta=self.beta)


@ACTIVATIONS.register("silu")
class SiLU(FixedActivation):
    """x * sigmoid(x) (swish)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


@ACTIVATIONS.register("mish")
class Mish(FixedActivation):
    """x * tanh(softplus(x))."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(x)


@ACTIVATIONS.register("tanh")
class Tanh(FixedActivation):
    """tanh(x)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


@ACTIVATIONS.register("plu")
class PLU(FixedActivation):
    """Piecewise linear unit (Nicolae 2018): max(a(x+c)-c, min(a(x-c)+c, x))."""

    def __init__(self, num_features: int, a: float = 0.1, c: float = 1.0):
        super().__init__(num_features)
        if float(c) <= 0:
            raise InputError(f"plu c must be > 0, got {c}")
        self.a, self.c = float(a), float(c)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        a, c = self.a, self.c
        return torch.maximum(a * (x + c) - c, torch.minimum(a * (x - c) + c, x))

    def extra_repr(self) -> str:
        return f"a={self.a}, c={self.c}"
