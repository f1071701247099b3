"""Tiny real studies: sine-sum n=1, 64 samples, one epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = """
name = "tiny"
description = "two activations, two seeds"
[defaults]
task = "sine-sum"
model = "mlp"
task_params = { n = 1, train_size = 64, test_size = 64 }
model_params = { depth = 1, width = 8 }
training = { epochs = 1, batch_size = 32 }
[axes]
seeds = 2
[[axes.activations]]
name = "relu"
[[axes.activations]]
name = "tanh"
"""


@pytest.fixture
def tiny_spec_text() -> str:
    return TINY


@pytest.fixture
def tiny_spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"
