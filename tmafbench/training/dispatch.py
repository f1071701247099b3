"""How a worker's claimed cells get trained: packed where they can be, or one by one.

A worker hands its cells to a `ManyFn`: configs in, one outcome per config out (a TrialResult, or
the exception that ended that cell). `many_fn()` is the real trainer's, packed (training/packed.py);
`many_fn(trial_fn)` trains each config alone with any `TrialFn` (a test's stand-in).

This module imports no torch at import time: worker processes (spawn) set CUDA_VISIBLE_DEVICES
before torch starts, and the trainer is imported only when a cell trains.
"""

from __future__ import annotations

from typing import Protocol

from tmafbench.core import OnEpoch, Outcome, TrialConfig, TrialResult


class TrialFn(Protocol):
    """One config trained alone: `training.train_trial`'s signature."""

    def __call__(self, config: TrialConfig, *, on_epoch: OnEpoch = None) -> TrialResult: ...


class ManyFn(Protocol):
    """Configs trained together where they can be; `on_epochs[k]` is config k's epoch callback."""

    def __call__(self, configs: list[TrialConfig], on_epochs: list[OnEpoch] | None = None, /) -> list[Outcome]: ...


def one_by_one(trial_fn: TrialFn) -> ManyFn:
    """A ManyFn that trains each config alone with `trial_fn` (an exception is that cell's outcome)."""

    def train_many(configs: list[TrialConfig], on_epochs: list[OnEpoch] | None = None, /) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for config, on_epoch in zip(configs, on_epochs or [None] * len(configs)):
            try:
                outcomes.append(trial_fn(config, on_epoch=on_epoch))
            except Exception as exc:  # noqa: BLE001 - the cell's own failure
                outcomes.append(exc)
        return outcomes

    return train_many


def packed_many(configs: list[TrialConfig], on_epochs: list[OnEpoch] | None = None, /) -> list[Outcome]:
    """The real trainer: configs that pack train as one model (training/packed.py), the others alone."""
    from tmafbench.training.packed import train_many

    return train_many(configs, on_epochs)


def many_fn(trial_fn: TrialFn | None = None) -> ManyFn:
    """Packed training for the real trainer (no `trial_fn`); one by one for any other trial function."""
    return packed_many if trial_fn is None else one_by_one(trial_fn)


def default_trial_fn() -> TrialFn:
    """The real trainer, `training.train_trial` (imported on first use: it imports torch)."""
    from tmafbench.training.trainer import train_trial

    return train_trial
