"""A worker loop for tests/study/test_threads.py: it trains nothing and reports the torch threads its
worker process was given (a module of its own, so spawned worker processes can import it)."""

from __future__ import annotations

from tmafbench.study.worker import WorkerOptions, WorkerStats


def report_threads(study_name: str, url: str, device: str = "cpu", options: WorkerOptions | None = None) -> WorkerStats:
    import torch

    return WorkerStats(worker=str(torch.get_num_threads()))
