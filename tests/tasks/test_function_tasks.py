"""sine-sum, oscillatory and expression: shapes, values, determinism, the formula whitelist."""

from __future__ import annotations

import math

import pytest
import torch

from tmafbench import tasks
from tmafbench.tasks.formula import compile_formula


def test_registry_lists_every_task():
    assert set(tasks.available()) == {"sine-sum", "oscillatory", "expression", "mnist", "fashion-mnist", "cifar10",
                                     "glyphs", "glyphs-color"}
    with pytest.raises(ValueError, match="choose one of"):
        tasks.create("sine")


def test_sine_sum_shapes_ranges_and_targets():
    task = tasks.create("sine-sum", n=3, train_size=500, test_size=200)
    data = task.load(seed=0)
    assert data.x_train.shape == (500, 3) and data.y_train.shape == (500,)
    assert data.x_test.shape == (200, 3)
    assert data.x_train.min() >= -2 and data.x_train.max() <= 2
    expected = torch.sin(math.pi * data.x_train.double().sum(1)).float()
    torch.testing.assert_close(data.y_train, expected, atol=1e-5, rtol=0)
    assert task.kind == "regression" and task.metric_name == "rel_l2" and task.metric_direction == "minimize"
    assert task.input_shape == (3,) and task.output_size == 1
    assert task.prediction_grid() is None  # 3-D: no grid


def test_defaults_follow_the_paper():
    task = tasks.create("sine-sum")
    assert task.train_size == 20_000 and task.domain == [(-2.0, 2.0)]
    assert tasks.create("oscillatory").train_size == 20_000


def test_data_is_deterministic_per_seed_and_test_set_fixed():
    task = tasks.create("sine-sum", n=2, train_size=100, test_size=50)
    a, b, c = task.load(1), task.load(1), task.load(2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    assert torch.equal(a.x_test, c.x_test)  # seeds vary training, never the test set
    assert not torch.equal(a.x_train[:50], a.x_test)  # a fresh sample, not a slice of the training set


def test_oscillatory_grid_resolves_the_fast_mode():
    task = tasks.create("oscillatory", train_size=10, test_size=10)
    x, target = task.prediction_grid()
    assert x.shape == (4001, 1) and target.shape == (4001,)
    assert x.min() == -1 and x.max() == 1
    s = x[:, 0].double()
    expected = torch.sin(100 * math.pi * s) + torch.cos(50 * math.pi * s) + torch.sin(math.pi * s)
    torch.testing.assert_close(target, expected.float(), atol=1e-5, rtol=0)
    assert (x[1, 0] - x[0, 0]) * 50 < 0.03  # >= 40 points per period of sin(100 pi x)


def test_expression_with_per_variable_domain():
    task = tasks.create("expression", formula="exp(sin(pi*x1) + x2**2)", domain=[[-1, 1], [0, 2]],
                        train_size=300, test_size=10)
    data = task.load(0)
    assert data.x_train.shape == (300, 2)
    assert data.x_train[:, 1].min() >= 0 and data.x_train[:, 1].max() <= 2
    x = data.x_train.double()
    torch.testing.assert_close(data.y_train, torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2).float())


def test_expression_one_domain_for_all_and_explicit_n():
    task = tasks.create("expression", formula="x1 * 2 + 1", domain=[0, 1], n=3, train_size=20, test_size=5)
    assert task.input_shape == (3,)
    data = task.load(0)
    torch.testing.assert_close(data.y_train, 2 * data.x_train[:, 0] + 1)
    assert task.prediction_grid() is None


def test_expression_1d_has_a_grid():
    task = tasks.create("expression", formula="abs(x1)", train_size=10, test_size=10)
    x, y = task.prediction_grid()
    torch.testing.assert_close(y, x[:, 0].abs())


@pytest.mark.parametrize("formula, message", [
    ("__import__('os').system('ls')", "unknown function"),
    ("open('f')", "unknown function 'open'"),
    ("x1.real", "Attribute"),
    ("sin(x1", "syntax error"),
    ("y + x1", "unknown name 'y'"),
    ("pi * 2", "uses no variable"),
    ("sin(x1, x2)", "exactly one argument"),
    ("[x1 for x1 in ()]", "not allowed"),
    ("x1 if x1 > 0 else -x1", "not allowed"),
    ("'a' * x1", "not allowed"),
    ("", "empty"),
])
def test_bad_formula_gives_one_line_error(formula, message):
    with pytest.raises(ValueError, match=message) as info:
        compile_formula(formula)
    assert "\n" not in str(info.value)


def test_constant_arithmetic_errors_are_value_errors():
    for text in ("x1 + 1/0", "x1 * 10.0**10**10"):
        with pytest.raises(ValueError, match="formula"):
            compile_formula(text)(torch.zeros(2, 1))


def test_expression_checks_domain_and_variables():
    with pytest.raises(ValueError, match="uses x3 but n=2"):
        tasks.create("expression", formula="x3", n=2)
    with pytest.raises(ValueError, match="2 domain intervals given for n=3"):
        tasks.create("expression", formula="x1+x3", domain=[[0, 1], [0, 1]], n=3)
    with pytest.raises(ValueError, match="lo < hi"):
        tasks.create("expression", formula="x1", domain=[1, 0])


@pytest.mark.parametrize("params", [{"train_size": 0}, {"test_size": -3}, {"train_size": 2.5}])
def test_bad_sizes(params):
    with pytest.raises(ValueError, match="positive integer|must be an integer, got float 2.5"):
        tasks.create("oscillatory", **params)


def test_regression_metrics():
    task = tasks.create("oscillatory", train_size=10, test_size=10)
    target = torch.tensor([3.0, 4.0])
    pred = torch.tensor([[3.0], [3.0]])
    m = task.metrics(pred, target)
    assert m["rel_l2"] == pytest.approx(1 / 5)
    assert m["mse"] == pytest.approx(0.5)
    assert m["max_abs"] == pytest.approx(1.0)
