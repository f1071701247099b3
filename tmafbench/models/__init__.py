"""Models: `create(name, activation=<factory>, task=<Task>, **params)`.

Each model takes an activation FACTORY (num_features -> Module) and calls it once per use, with
that layer's feature count, so per-feature activation parameters are never shared.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from tmafbench.activations.base import Activation
from tmafbench.models.cnn import SmallCNN
from tmafbench.models.mlp import MLP, input_features
from tmafbench.models.resnet_cifar import ResNetCifar
from tmafbench.registries import MODELS as REGISTRY
from tmafbench.errors import InputError

ActivationFactory = Callable[[int], nn.Module]


@REGISTRY.register("mlp")
def mlp(activation: ActivationFactory, task: Any, depth: int = 1, width: int = 20) -> nn.Module:
    """Fully connected: depth hidden layers of width neurons, one activation module per layer."""
    return MLP(input_features(task.input_shape), task.output_size, activation, depth=depth, width=width)


@REGISTRY.register("cnn")
def cnn(activation: ActivationFactory, task: Any, width: int = 32) -> nn.Module:
    """Small CNN: three conv-BN-act-pool stages (width, 2w, 4w channels), global pool, linear."""
    return SmallCNN(_image_channels(task, "cnn"), task.output_size, activation, width=width)


@REGISTRY.register("resnet18-cifar")
def resnet18_cifar(activation: ActivationFactory, task: Any, width: int = 64) -> nn.Module:
    """CIFAR ResNet18: 3x3 stem, no max-pool, [2,2,2,2] BasicBlocks, own activation per use."""
    return ResNetCifar(_image_channels(task, "resnet18-cifar"), task.output_size, activation, width=width)


def _image_channels(task: Any, model: str) -> int:
    if len(task.input_shape) != 3:
        raise InputError(f"model {model!r} needs image inputs [C, H, W]; task {task.name!r} has shape {task.input_shape}")
    return int(task.input_shape[0])


def create(name: str, activation: ActivationFactory, task: Any, **params: Any) -> nn.Module:
    """Build model `name` for `task` with a fresh activation module per use from `activation`."""
    return REGISTRY.create(name, activation, task, **params)


def available() -> list[str]:
    return REGISTRY.available()


def describe() -> list[tuple[str, str, str]]:
    """(name, summary, parameters) rows for `tmafbench models`."""
    return REGISTRY.describe()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all trainable parameters, those inside activation modules)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    act = sum(p.numel() for m in model.modules() if isinstance(m, Activation)
              for p in m.parameters(recurse=False) if p.requires_grad)
    return total, act


__all__ = ["create", "available", "describe", "count_parameters", "REGISTRY"]
