"""Fixtures for the report tests: the hand-valued study of hand_study.py in a temporary SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from hand_study import write_hand_study


@pytest.fixture
def hand_db(tmp_path: Path) -> str:
    """URL of a fresh SQLite file holding the hand-valued study "hand"."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    write_hand_study(url)
    return url
