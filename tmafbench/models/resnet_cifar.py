"""ResNet18 for CIFAR (He et al. 2016): 3x3 stem, no max-pool, [2, 2, 2, 2] BasicBlocks.

Every use of an activation is its own module built for its channel count, so per-channel
activation parameters are never shared inside or across blocks (17 activation modules).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ActivationFactory = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    """conv-BN-act-conv-BN, plus the (projected) shortcut, then act. Two activation modules."""

    def __init__(self, in_planes: int, planes: int, stride: int, activation: ActivationFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = activation(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = activation(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """Stem (3x3, 64) -> 4 stages of BasicBlocks (64, 128, 256, 512) -> avg pool -> linear."""

    def __init__(self, in_channels: int, num_classes: int, activation: ActivationFactory,
                 blocks: tuple[int, ...] = (2, 2, 2, 2), width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  activation(width))
        stages, planes, in_planes = [], width, width
        for index, count in enumerate(blocks):
            stride = 1 if index == 0 else 2
            for block in range(count):
                stages.append(BasicBlock(in_planes, planes, stride if block == 0 else 1, activation))
                in_planes = planes
            planes *= 2
        self.layers = nn.Sequential(*stages)
        self.head = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))  # [N, 512, H/8, W/8]
        return self.head(x.mean(dim=(2, 3)))
