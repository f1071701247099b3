"""Training: `train_trial(config) -> TrialResult`, configs, results, schedules, seeding, timing.

The names below load on first use (PEP 562), so that importing `tmafbench.training.config` or
`.result` (plain dataclasses, needed by the CLI, study files and reports) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "TrainingConfig": "config", "TrialConfig": "config", "EpochRecord": "result", "TrialResult": "result",
    "seed_everything": "seeding", "train_trial": "trainer",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tmafbench.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tmafbench.training.{_WHERE[name]}"), name)
