"""train_trial end to end on generated function data (and one real MNIST epoch when present)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernel_choice import with_kernels
from tmafbench import activations
from tmafbench.training import TrainingConfig, TrialConfig, seed_everything, train_trial
from tmafbench.training.optim import build_optimizer, split_parameters
from tmafbench.training.schedules import build_scheduler



def config(task="sine-sum", activation="relu", seed=0, task_params=None, model_params=None, act_params=None, **training):
    training = {"epochs": 2, "batch_size": 64, "device": "cpu", "lr": 1e-2, **training}
    return TrialConfig(task=task, model="mlp", activation=activation, seed=seed,
                       task_params=task_params or {"n": 1, "train_size": 256, "test_size": 128},
                       model_params=model_params or {"depth": 1, "width": 16}, act_params=act_params or {},
                       training=TrainingConfig(**training))


@pytest.mark.parametrize("task, params", [
    ("sine-sum", {"n": 2, "train_size": 256, "test_size": 64}),
    ("oscillatory", {"train_size": 256, "test_size": 64}),
    ("expression", {"formula": "exp(sin(pi*x1) + x2**2)", "domain": [[-1, 1], [0, 1]], "train_size": 256,
                    "test_size": 64}),
])
def test_a_few_steps_per_function_task(task, params):
    result = train_trial(config(task, task_params=params))
    assert result.status == "completed" and len(result.epochs) == 2
    assert result.metric_name == "rel_l2" and result.metric_direction == "minimize"
    record = result.epochs[-1]
    assert set(record.metrics) == {"rel_l2", "mse", "max_abs"}
    assert record.epoch_time_s > 0 and record.eval_time_s > 0 and record.samples_per_s > 0
    assert result.total_train_time_s == pytest.approx(sum(e.epoch_time_s for e in result.epochs))
    assert result.final_metrics["train_loss"] == record.train_loss
    assert result.num_params == (params.get("n", 1) if task == "sine-sum" else len(params.get("domain", [0]))
                                 if task == "expression" else 1) * 16 + 16 + 16 + 1


def test_training_reduces_the_error():
    result = train_trial(config(epochs=30, batch_size=None, lr=0.02, model_params={"depth": 1, "width": 32}))
    assert result.epochs[-1].train_loss < 0.5 * result.epochs[0].train_loss


@pytest.mark.parametrize("activation", ["relu", "tmaf"])
def test_same_seed_is_bit_identical(activation):
    a = train_trial(config(activation=activation, seed=3))
    b = train_trial(config(activation=activation, seed=3))
    c = train_trial(config(activation=activation, seed=4))
    assert a.final_metrics == b.final_metrics
    assert [e.train_loss for e in a.epochs] == [e.train_loss for e in b.epochs]
    assert a.artifacts == b.artifacts
    assert a.final_metrics != c.final_metrics


THREADS_SCRIPT = """
import json, sys, torch
from tmafbench.training import TrainingConfig, TrialConfig, train_trial
config = TrialConfig(task="sine-sum", model="mlp", activation=sys.argv[1], seed=3,
                     task_params={"n": 2, "train_size": 2048, "test_size": 256}, model_params={"depth": 2, "width": 64},
                     training=TrainingConfig(epochs=2, batch_size=2048, device="cpu", lr=1e-2))
runs = []
for threads in (1, 2, 4):
    torch.set_num_threads(threads)
    result = train_trial(config)
    runs.append([result.final_metrics, [e.train_loss for e in result.epochs], result.artifacts])
