"""Base class of every activation module: the feature axis is dimension 1."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

#: Where an activation keeps its trainable parameters: one set per feature, or one for the layer.
Share = Literal["feature", "layer"]


def feature_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-feature parameter [Cp, *K] (Cp = C, or 1 when shared) -> [1, Cp, 1, ..., 1, *K].

    The result broadcasts over x [N, C, *spatial]: feature axis 1, any trailing K axes last.
    """
    return p.view(1, p.shape[0], *([1] * (x.dim() - 2)), *p.shape[1:])


def sum_over_samples(t: torch.Tensor, rows: int, trailing: int = 0) -> torch.Tensor:
    """Reduce a per-element gradient [N, C, *S, *K] to its parameter's shape: [C, *K], or [1, *K]
    when the parameter is shared (rows == 1). `trailing` is the number of K axes (len(K))."""
    spatial = list(range(2, t.dim() - trailing))
    if rows == 1:
        return t.sum(dim=[0, 1, *spatial]).unsqueeze(0)
    return t.sum(dim=[0, *spatial])


class Activation(nn.Module):
    """An activation built for `num_features` features (neurons of an MLP, channels of a CNN).

    Inputs are `[N, C]` or `[N, C, *spatial]`; C must equal `num_features` for activations that
    keep per-feature parameters.
    """

    #: True for activations with trainable parameters (PReLU, scaled, TMAF, ...).
    trainable: bool = False

    def __init__(self, num_features: int):
        super().__init__()
        if int(num_features) < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = int(num_features)

    def check_features(self, x: torch.Tensor, per_feature: bool = True) -> None:
        """Raise ValueError when x has no feature axis or, for per-feature parameters, the wrong size."""
        if x.dim() < 2:
            raise ValueError(f"{type(self).__name__} expects [N, C] or [N, C, ...] input, got shape {tuple(x.shape)}")
        if per_feature and x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_features} features but the input has "
                f"{x.shape[1]} on dimension 1 (shape {tuple(x.shape)})"
            )
