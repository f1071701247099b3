"""Learning-rate schedules, stepped once per optimiser step.

- constant: lr throughout;
- step-half: the paper's: lr for the first half of the steps, lr x 0.1 for the second half;
- cosine: cosine decay from lr to 0 over all steps;
- onecycle: torch's OneCycleLR with max_lr = each group's lr.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from tmafbench.errors import InputError

SCHEDULES = ("constant", "step-half", "cosine", "onecycle")


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int) -> LRScheduler:
    """The schedule `name` over `total_steps` optimiser steps (>= 1)."""
    total_steps = max(int(total_steps), 1)
    if name == "constant":
        return LambdaLR(optimizer, lambda step: 1.0)
    if name == "step-half":
        half = total_steps / 2
        return LambdaLR(optimizer, lambda step: 1.0 if step < half else 0.1)
    if name == "cosine":
        return LambdaLR(optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    if name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps + 1)  # +1: never step past the end
    raise InputError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
