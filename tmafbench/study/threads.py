"""How many threads a CPU worker takes: the CPUs this process may use, divided among its workers.

`os.cpu_count()` counts every core of the machine. Under a batch scheduler a process may use far
fewer: `srun -c1` on a 64-core node shared by 64 tasks would otherwise run 64 threads per task,
64x oversubscribed. So the budget is the process's CPU affinity (`os.sched_getaffinity`, which
Slurm's task/affinity and task/cgroup plugins, `taskset` and containers restrict), and never more
than `SLURM_CPUS_PER_TASK` where Slurm sets it (a cluster whose task plugin leaves the affinity
alone still sets that). An explicit `--threads` wins over both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SLURM_CPUS = "SLURM_CPUS_PER_TASK"


@dataclass(frozen=True)
class ThreadPlan:
    """Threads per CPU worker, and why: shown when the workers start."""

    threads: int
    reason: str

    def describe(self) -> str:
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} each ({self.reason})"


def usable_cpus() -> tuple[int, str]:
    """The CPUs this process may use, and what says so."""
    try:
        cpus, source = len(os.sched_getaffinity(0)), "CPU affinity"
    except AttributeError:  # no affinity on this platform (macOS)
        cpus, source = os.cpu_count() or 1, "os.cpu_count()"
    slurm = _positive_int(os.environ.get(SLURM_CPUS))
    if slurm is not None and slurm < cpus:
        return slurm, f"{SLURM_CPUS}={slurm}"
    return cpus, f"{cpus} CPU{'s' if cpus != 1 else ''} in this process's {source}"


def thread_plan(workers: int, explicit: int | None = None) -> ThreadPlan:
    """Threads for each of `workers` CPU workers in this process: `explicit` (`--threads`), else the
    usable CPUs divided among them (at least 1)."""
    if explicit is not None:
        return ThreadPlan(explicit, "--threads")
    cpus, reason = usable_cpus()
    share = max(1, cpus // max(1, workers))
    if workers > 1:
        reason += f", shared by {workers} workers"
    return ThreadPlan(share, reason)


def _positive_int(text: str | None) -> int | None:
    """SLURM_CPUS_PER_TASK as a number; None when unset or not a positive integer."""
    try:
        value = int(text) if text is not None else 0
    except ValueError:
        return None
    return value if value >= 1 else None
