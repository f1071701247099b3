"""The shared config types of tmafbench.core: options added later keep every stored cell's hash."""

from __future__ import annotations

import pytest

from tmafbench.core import HASH_NEUTRAL_DEFAULTS, TrainingConfig, TrialConfig, base_metric, metric_direction

# A cell of paper-table-3-2 as the database stored it before loss_reduction and evaluate_train
# existed, with the hashes that release computed for it.
STORED = {"task": "oscillatory", "model": "mlp", "activation": "tmaf", "seed": 3,
          "task_params": {"train_size": 20000, "test_size": 5000}, "model_params": {"depth": 2, "width": 50},
          "act_params": {"lo": -5.0, "hi": 5.0, "intervals": 100},
          "training": {"optimizer": "adam", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0, "act_lr": None,
                       "act_weight_decay": None, "schedule": "cosine", "epochs": 100, "batch_size": 256,
                       "grad_clip": None, "device": "auto", "init_scale": 1.0, "val_fraction": 0.0,
                       "evaluate_test": True, "keep_predictions": True, "keep_activation_params": True}}
STORED_CONFIG_HASH, STORED_GROUP_HASH = "81b679d95b1f08f1", "fe2d9eef4e7fb5cf"


def test_a_stored_config_without_the_new_keys_keeps_its_hash():
    config = TrialConfig.from_dict(STORED)
    assert config.training.loss_reduction == "mean" and config.training.evaluate_train is False
    assert (config.config_hash(), config.group_hash()) == (STORED_CONFIG_HASH, STORED_GROUP_HASH)
    # The same config stored with the new keys at their defaults (as cells are stored now).
    assert TrialConfig.from_dict(config.to_dict()).config_hash() == STORED_CONFIG_HASH


@pytest.mark.parametrize("option, value", [("loss_reduction", "sum"), ("evaluate_train", True)])
def test_a_new_option_away_from_its_default_makes_a_new_cell(option, value):
    changed = TrialConfig.from_dict({**STORED, "training": {**STORED["training"], option: value}})
    assert changed.config_hash() != STORED_CONFIG_HASH and changed.group_hash() != STORED_GROUP_HASH


def test_every_hash_neutral_default_is_the_class_default():
    defaults = TrainingConfig()
    assert {k: getattr(defaults, k) for k in HASH_NEUTRAL_DEFAULTS} == HASH_NEUTRAL_DEFAULTS


def test_loss_reduction_is_validated_in_one_line():
    with pytest.raises(ValueError, match="unknown loss_reduction 'median'; choose one of: mean, sum"):
        TrainingConfig.build({"loss_reduction": "median"})


@pytest.mark.parametrize("name, base, direction", [
    ("accuracy", "accuracy", "maximize"), ("val_accuracy", "accuracy", "maximize"),
    ("train_accuracy", "accuracy", "maximize"), ("train_rel_l2", "rel_l2", "minimize"),
    ("train_loss", "train_loss", "minimize"), ("val_train_loss", "val_train_loss", "minimize"),
])
def test_metric_names_on_other_sets(name, base, direction):
    assert base_metric(name) == base and metric_direction(name) == direction
