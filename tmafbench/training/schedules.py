"""Learning-rate schedules, stepped once per optimiser step.

- constant: lr throughout;
- step-half: the paper's: lr for the first half of the steps, lr x 0.1 for the second half;
- cosine: cosine decay from lr to 0 over all steps;
- onecycle: torch's OneCycleLR with max_lr = each group's lr.

`schedule_factor` is the one formula of the first three, for torch's optimisers (`build_scheduler`)
and for the packed optimiser (training/packed.py) alike.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from tmafbench.core import SCHEDULES


def schedule_factor(name: str, step: int, total_steps: int) -> float:
    """The multiplier of the base lr before optimiser step `step` (0-based) of `total_steps` (constant,
    step-half and cosine; onecycle is torch's own)."""
    total_steps = max(int(total_steps), 1)
    if name == "step-half":
        return 1.0 if step < total_steps / 2 else 0.1
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int) -> LRScheduler:
    """The schedule `name` over `total_steps` optimiser steps (>= 1)."""
    total_steps = max(int(total_steps), 1)
    if name in ("constant", "step-half", "cosine"):
        return LambdaLR(optimizer, lambda step: schedule_factor(name, step, total_steps))
    if name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps + 1)  # +1: never step past the end
    raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
