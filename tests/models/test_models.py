"""Every registered model: output shapes, one activation module per use, parameter counts."""

from __future__ import annotations

import pytest
import torch

from tmafbench import activations, models, tasks
from tmafbench.activations.base import Activation

IMAGE_TASK = tasks.create("cifar10", download=False)  # only shapes are used: no data is read
MNIST_TASK = tasks.create("mnist", download=False)


def _act_names():
    return [name for name in ("relu", "tmaf") if name in activations.available()]


@pytest.mark.parametrize("activation", _act_names())
@pytest.mark.parametrize("name, params, task", [
    ("mlp", {"depth": 2, "width": 7}, tasks.create("sine-sum", n=3)),
    ("mlp", {"depth": 1, "width": 10}, MNIST_TASK),
    ("cnn", {"width": 4}, MNIST_TASK),
    ("cnn", {"width": 4}, IMAGE_TASK),
    ("resnet18-cifar", {"width": 4}, IMAGE_TASK),
])
def test_forward_backward_shapes(name, params, task, activation):
    torch.manual_seed(0)
    model = models.create(name, activation=activations.factory(activation), task=task, **params)
    x = torch.randn(3, *task.input_shape)
    out = model(x)
    assert out.shape == (3, task.output_size)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_mlp_784_10_10_builds_one_activation_per_layer_with_its_width():
    built = []

    def factory(n):
        built.append(n)
        return activations.create("relu", n)

    model = models.create("mlp", activation=factory, task=MNIST_TASK, depth=3, width=10)
    assert built == [10, 10, 10]
    acts = [m for m in model.modules() if isinstance(m, Activation)]
    assert len(acts) == 3 and len({id(m) for m in acts}) == 3
    assert models.count_parameters(models.create("mlp", activation=factory, task=MNIST_TASK, depth=1, width=10)) == (
        784 * 10 + 10 + 10 * 10 + 10, 0)


def test_resnet18_has_17_distinct_activations_with_channel_counts():
    built = []

    def factory(n):
        built.append(n)
        return activations.create("relu", n)

    model = models.create("resnet18-cifar", activation=factory, task=IMAGE_TASK)
    assert built == [64] + [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4
    assert len({id(m) for m in model.modules() if isinstance(m, Activation)}) == 17
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model.stem[0].kernel_size == (3, 3)
    total, _ = models.count_parameters(model)
    assert 11_100_000 < total < 11_200_000  # the CIFAR ResNet18: about 11.17M parameters


def test_activation_parameters_are_counted_per_feature():
    model = models.create("mlp", activation=activations.factory("tmaf"), task=MNIST_TASK, depth=2, width=10)
    total, act = models.count_parameters(model)
    per_module = sum(p.numel() for p in activations.create("tmaf", 10).parameters())
    assert act == 2 * per_module > 0
    assert total == 784 * 10 + 10 + 10 * 10 + 10 + 10 * 10 + 10 + act


def test_errors():
    with pytest.raises(ValueError, match="choose one of"):
        models.create("vgg", activation=activations.factory("relu"), task=MNIST_TASK)
    with pytest.raises(ValueError, match="takes no parameter 'heads'"):
        models.create("mlp", activation=activations.factory("relu"), task=MNIST_TASK, heads=2)
    with pytest.raises(ValueError, match="needs image inputs"):
        models.create("cnn", activation=activations.factory("relu"), task=tasks.create("sine-sum"))
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        models.create("mlp", activation=activations.factory("relu"), task=MNIST_TASK, depth=0)
