"""Shared fixtures: where the real data lives, and the PostgreSQL test server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from processes import reap

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


# The suite runs the trainable-activation family eagerly: torch.compile takes tens of seconds per
# graph here. tests/activations/test_compiled.py compiles on purpose. (Set before anything reads
# it, and inherited by the worker processes tests start.)
os.environ.setdefault("TMAFBENCH_COMPILE", "off")
# Without a GPU the Triton kernel is tested under Triton's interpreter. triton.language makes its own
# helpers compiled or interpreted once, when first imported (torch.compile imports it too), so the
# setting must hold before any test imports triton.
if not _cuda_present():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def shared_data_dir() -> Path | None:
    """TMAFBENCH_DATA, else ../shared/data beside the checkout; None when neither exists."""
    for candidate in (os.environ.get("TMAFBENCH_DATA"), REPO_ROOT.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def real_data_dir() -> Path:
    """The folder with real MNIST / CIFAR-10; skips the test when absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data not found: set TMAFBENCH_DATA or provide ../shared/data")
    return path


@pytest.fixture
def postgres_url() -> str:
    """URL of a reachable PostgreSQL test database (TMAFBENCH_TEST_POSTGRES); skips otherwise."""
    url = os.environ.get("TMAFBENCH_TEST_POSTGRES")
    if not url:
        pytest.skip("no PostgreSQL server: set TMAFBENCH_TEST_POSTGRES (.ci/run starts one)")
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # unreachable server: skip with the reason
        pytest.skip(f"PostgreSQL at TMAFBENCH_TEST_POSTGRES not reachable: {exc.__class__.__name__}")
    return url


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Kill the process groups a test started (tests/processes.py) once it ends, pass or fail."""
    yield
    reap()
