"""Trainable baselines: PReLU and the scaled activation sigma(omega_i x) of the paper's Remark 2.1."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tmafbench.registries import ACTIVATIONS
from tmafbench.activations.base import Activation
from tmafbench.activations.tmaf import check_share

#: sigma choices of `scaled`.
SIGMAS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "softplus": F.softplus,
    "silu": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def _feature_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[C] (or [1]) parameter -> [1, C, 1, ...] to broadcast over x's feature axis (dim 1)."""
    return p.view(1, -1, *([1] * (x.dim() - 2)))


@ACTIVATIONS.register("prelu")
class PReLU(Activation):
    """PyTorch's native PReLU: max(0, x) + a_i min(0, x), one slope per feature (or per layer)."""

    trainable = True

    def __init__(self, num_features: int, init: float = 0.25, share: str = "feature"):
        super().__init__(num_features)
        self.share = check_share(share)
        self.weight = nn.Parameter(torch.full((self.num_features if share == "feature" else 1,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_features(x, per_feature=self.share == "feature")
        return F.prelu(x, self.weight.to(x.dtype))


@ACTIVATIONS.register("scaled")
class Scaled(Activation):
    """sigma(omega_i x) with a trainable scale omega_i per feature and sigma chosen by name (Remark 2.1)."""

    trainable = True

    def __init__(self, num_features: int, sigma: str = "tanh", init: float = 1.0, share: str = "feature"):
        super().__init__(num_features)
        if sigma not in SIGMAS:
            raise ValueError(f"unknown sigma {sigma!r}; choose one of: {', '.join(SIGMAS)}")
        self.share = check_share(share)
        self.sigma = sigma
        self._fn = SIGMAS[sigma]
        self.omega = nn.Parameter(torch.full((self.num_features if share == "feature" else 1,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_features(x, per_feature=self.share == "feature")
        return self._fn(x * _feature_view(self.omega.to(x.dtype), x))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma!r}, share={self.share!r}"
