"""The generated digit-glyph tasks (tasks/glyphs.py): the quickstart's offline image data."""

from __future__ import annotations

import pytest
import torch

from tmafbench import tasks
from tmafbench.registries import TASKS
from tmafbench.tasks.glyphs import GlyphsColor, Glyphs, generate
from tmafbench.training import TrainingConfig, TrialConfig, train_trial

SHAPES = {"glyphs": (1, 28, 28), "glyphs-color": (3, 32, 32)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_types_and_labels(name):
    data = tasks.create(name, train_size=300, test_size=200).load(0)
    assert data.x_train.shape == (300, *SHAPES[name]) and data.x_test.shape == (200, *SHAPES[name])
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert set(data.y_train.tolist()) == set(range(10))  # every digit appears in 300 draws
    assert 0 < data.x_train.float().mean() < 255


def test_deterministic_per_seed_with_a_fixed_test_set():
    task = tasks.create("glyphs", train_size=200, test_size=100)
    a, b, other = task.load(0), task.load(0), task.load(1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, other.x_train)
    assert torch.equal(a.x_test, other.x_test) and torch.equal(a.y_test, other.y_test)
    assert not torch.equal(a.x_train[:100], a.x_test)


def test_sample_i_does_not_depend_on_the_set_size():
    small, _ = generate(1500, 3, 0, 28, False)
    large, _ = generate(2100, 3, 0, 28, False)
    assert torch.equal(small, large[:1500])


@pytest.mark.parametrize("cls", [Glyphs, GlyphsColor], ids=lambda c: c.name)
def test_normalisation_constants_match_the_images(cls):
    x, _ = generate(2000, 20_210_920, 1, cls.input_shape[-1], cls.colour)
    x = x.float() / 255
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(cls.mean), atol=0.02), mean
    assert torch.allclose(std, torch.tensor(cls.std), atol=0.02), std


@pytest.mark.parametrize("params", [{"train_size": 0}, {"test_size": -1}])
def test_bad_sizes_are_refused(params):
    with pytest.raises(ValueError, match="positive integer"):
        tasks.create("glyphs", **params)


def test_the_description_says_it_is_not_mnist():
    assert "not MNIST" in TASKS.entry("glyphs").summary
    assert "not CIFAR-10" in TASKS.entry("glyphs-color").summary


@pytest.mark.slow
def test_a_small_mlp_learns_the_digits():
    """Learnable: an MLP well above chance (10%) after a few epochs on 2,000 images."""
    config = TrialConfig(activation="relu", task="glyphs", model="mlp", seed=0,
                         task_params={"train_size": 2000, "test_size": 1000}, model_params={"depth": 1, "width": 64},
                         training=TrainingConfig(epochs=4, batch_size=100, lr=3e-3, device="cpu"))
    result = train_trial(config)
    assert result.status == "completed" and result.final_metrics["accuracy"] > 0.5, result.final_metrics