print(json.dumps(runs))
"""


@pytest.mark.slow  # two processes per kernel (6-7 s each)
@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="needs MKL (MKL_CBWR makes its products reproducible)")
@pytest.mark.parametrize("activation, kernel", with_kernels(["tmaf", "tmaf-tridiag"]))
def test_mlp_metrics_do_not_depend_on_the_thread_count(activation, kernel):
    """An MLP cell gives the same bits on 1, 2 and 4 threads: the TMAF kernel sums its gradients in
    an order fixed by the shape, and MKL_CBWR=AUTO,STRICT makes PyTorch's matrix products (MKL) do
    the same (without it they change in the last bits; README, "Train one network"). Batches of
    2048 x 64 are large enough for the kernel to run in parallel. A fresh process, because MKL reads
    MKL_CBWR when it starts."""
    env = {**os.environ, "MKL_CBWR": "AUTO,STRICT", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("TMAFBENCH_KERNEL", None)
    if kernel == "torch":
        env["TMAFBENCH_KERNEL"] = "torch"
    done = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, activation], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)
    assert runs[1] == runs[0] and runs[2] == runs[0]


def test_huge_lr_diverges_as_a_result():
    result = train_trial(config(lr=1e12, optimizer="sgd", epochs=5, model_params={"depth": 3, "width": 16}))
    assert result.status == "diverged"
    assert not math.isfinite(result.final_metrics["train_loss"])
    assert "became" in result.error and len(result.epochs) < 5
    assert result.artifacts == {}


def test_bad_config_raises_before_training():
    calls = []
    with pytest.raises(ValueError, match="choose one of"):
        train_trial(config(activation="nope"), on_epoch=calls.append)
    with pytest.raises(ValueError, match="takes no parameter"):
        train_trial(config(model_params={"depht": 1}), on_epoch=calls.append)
    with pytest.raises(ValueError, match="CUDA is not available") if not torch.cuda.is_available() else pytest.raises(ValueError):
        train_trial(config(device="cuda" if not torch.cuda.is_available() else "tpu"))
    assert calls == []


def test_on_epoch_is_called_and_its_exception_propagates():
    seen = []
    train_trial(config(epochs=3), on_epoch=seen.append)
    assert [r.epoch for r in seen] == [1, 2, 3]

    class Pruned(Exception):
        pass

    def prune(record):
        raise Pruned()

    with pytest.raises(Pruned):
        train_trial(config(), on_epoch=prune)


def test_validation_split_and_no_test():
    result = train_trial(config(val_fraction=0.25, evaluate_test=False))
    assert set(result.final_metrics) == {"val_rel_l2", "val_mse", "val_max_abs", "train_loss"}
    assert result.epochs[0].samples_per_s > 0
    both = train_trial(config(val_fraction=0.25))
    assert {"rel_l2", "val_rel_l2"} <= set(both.final_metrics)


def test_predictions_artifact_on_the_fixed_grid():
    result = train_trial(config("oscillatory", task_params={"train_size": 128, "test_size": 64}))
    pred = result.artifacts["predictions"]
    assert len(pred["x"]) == len(pred["target"]) == len(pred["prediction"]) == 4001
    assert "activation_params" not in result.artifacts  # relu has none
    json.dumps(result.to_dict())
    off = train_trial(config("oscillatory", task_params={"train_size": 128, "test_size": 64}, keep_predictions=False))
    assert "predictions" not in off.artifacts


def test_tmaf_trains_and_keeps_its_parameters_and_curves():
    result = train_trial(config(activation="tmaf", act_params={"intervals": 10}, act_lr=0.05,
                                model_params={"depth": 2, "width": 12}))
    assert result.status == "completed" and result.num_act_params > 0
    params = result.artifacts["activation_params"]
    assert set(params) == {"body.1", "body.3"}
    curves = result.artifacts["activation_curves"]
    assert len(curves["s"]) == 241 and curves["s"][0] == -6.0
    assert len(curves["modules"]["body.1"]) == 8 and len(curves["modules"]["body.1"][0]) == 241


def test_activation_parameters_get_their_own_group():
    from tmafbench import models, tasks

    model = models.create("mlp", activation=activations.factory("tmaf"), task=tasks.create("sine-sum"), width=8)
    weights, act, breakpoints = split_parameters(model)
    assert act and len(weights) == 4 and not breakpoints
    opt = build_optimizer(model, TrainingConfig(lr=0.1, act_lr=0.5, weight_decay=1e-4, act_weight_decay=0.0,
                                                optimizer="sgd"))
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.1, 1e-4), (0.5, 0.0)]
    # trainable breakpoints: a group of their own, at breakpoint_lr (default: act_lr)
    model = models.create("mlp", activation=activations.factory("tmaf", train_breakpoints=True),
                          task=tasks.create("sine-sum"), width=8)
    weights, act, breakpoints = split_parameters(model)
    assert len(breakpoints) == 2 and len(act) == 1
    for extra, lr in (({}, 0.5), ({"breakpoint_lr": 0.02}, 0.02)):
        opt = build_optimizer(model, TrainingConfig(lr=0.1, act_lr=0.5, optimizer="sgd", **extra))
        assert [(g["name"], g["lr"]) for g in opt.param_groups] == [("weights", 0.1), ("activations", 0.5),
                                                                    ("breakpoints", lr)]


def _lrs(name, steps=10):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_scheduler(opt, name, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedules():
    assert _lrs("constant") == [1.0] * 10
    assert _lrs("step-half") == pytest.approx([1.0] * 5 + [0.1] * 5)
    cosine = _lrs("cosine")
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] < 0.05
    onecycle = _lrs("onecycle")
    assert max(onecycle) == pytest.approx(1.0, rel=0.05) and onecycle[0] < 0.1 and onecycle[-1] < 0.1
    with pytest.raises(ValueError, match="unknown schedule"):
        _lrs("linear")


def test_step_half_over_a_trial():
    result = train_trial(config(epochs=4, schedule="step-half", batch_size=None))
    assert [e.lr for e in result.epochs] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])


def test_seed_everything_fixes_weights_and_order():
    g1 = seed_everything(5)
    w1 = torch.nn.Linear(3, 3).weight.clone()
    p1 = torch.randperm(10, generator=g1)
    g2 = seed_everything(5)
    assert torch.equal(torch.nn.Linear(3, 3).weight, w1) and torch.equal(torch.randperm(10, generator=g2), p1)


def test_grad_clip_and_init_scale_run():
    result = train_trial(config(grad_clip=0.1, init_scale=0.5, optimizer="adamw", schedule="cosine"))
    assert result.status == "completed"


@pytest.mark.data
@pytest.mark.slow  # ~1.5 s alone; far more on a shared, busy CPU
def test_real_mnist_one_epoch_784_10_10_relu(real_data_dir):
    cfg = TrialConfig(task="mnist", model="mlp", activation="relu", seed=0,
                      task_params={"data_dir": str(real_data_dir), "download": False},
                      model_params={"depth": 1, "width": 10},
                      training=TrainingConfig(epochs=1, batch_size=64, lr=1e-3, device="cpu"))
    result = train_trial(cfg)
    assert result.final_metrics["accuracy"] > 0.85
    assert result.num_params == 7960


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("activation", ["relu", "tmaf"])
def test_cuda_run_matches_cpu_closely(activation):
    cpu = train_trial(config(activation=activation, epochs=1))
    gpu = train_trial(config(activation=activation, epochs=1, device="cuda"))
    assert gpu.device.startswith("cuda") and gpu.status == "completed"
    assert gpu.final_metrics["rel_l2"] == pytest.approx(cpu.final_metrics["rel_l2"], rel=1e-3)
    auto = train_trial(config(activation=activation, epochs=1, device="auto"))
    assert auto.device.startswith("cuda")


def _weights_after(cfg: TrialConfig) -> list[torch.Tensor]:
    """Every parameter after training `cfg` through the trainer's own loop (build_setup, run_epoch)."""
    from tmafbench.training.trainer import build_setup, run_epoch

    setup = build_setup(cfg)
    for epoch in range(1, cfg.training.epochs + 1):
        run_epoch(setup, epoch)
    return [p.detach().clone() for p in setup.model.parameters()]


