"""Threads per CPU worker follow the CPUs the process may use (study/threads.py): its CPU affinity,
capped by SLURM_CPUS_PER_TASK, divided among the local workers; an explicit --threads wins.

Each case runs in a child process whose affinity is restricted with os.sched_setaffinity (the
pytest process keeps its own), through the real path: `study worker` on a created study, and the
torch thread count the spawned worker processes actually run with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tmafbench.cli import app

# Each test starts processes that import torch (6-15 s each on a 2-core machine): slow.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                 reason="needs CPU affinity and at least 2 usable CPUs")]

ONE_CPU = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
ALL_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

# Run in the child: restrict the affinity (or not), then run the workers with a loop that reports the
# torch threads each spawned worker process runs with.
PROBE = """
import json, os, sys
cpus = json.loads(sys.argv[1])
if cpus is not None:
    os.sched_setaffinity(0, set(cpus))
from tmafbench.study.local import run_processes
from tmafbench.study.threads import thread_plan
from tmafbench.study.worker import WorkerOptions
from threads_probe import report_threads
workers, explicit = int(sys.argv[2]), json.loads(sys.argv[3])
outcome = run_processes("none", "sqlite://", ["cpu"] * workers, WorkerOptions(threads=explicit), loop=report_threads)
print(json.dumps({"plan": thread_plan(workers, explicit).describe(),
                  "torch": sorted(int(w.worker) for w in outcome.workers)}))
"""


def probe(cpus: list[int] | None, workers: int = 1, explicit: int | None = None, slurm_cpus: str | None = None
          ) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CPUS_PER_TASK"}
    if slurm_cpus is not None:
        env["SLURM_CPUS_PER_TASK"] = slurm_cpus
    here = str(Path(__file__).parent)
    env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cpus), str(workers), json.dumps(explicit)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_restricted_affinity_sets_the_threads():
    result = probe([ONE_CPU])
    assert result == {"plan": "1 thread each (1 CPU in this process's CPU affinity)", "torch": [1]}


def test_the_whole_affinity_is_shared_among_the_workers():
    result = probe(None, workers=2)
    share = ALL_CPUS // 2
    assert result["torch"] == [share, share]
    assert result["plan"] == (f"{share} thread{'s' if share != 1 else ''} each ({ALL_CPUS} CPUs in this process's "
                              "CPU affinity, shared by 2 workers)")


def test_slurm_cpus_per_task_caps_an_unrestricted_affinity():
    """Slurm's task/none plugin leaves the affinity alone; SLURM_CPUS_PER_TASK still says the share."""
    result = probe(None, slurm_cpus="1")
    assert result == {"plan": "1 thread each (SLURM_CPUS_PER_TASK=1)", "torch": [1]}


def test_the_affinity_wins_over_a_larger_slurm_share():
    result = probe([ONE_CPU], slurm_cpus=str(ALL_CPUS * 8))
    assert result == {"plan": "1 thread each (1 CPU in this process's CPU affinity)", "torch": [1]}


def test_a_malformed_slurm_share_is_ignored():
    assert probe([ONE_CPU], slurm_cpus="2(x3)")["torch"] == [1]


def test_explicit_threads_win():
    result = probe([ONE_CPU], explicit=2, slurm_cpus="1")
    assert result == {"plan": "2 threads each (--threads)", "torch": [2]}


def test_study_worker_says_its_threads_under_a_restricted_affinity(tmp_path, tiny_spec_file):
    """The CLI end to end: `study worker` in a child pinned to one CPU says 1 thread and finishes the study."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    created = CliRunner().invoke(app, ["study", "create", str(tiny_spec_file), "--storage", url])
    assert created.exit_code == 0, created.output
    script = ("import os, sys\n"
              f"os.sched_setaffinity(0, {{{ONE_CPU}}})\n"
              "sys.argv = ['tmafbench', 'study', 'worker', 'tiny', '--storage', sys.argv[1]]\n"
              "from tmafbench.cli import main\n"
              "main()\n")
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CPUS_PER_TASK"}
    out = subprocess.run([sys.executable, "-c", script, url], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = (out.stdout + out.stderr).splitlines()
    assert lines[0].startswith("joining study 'tiny'"), lines[:3]
    assert "1 worker(s) on cpu, 1 thread each (1 CPU in this process's CPU affinity)" in lines[1], lines[:3]
