"""Packed cells (training/packed.py): each cell of a pack gets the metrics of its unpacked run, up to
floating-point summation order, on both function tasks and MNIST, with ReLU, TMAF and tri-diagonal
TMAF, on both TMAF kernels; a diverged or pruned cell stops alone; what cannot pack trains alone."""

from __future__ import annotations

import math

import pytest

from tmafbench.core import RunStatus, TrainingConfig, TrialConfig
from tmafbench.training import train_trial
from tmafbench.training.packed import pack_key, train_many

from fake_data import write_idx_set

# Measured here (4 cells, 3 epochs): final metrics of packed and unpacked runs differ by at most
# ~1e-8 relative on the function tasks and MNIST; the tolerance leaves room for other BLAS builds.
RTOL = 1e-5


@pytest.fixture(params=["native", "torch"])
def kernel(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setenv("TMAFBENCH_KERNEL", "torch")
    return request.param


@pytest.fixture
def mnist_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMAFBENCH_CACHE", str(tmp_path / "cache"))
    write_idx_set(tmp_path / "data" / "MNIST" / "raw")
    return str(tmp_path / "data")


def configs(task: str, activation: str, task_params: dict, width: int = 12, depth: int = 2, **training) -> list[TrialConfig]:
    """Four cells that pack: other seeds, learning rates, weight decay and gradient clipping."""
    act = {"intervals": 20} if activation.startswith("tmaf") else {}
    per_cell = [dict(lr=1e-3), dict(lr=3e-3, act_lr=1e-2), dict(lr=2e-3, weight_decay=1e-3), dict(lr=5e-3, grad_clip=0.5)]
    base = dict(epochs=3, batch_size=32, device="cpu", **training)
    return [TrialConfig(task=task, model="mlp", activation=activation, seed=seed, task_params=task_params,
                        model_params={"depth": depth, "width": width}, act_params=act,
                        training=TrainingConfig(**{**base, **extra}))
            for seed, extra in enumerate(per_cell)]


def assert_same(packed, alone) -> None:
    assert not isinstance(packed, BaseException), packed
    assert packed.status == alone.status == RunStatus.COMPLETED and packed.pack_size == 4
    assert [e.epoch for e in packed.epochs] == [e.epoch for e in alone.epochs]
    for a, b in zip(packed.epochs, alone.epochs):
        assert a.train_loss == pytest.approx(b.train_loss, rel=RTOL)
        assert a.lr == pytest.approx(b.lr)
    for name, value in alone.final_metrics.items():
        assert packed.final_metrics[name] == pytest.approx(value, rel=RTOL, abs=1e-9), name
    assert packed.num_params == alone.num_params and packed.num_act_params == alone.num_act_params
    assert set(packed.artifacts) == set(alone.artifacts)


@pytest.mark.parametrize("activation", ["relu", "tmaf", "tmaf-tridiag"])
@pytest.mark.parametrize("task, params", [
    ("sine-sum", {"n": 2, "train_size": 256, "test_size": 128}),
    ("oscillatory", {"train_size": 256, "test_size": 128}),
], ids=["sine-sum", "oscillatory"])
def test_packed_cells_match_their_unpacked_runs_on_function_tasks(task, params, activation, kernel):
    cells = configs(task, activation, params)
    assert len({pack_key(c.to_dict()) for c in cells}) == 1
    for packed, alone in zip(train_many(cells), [train_trial(c) for c in cells]):
        assert_same(packed, alone)


@pytest.mark.parametrize("activation", ["relu", "tmaf", "tmaf-tridiag"])
def test_packed_cells_match_their_unpacked_runs_on_mnist(activation, kernel, mnist_dir):
    cells = configs("mnist", activation, {"data_dir": mnist_dir, "download": False}, width=10, depth=1,
                    optimizer="sgd", val_fraction=0.25)
    for packed, alone in zip(train_many(cells), [train_trial(c) for c in cells]):
        assert_same(packed, alone)
        assert "val_accuracy" in packed.final_metrics


def test_a_diverged_cell_stops_and_the_others_go_on():
    cells = configs("sine-sum", "tmaf", {"n": 1, "train_size": 128, "test_size": 64})
    cells[1] = cells[1].replace(training=cells[1].training.replace(lr=1e30, optimizer="sgd"))
    cells = [c.replace(training=c.training.replace(optimizer="sgd")) for c in cells]
    outcomes = train_many(cells)
    alone = [train_trial(c) for c in cells]
    assert outcomes[1].status == RunStatus.DIVERGED == alone[1].status
    assert len(outcomes[1].epochs) == len(alone[1].epochs) and "training loss became" in outcomes[1].error
    for k in (0, 2, 3):
        assert_same(outcomes[k], alone[k])


def test_a_cell_whose_callback_raises_stops_alone():
    class Stop(Exception):
        pass

    def stop_at_2(record):
        if record.epoch == 2:
            raise Stop("pruned")

    cells = configs("sine-sum", "relu", {"n": 1, "train_size": 128, "test_size": 64})
    outcomes = train_many(cells, [None, stop_at_2, None, None])
    assert isinstance(outcomes[1], Stop)
    for k in (0, 2, 3):
        assert_same(outcomes[k], train_trial(cells[k]))


@pytest.mark.parametrize("change", [
    {"act_params": {"share": "layer"}},
    {"training": {"schedule": "onecycle"}},
    {"model": "cnn"},
], ids=["shared-activation", "onecycle", "cnn"])
def test_what_cannot_pack_has_no_pack_key(change):
    data = configs("sine-sum", "tmaf", {"n": 1})[0].to_dict()
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    assert pack_key(data) is None


def test_cells_that_differ_in_more_than_their_own_settings_do_not_pack():
    a, b = configs("sine-sum", "tmaf", {"n": 1})[:2]
    assert pack_key(a.to_dict()) == pack_key(b.to_dict())  # seed, lr, act_lr differ: they pack
    for other in (b.replace(task_params={"n": 2}), b.replace(act_params={"intervals": 10}),
                  b.replace(training=b.training.replace(batch_size=64)), b.replace(activation="relu")):
        assert pack_key(other.to_dict()) != pack_key(a.to_dict())


def test_packed_step_time_is_shared_between_cells():
    cells = configs("sine-sum", "relu", {"n": 1, "train_size": 128, "test_size": 64})
    outcomes = train_many(cells)
    times = [r.epochs[0].epoch_time_s for r in outcomes]
    assert len(set(times)) == 1 and all(t > 0 and math.isfinite(t) for t in times)
    assert all(r.pack_size == 4 for r in outcomes)


def test_trainable_breakpoints_pack_with_their_own_lr(kernel):
    cells = configs("sine-sum", "tmaf-tridiag", {"n": 1, "train_size": 256, "test_size": 64})
    cells = [c.replace(act_params={**c.act_params, "train_breakpoints": True},
                       training=c.training.replace(breakpoint_lr=1e-3 * (k + 1))) for k, c in enumerate(cells)]
    assert len({pack_key(c.to_dict()) for c in cells}) == 1
    for packed, alone in zip(train_many(cells), [train_trial(c) for c in cells]):
        assert_same(packed, alone)


@pytest.mark.parametrize("activation", ["relu", "tmaf"])
def test_packed_cells_train_on_the_summed_loss_and_measure_the_training_set(activation):
    # The paper's protocol packed: SGD on the summed loss, with the training-set metrics; each cell
    # as alone, and the summed loss really used (a mean-loss pack ends elsewhere).
    params = {"n": 2, "train_size": 256, "test_size": 128}
    cells = configs("sine-sum", activation, params, optimizer="sgd", momentum=0.0, schedule="step-half",
                    loss_reduction="sum", evaluate_train=True)
    packed = train_many(cells)
    for result, alone in zip(packed, [train_trial(c) for c in cells]):
        assert_same(result, alone)
        assert {"train_rel_l2", "train_mse", "rel_l2"} <= set(result.final_metrics)
    mean = train_many(configs("sine-sum", activation, params, optimizer="sgd", momentum=0.0, schedule="step-half",
                              evaluate_train=True))
    assert mean[0].final_metrics["rel_l2"] != pytest.approx(packed[0].final_metrics["rel_l2"], rel=1e-3)


def _packable_activations() -> list[tuple[str, dict]]:
    """Every registered activation with default parameters, and PWLU with its range alignment (short
    enough to realign within the test's 24 batches)."""
    from tmafbench import activations  # noqa: F401  (registers them)
    from tmafbench.registries import ACTIVATIONS

    return [(name, {}) for name in ACTIVATIONS.available()] + [("pwlu", {"align": True, "align_steps": 5})]


@pytest.mark.parametrize("activation, act_params", _packable_activations(),
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()) or "defaults")
def test_every_registered_activation_packs_to_its_unpacked_runs(activation, act_params):
    # The trainable-activation family studies (issue 14) pack PAU, APL, PWLU, the spline and Swish
    # like TMAF: each packed cell must still end where its unpacked run ends.
    cells = [c.replace(act_params=act_params)
             for c in configs("sine-sum", activation, {"n": 2, "train_size": 256, "test_size": 128})]
    assert len({pack_key(c.to_dict()) for c in cells}) == 1
    for packed, alone in zip(train_many(cells), [train_trial(c) for c in cells]):
        assert_same(packed, alone)
