"""Tiny real studies (tests/tiny_specs.py): sine-sum n=1, 64 samples, one epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_specs import TINY


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
