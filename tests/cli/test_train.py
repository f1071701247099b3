"""`tmafbench train` and `tmafbench bench epoch|step` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tmafbench.cli import app

runner = CliRunner()
SMALL = ["--task", "sine-sum", "--task-param", "n=2", "--task-param", "train_size=128", "--task-param",
         "test_size=64", "--width", "8", "--epochs", "2", "--device", "cpu"]


def test_train_prints_metrics_and_parameter_counts():
    result = runner.invoke(app, ["train", *SMALL, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout and "rel_l2" in result.stdout
    assert "parameters" in result.stdout and "33 (activation: 0)" in result.stdout  # 2*8+8 + 8+1


def test_train_json_is_the_whole_result():
    result = runner.invoke(app, ["train", *SMALL, "--json", "--batch-size", "full", "--lr", "0.01",
                                 "--optimizer", "sgd", "--schedule", "step-half", "--grad-clip", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "completed" and len(data["epochs"]) == 2
    assert data["config"]["training"]["batch_size"] is None and data["config"]["seed"] == 3
    assert data["config"]["model_params"] == {"width": 8}
    assert data["config"]["task_params"] == {"n": 2, "train_size": 128, "test_size": 64}
    assert data["epochs"][0]["lr"] == 0.01 and data["epochs"][1]["lr"] == pytest.approx(0.001)
    assert data["num_params"] == 33


def test_same_seed_same_json_metrics():
    a = json.loads(runner.invoke(app, ["train", *SMALL, "--json"]).stdout)
    b = json.loads(runner.invoke(app, ["train", *SMALL, "--json"]).stdout)
    assert a["final_metrics"] == b["final_metrics"]


def test_activation_params_are_passed():
    from tmafbench import activations

    if "tmaf" not in activations.available():
        pytest.skip("tmaf not registered yet")
    result = runner.invoke(app, ["train", *SMALL, "--activation", "tmaf", "--act-param", "intervals=4",
                                 "--act-lr", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["config"]["act_params"] == {"intervals": 4} and data["num_act_params"] > 0


def test_loss_reduction_and_training_set_metrics_from_the_command_line():
    result = runner.invoke(app, ["train", *SMALL, "--json", "--optimizer", "sgd", "--momentum", "0", "--lr", "1e-4",
                                 "--loss-reduction", "sum", "--evaluate-train"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["config"]["training"]["loss_reduction"] == "sum" and data["config"]["training"]["evaluate_train"]
    assert {"train_rel_l2", "rel_l2", "train_loss"} <= set(data["final_metrics"])
    default = json.loads(runner.invoke(app, ["train", *SMALL, "--json"]).stdout)
    assert default["config"]["training"]["loss_reduction"] == "mean" and "train_rel_l2" not in default["final_metrics"]


def test_options_left_unset_train_with_the_training_configs_defaults():
    """`train` declares no default of its own: what is not given is TrainingConfig's default."""
    from tmafbench.core import TrainingConfig

    data = json.loads(runner.invoke(app, ["train", *SMALL, "--json"]).stdout)
    assert data["config"]["training"] == TrainingConfig(epochs=2, device="cpu").model_dump()


def test_breakpoint_lr_from_the_command_line():
    result = runner.invoke(app, ["train", *SMALL, "--json", "--activation", "tmaf", "--act-param", "intervals=4",
                                 "--act-param", "train_breakpoints=true", "--breakpoint-lr", "0.05"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "completed" and data["config"]["training"]["breakpoint_lr"] == 0.05


@pytest.mark.parametrize("args, message", [
    (["--loss-reduction", "median"], "unknown loss_reduction 'median'; choose one of: mean, sum"),
    (["--activation", "nope"], "unknown activation 'nope'"),
    (["--batch-size", "big"], "--batch-size expects"),
    (["--act-param", "oops"], "--act-param expects key=value"),
    (["--optimizer", "lbfgs"], "unknown optimizer"),
    (["--model-param", "heads=2"], "takes no parameter 'heads'"),
    (["--task-param", "formula=x1"], "takes no parameter 'formula'"),
])
def test_user_errors_are_one_line(args, message):
    result = runner.invoke(app, ["train", *SMALL, *args])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("error:") == 1


def test_bad_formula_is_one_line():
    result = runner.invoke(app, ["train", "--task", "expression", "--task-param", "formula=sin(x1", "--epochs", "1"])
    assert result.exit_code == 2 and "syntax error" in result.output


def test_bench_epoch_and_step_print_ratios():
    from tmafbench.cli import bench

    if not hasattr(bench, "bench_app"):
        pytest.skip("no bench sub-app")
    result = runner.invoke(app, ["bench", "epoch", "--task", "sine-sum", "--task-param", "train_size=256",
                                 "--width", "8", "-a", "relu", "-a", "tanh", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    assert "tanh" in result.stdout and "1.00x" in result.stdout
    result = runner.invoke(app, ["bench", "step", "--task", "mnist", "--model", "cnn", "--model-param", "width=4",
                                 "-a", "relu", "-a", "elu", "--batch-size", "8", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    assert "elu" in result.stdout
