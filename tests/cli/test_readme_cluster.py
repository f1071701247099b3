"""The README's "Run on a cluster" section shows the commands the Slurm tests run (tests/cluster_commands.py)."""

from __future__ import annotations

import re

import pytest

from cluster_commands import README_COMMANDS, REPO_ROOT


def cluster_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"^## Run on a cluster\n(.*?)^## ", readme, re.S | re.M)
    assert match, "README.md has no 'Run on a cluster' section"
    return match.group(1)


@pytest.mark.parametrize("command", README_COMMANDS)
def test_the_readme_shows_what_ci_runs(command):
    code_lines = {line.strip() for line in re.findall(r"```bash\n(.*?)```", cluster_section(), re.S)
                  for line in line.splitlines()}
    assert command in code_lines


def test_the_files_it_names_exist():
    for path in ("examples/slurm/worker.sbatch", "examples/slurm/smoke.toml"):
        assert path in cluster_section() and (REPO_ROOT / path).is_file()
