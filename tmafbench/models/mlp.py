"""Fully connected network: `depth` hidden layers of `width`, each with its own activation module."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from tmafbench.errors import InputError

ActivationFactory = Callable[[int], nn.Module]


class MLP(nn.Module):
    """in -> [Linear(width) -> activation(width)] x depth -> Linear(out). Inputs are flattened."""

    def __init__(self, in_features: int, out_features: int, activation: ActivationFactory, depth: int = 1,
                 width: int = 20):
        super().__init__()
        if int(depth) != depth or depth < 1:
            raise InputError(f"mlp: depth must be a positive integer, got {depth!r}")
        if int(width) != width or width < 1:
            raise InputError(f"mlp: width must be a positive integer, got {width!r}")
        layers: list[nn.Module] = []
        features = in_features
        for _ in range(int(depth)):
            # Each hidden layer gets its own activation module built for its own feature count.
            layers += [nn.Linear(features, int(width)), activation(int(width))]
            features = int(width)
        layers.append(nn.Linear(features, out_features))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))  # [N, *input_shape] -> [N, in] -> [N, out]


def input_features(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))
