"""A small CNN for 28x28 / 32x32 images: three conv stages, then global pooling and a linear head."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from tmafbench.errors import InputError

ActivationFactory = Callable[[int], nn.Module]


class SmallCNN(nn.Module):
    """[conv3x3 -> BN -> act(C) -> maxpool2] x 3 with C = width, 2*width, 4*width; pool; linear."""

    def __init__(self, in_channels: int, num_classes: int, activation: ActivationFactory, width: int = 32):
        super().__init__()
        if int(width) != width or width < 1:
            raise InputError(f"cnn: width must be a positive integer, got {width!r}")
        stages: list[nn.Module] = []
        channels = in_channels
        for out in (width, 2 * width, 4 * width):
            stages += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), activation(out),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [N, 4w, H/8, W/8]
        return self.head(x.mean(dim=(2, 3)))  # global average pool -> [N, 4w] -> [N, classes]
