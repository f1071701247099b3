"""Trainable baselines: PReLU and the scaled activation sigma(omega_i x) of the paper's Remark 2.1."""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tmafbench.registries import ACTIVATIONS
from tmafbench.activations.base import Activation, Share, feature_view, sum_over_samples
from tmafbench.activations.tmaf import check_share
from tmafbench.errors import InputError

#: sigma choices of `scaled` (the Literal lets the registry list them).
Sigma = Literal["relu", "leaky_relu", "elu", "selu", "gelu", "softplus", "silu", "mish", "tanh", "sigmoid"]
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


@ACTIVATIONS.register("prelu")
class PReLU(Activation):
    """PyTorch's native PReLU: max(0, x) + a_i min(0, x), one slope per feature (or per layer)."""

    trainable = True

    def __init__(self, num_features: int, init: float = 0.25, share: Share = "feature"):
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

    def __init__(self, num_features: int, sigma: Sigma = "tanh", init: float = 1.0, share: Share = "feature"):
        super().__init__(num_features)
        if sigma not in SIGMAS:
            raise InputError(f"unknown sigma {sigma!r}; choose one of: {', '.join(SIGMAS)}")
        self.share = check_share(share)
        self.sigma = sigma
        self._fn = SIGMAS[sigma]
        self.omega = nn.Parameter(torch.full((self.num_features if share == "feature" else 1,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_features(x, per_feature=self.share == "feature")
        return self._fn(x * feature_view(self.omega.to(x.dtype), x))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma!r}, share={self.share!r}"


class _SwishFunction(torch.autograd.Function):
    """x * sigmoid(beta x) with a hand-written backward that saves x and sigmoid(beta x) only.

    d y / d x = silu'(beta x) (one fused ATen kernel); d y / d beta = x^2 sigmoid'(beta x).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:  # beta: [Cb]
        b = feature_view(beta, x)
        s = torch.sigmoid(x * b)
        ctx.save_for_backward(x, beta, s)
        return x * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, beta, s = ctx.saved_tensors
        b = feature_view(beta, x)
        grad_x = torch.ops.aten.silu_backward(grad, x * b) if ctx.needs_input_grad[0] else None
        grad_beta = None
        if ctx.needs_input_grad[1]:
            # grad * x^2 * s (1 - s), reduced to the parameter's shape
            grad_beta = sum_over_samples(torch.ops.aten.sigmoid_backward(grad * x, s).mul_(x), beta.shape[0])
        return grad_x, grad_beta


@ACTIVATIONS.register("swish")
class Swish(Activation):
    """Trainable Swish x * sigmoid(beta_i x), one beta per feature (Ramachandran, Zoph and Le 2017).

    `beta` starts at `init` (1.0: SiLU). beta -> 0 gives x / 2, beta -> inf gives ReLU.
    """

    trainable = True

    def __init__(self, num_features: int, init: float = 1.0, share: Share = "feature"):
        super().__init__(num_features)
        self.share = check_share(share)
        self.beta = nn.Parameter(torch.full((self.num_features if share == "feature" else 1,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_features(x, per_feature=self.share == "feature")
        return _SwishFunction.apply(x, self.beta.to(x.dtype))

    def extra_repr(self) -> str:
        return f"share={self.share!r}"
