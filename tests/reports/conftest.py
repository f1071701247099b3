"""Fixtures for the report tests: the hand-valued study of hand_study.py in a temporary SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from hand_study import write_hand_study
from tmafbench.store.schema import Base


@pytest.fixture
def hand_db(tmp_path: Path) -> str:
    """URL of a fresh SQLite file holding the hand-valued study "hand"."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    write_hand_study(url)
    return url


@pytest.fixture
def new_db(tmp_path: Path):
    """(url, session) on a fresh SQLite file with the tmaf_* tables: add rows, commit, then read url."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        yield url, session
    engine.dispose()
