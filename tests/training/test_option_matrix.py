"""Every advertised activation option, end to end through the real trainer (issue N).

The cases come from the activation registry, so a new activation joins by being registered:
- every combination of the values of its bool and Literal[...] parameters (init, share,
  train_breakpoints, sigma, approximate, ...), the other parameters at their defaults;
- each integer parameter with an integer default (bandwidth, ...) also at 0 and 1, one at a time;
- combinations the constructor rejects with a ValueError are not options, and are left out.
Each case trains one epoch, evaluation (under inference_mode) included, on a tiny function task
(2-D activations) and on tiny generated MNIST with the small CNN (4-D activations), and, for the
activations that run the TMAF kernel, on both kernels (the native one when it builds here). It must end `completed` with finite metrics.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fake_data import write_idx_set
from kernel_choice import KERNELS, select, with_kernels
from tmafbench import activations
from tmafbench.registries import ACTIVATIONS
from tmafbench.training import TrainingConfig, TrialConfig, train_trial


def option_sets(name: str) -> list[dict]:
    """The parameter sets to run for activation `name` (see the module docstring)."""
    params = ACTIVATIONS.entry(name).params
    chosen = [p for p in params if p.choices]
    sets = [dict(zip((p.name for p in chosen), values)) for values in itertools.product(*(p.choices for p in chosen))]
    for p in params:
        if p.choices is None and type(p.default) is int:
            sets += [{p.name: v} for v in (0, 1) if v != p.default]
    return [s for s in sets if _accepted(name, s)]


def _accepted(name: str, params: dict) -> bool:
    try:
        activations.factory(name, **params)
    except ValueError:
        return False
    return True


CASES = [
    pytest.param(name, params, kernel, id=f"{case.id}-" + ("-".join(f"{k}={v}" for k, v in params.items()) or "defaults"))
    for case in with_kernels(activations.available()) for name, kernel in [case.values]
    for params in option_sets(name)
]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Generated MNIST-style IDX files (40 train, 20 test images of 28x28)."""
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw")
    return root


@pytest.fixture
def one_thread():
    """One thread: these trials are tiny, and on a shared machine a second thread only waits."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def trial_configs(name: str, params: dict, image_dir) -> list[TrialConfig]:
    training = TrainingConfig(epochs=1, batch_size=16, device="cpu", lr=1e-2)
    function = TrialConfig(task="sine-sum", model="mlp", activation=name, act_params=params, training=training,
                           task_params={"n": 1, "train_size": 64, "test_size": 32}, model_params={"depth": 1, "width": 6})
    image = TrialConfig(task="mnist", model="cnn", activation=name, act_params=params, training=training,
                        task_params={"data_dir": str(image_dir), "download": False, "train_size": 32, "test_size": 16},
                        model_params={"width": 4})
    return [function, image]


@pytest.mark.parametrize("name, params, kernel", CASES)
def test_option_trains_and_evaluates(name, params, kernel, image_dir, one_thread, monkeypatch):
    select(monkeypatch, kernel)
    for config in trial_configs(name, params, image_dir):
        result = train_trial(config)
        assert result.status == "completed", (config.task, result.error)
        assert len(result.epochs) == 1 and result.final_metrics
        bad = {k: v for k, v in result.final_metrics.items() if not math.isfinite(v)}
        assert not bad, (config.task, bad)


def test_the_matrix_covers_the_documented_options():
    """The registry yields the options the README advertises (guards the derivation itself)."""
    sets = option_sets("tmaf-banded")
    assert {"init": "random", "share": "layer", "train_breakpoints": True} in sets
    assert {"bandwidth": 0} in sets and {"bandwidth": 1} in sets
    assert len([s for s in sets if "init" in s]) == 4 * 2 * 2
    assert {s["sigma"] for s in option_sets("scaled")} == set(activations.trainable.SIGMAS)
    assert option_sets("relu") == [{}]
    assert {kernel for name, _, kernel in (c.values for c in CASES) if name == "tmaf"} == set(KERNELS)


@pytest.mark.skipif("native" not in KERNELS, reason="no C++ compiler here")
@pytest.mark.parametrize("name, params", [("tmaf", {"train_breakpoints": True}),
                                          ("tmaf-tridiag", {"train_breakpoints": True, "share": "layer"}),
                                          ("tmaf-banded", {"init": "random"})])
def test_both_kernels_train_to_the_same_bits(name, params, image_dir, one_thread, monkeypatch):
    """One semantics, end to end: a whole trial, evaluation included, gives the same metrics and
    learned parameters on the native kernel and on the PyTorch one."""
    results = {}
    for kernel in ("native", "torch"):
        select(monkeypatch, kernel)
        results[kernel] = [train_trial(config) for config in trial_configs(name, params, image_dir)]
    for a, b in zip(results["native"], results["torch"]):
        assert a.final_metrics == b.final_metrics and a.artifacts == b.artifacts