@pytest.mark.parametrize("activation", ["relu", "tmaf"])
def test_summed_loss_is_the_mean_loss_times_the_batch_size(activation):
    # SGD without momentum at lr / B on the summed loss takes the same steps as lr on the mean loss
    # (256 samples, batches of 64: every batch is full), for the weights and the activation values.
    common = dict(activation=activation, optimizer="sgd", momentum=0.0, epochs=3, batch_size=64, schedule="step-half")
    mean = config(lr=0.05, **common)
    summed = config(lr=0.05 / 64, loss_reduction="sum", **common)
    initial = _weights_after(mean.replace(training=mean.training.replace(lr=1e-30)))
    trained = _weights_after(mean)
    assert all(not torch.allclose(a, b) for a, b in zip(initial, trained))  # the test means something
    for a, b in zip(trained, _weights_after(summed)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # The stored results agree too, and train_loss stays a loss per sample with either reduction.
    r_mean, r_sum = train_trial(mean), train_trial(summed)
    assert r_sum.final_metrics["rel_l2"] == pytest.approx(r_mean.final_metrics["rel_l2"], rel=1e-4)
    assert [e.train_loss for e in r_sum.epochs] == pytest.approx([e.train_loss for e in r_mean.epochs], rel=1e-4)
    # At the same lr the summed loss takes 64x larger steps (here it diverges): a different network.
    same_lr = train_trial(config(lr=0.05, loss_reduction="sum", **common))
    assert same_lr.epochs[-1].train_loss != pytest.approx(r_mean.epochs[-1].train_loss, rel=1e-3)


def test_loss_reduction_on_both_kinds_of_task():
    from tmafbench.tasks.base import Task

    pred, target = torch.randn(5, 1), torch.randn(5)
    regression = Task()
    assert regression.loss(pred, target, "sum") == pytest.approx(float(((pred[:, 0] - target) ** 2).sum()))
    assert regression.loss(pred, target) == pytest.approx(float(regression.loss(pred, target, "sum")) / 5)
    classification = Task()
    classification.kind = "classification"
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert classification.loss(logits, labels, "sum") == pytest.approx(5 * float(classification.loss(logits, labels)))
    with pytest.raises(ValueError, match="choose one of: mean, sum"):
        regression.loss(pred, target, "median")


def test_evaluate_train_measures_the_training_set_and_changes_nothing_else():
    result = train_trial(config(evaluate_train=True))
    assert {"train_rel_l2", "train_mse", "train_max_abs", "rel_l2", "train_loss"} <= set(result.final_metrics)
    assert all({"train_rel_l2", "rel_l2"} <= set(e.metrics) for e in result.epochs)
    off = train_trial(config())
    assert not any(k.startswith("train_") and k != "train_loss" for k in off.final_metrics)
    assert off.final_metrics == {k: v for k, v in result.final_metrics.items() if k in off.final_metrics}
    # Measured on the training points, not the test points.
    assert result.final_metrics["train_mse"] != result.final_metrics["mse"]
    with_val = train_trial(config(evaluate_train=True, val_fraction=0.25))
    assert {"train_rel_l2", "val_rel_l2", "rel_l2"} <= set(with_val.final_metrics)
