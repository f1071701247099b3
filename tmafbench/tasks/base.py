"""The Task contract: what a trainer needs to know about a data set.

A task owns its data (in-memory tensors), its loss, its metrics and, for 1-D regression, a fixed
prediction grid for the reports. Tasks never touch models or optimisers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from tmafbench.tasks import metrics as _metrics
from tmafbench.errors import InputError

Kind = Literal["regression", "classification"]

# Offsets that give each random stream of a task its own generator (train sample, test sample,
# subsample, augmentation). Fixed numbers, so a seed means the same thing on every machine.
STREAM_TRAIN, STREAM_TEST, STREAM_SUBSAMPLE = 0, 1, 2
TEST_SEED = 20_210_920  # the test set is the same for every trial seed: seeds vary training only


def rng(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one random stream of one seed."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


@dataclass
class TaskData:
    """In-memory tensors on the CPU. x may be uint8 images; `Task.prepare` makes model inputs."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])


def check_size(name: str, value: int | None, available: int | None = None) -> int | None:
    """Validate a train_size/test_size parameter (None = everything)."""
    if value is None:
        return None
    if int(value) != value or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    if available is not None and value > available:
        raise InputError(f"{name}={value} is larger than the {available} samples available")
    return int(value)


def subsample(x: torch.Tensor, y: torch.Tensor, size: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic random subset of `size` samples (all when size is None)."""
    if size is None or size >= x.shape[0]:
        return x, y
    index = torch.randperm(x.shape[0], generator=rng(seed, STREAM_SUBSAMPLE))[:size]
    return x[index], y[index]


class Task:
    """Base class. Subclasses set the class attributes and implement `load`."""

    name: str = ""
    kind: Kind = "regression"
    input_shape: tuple[int, ...] = ()
    output_size: int = 1
    #: True when `prepare(train=True)` draws random numbers (augmentation): such cells train unpacked.
    random_prepare: bool = False

    @property
    def metric_name(self) -> str:
        """The primary metric: rel_l2 for regression, accuracy for classification."""
        return "rel_l2" if self.kind == "regression" else "accuracy"

    @property
    def metric_direction(self) -> Literal["minimize", "maximize"]:
        return "minimize" if self.kind == "regression" else "maximize"

    def load(self, seed: int) -> TaskData:
        """The task's data for one trial seed (training sample/subset depends on the seed)."""
        raise NotImplementedError

    def stage(self, x: torch.Tensor) -> torch.Tensor:
        """Once per trial, on the device: turn a whole stored set into what batches are cut from.

        Identity by default; MNIST-sized image sets are normalised here once, so no batch pays it.
        """
        return x

    def stage_key(self) -> object:
        """What `stage` depends on besides its input (None: nothing); equal keys may share staged sets."""
        return None

    def prepare(self, x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Turn a staged batch (on the device) into model inputs. Identity by default."""
        return x

    def loss(self, pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The training loss over the N samples of a batch: their mean, or with `reduction="sum"`
        their sum (the paper's eq. 1.2: the sum of squared errors).

        Squared error for regression (pred [..., N, 1], target [..., N]); cross-entropy for
        classification (pred [..., N, C] logits, target [..., N]). Leading dimensions stay: one
        network gives a scalar, K packed networks (pred [K, N, out]) give one loss per network [K].
        """
        if reduction not in ("mean", "sum"):
            raise InputError(f"unknown loss reduction {reduction!r}; choose one of: mean, sum")
        if self.kind == "regression":
            per_sample = (pred.squeeze(-1) - target).pow(2)  # [..., N]
        else:
            per_sample = F.cross_entropy(pred.flatten(0, -2), target.flatten(), reduction="none").view(target.shape)
        return per_sample.sum(dim=-1) if reduction == "sum" else per_sample.mean(dim=-1)

    def metrics(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Test metrics of predictions on a whole evaluation set."""
        if self.kind == "regression":
            return _metrics.regression_metrics(pred, target)
        return _metrics.classification_metrics(pred, target)

    def prediction_grid(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(x [G, 1], target [G]) on a fixed fine grid for 1-D tasks; None otherwise."""
        return None
