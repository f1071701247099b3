"""Report frames: the training settings shown in a report's Training table."""

from __future__ import annotations

import pandas as pd

from tmafbench.reports.frames import training_settings


def _cells(*configs: dict, **axes: list) -> pd.DataFrame:
    return pd.DataFrame({"config": list(configs), **axes})


def _config(**training) -> dict:
    base = {"optimizer": "adam", "lr": 1e-3, "act_lr": None, "momentum": 0.9, "weight_decay": 0.0,
            "schedule": "cosine", "epochs": 60, "batch_size": 256, "grad_clip": None, "init_scale": 1.0}
    return {"training": {**base, **training}, "task_params": {"train_size": 20000, "test_size": 5000, "n": 1}}


def test_shared_settings_are_written_once_and_axes_are_left_out():
    settings = training_settings(_cells(_config(), _config(), n=[1, 2]))
    assert settings == {"optimizer": "adam", "lr": "0.001", "activation lr": "= lr", "weight decay": "0",
                        "schedule": "cosine", "epochs": "60", "batch": "256", "init scale": "1",
                        "loss reduction": "mean", "data": "test_size=5000, train_size=20000"}  # n is an axis: not repeated here


def test_loss_reduction_stored_or_not():
    # Configs stored before the option existed have no key: they trained on the mean.
    assert training_settings(_cells(_config()))["loss reduction"] == "mean"
    assert training_settings(_cells(_config(loss_reduction="sum")))["loss reduction"] == "sum"
    assert training_settings(_cells(_config(), _config(loss_reduction="sum")))["loss reduction"] == "mean | sum"


def test_settings_that_differ_by_group_show_their_range():
    settings = training_settings(_cells(_config(lr=0.003058, act_lr=0.22), _config(lr=0.0942), _config(lr=0.01)))
    assert settings["lr"] == "0.00306–0.0942 (differs by group)"
    assert settings["activation lr"] == "0.22 | = lr"  # tuned for one group, the weight lr for the others
    settings = training_settings(_cells(_config(act_lr=0.22), _config(act_lr=0.003), _config(), _config(schedule="onecycle")))
    assert settings["activation lr"] == "0.003–0.22 (differs by group) | = lr"
    assert settings["schedule"] == "cosine | onecycle"


def test_momentum_only_for_sgd_and_missing_configs():
    assert "momentum" not in training_settings(_cells(_config()))
    sgd = training_settings(_cells(_config(optimizer="sgd", lr=0.1)))
    assert (sgd["optimizer"], sgd["lr"], sgd["momentum"]) == ("sgd", "0.1", "0.9")
    assert training_settings(_cells({"activation": "relu"})) == {}
    assert training_settings(pd.DataFrame({"seed": [0]})) == {}
