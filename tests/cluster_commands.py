"""The commands of the README's "Run on a cluster" section that the Slurm tests run as written.

tests/cli/test_readme_cluster.py checks that the README shows each of them verbatim; the tests run
them from a scratch folder, so `examples/` is made absolute there.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

CREATE = "tmafbench study create examples/slurm/smoke.toml"
SBATCH = "sbatch --array=0-1 examples/slurm/worker.sbatch cluster-smoke"
SUBMIT = "tmafbench study submit cluster-smoke --executor slurm --jobs 2 --cpus-per-task 1 --time 10"
STATUS = "tmafbench study status cluster-smoke"
SCANCEL = "scancel JOBID"

README_COMMANDS = (CREATE, SBATCH, SUBMIT, STATUS)


def command_line(command: str) -> str:
    """The command as a test runs it from another folder: repository paths made absolute."""
    return command.replace("examples/", f"{REPO_ROOT}/examples/")
