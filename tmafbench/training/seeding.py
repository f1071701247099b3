"""One seeding function driven by the trial seed (docs/design.md: no scattered manual_seed calls)."""

from __future__ import annotations

import random

import numpy as np
import torch

STREAM_ORDER = 7  # the data-order / augmentation stream, apart from the tasks' sampling streams


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (weight init, CPU and CUDA) and return the data-order generator.

    The returned CPU generator drives the per-epoch permutation and augmentation, so weight
    init and data order are both fixed by `seed` alone. Task data is sampled by the task from
    the same seed (`Task.load(seed)`).
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed * 1_000_003 + STREAM_ORDER)
