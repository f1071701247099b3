"""Training: `train_trial(config) -> TrialResult`, schedules, seeding, timing.

The configs and the result live in `tmafbench.core` (shared by every layer); they are also
reachable here. Names load on first use (PEP 562), so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "TrainingConfig": "tmafbench.core", "TrialConfig": "tmafbench.core", "EpochRecord": "tmafbench.core",
    "TrialResult": "tmafbench.core", "seed_everything": "tmafbench.training.seeding",
    "train_trial": "tmafbench.training.trainer",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tmafbench.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
