"""Every help page reads the way Typer's users know it: flags take no value, usage lines name
arguments in capitals (the typer pin in pyproject.toml explains why this can break)."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from tmafbench.cli import app

runner = CliRunner()


def _command_paths(command, prefix=()):
    yield prefix
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _command_paths(sub, prefix + (name,))


PATHS = list(_command_paths(typer.main.get_command(app)))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "tmafbench")
def test_help_page(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "<bool>" not in text and "{" not in text.split("Usage:")[1].splitlines()[0]
    assert not re.search(r"--help\s+\S*bool", text)


def test_flags_and_arguments_look_as_expected():
    text = runner.invoke(app, ["study", "run", "--help"]).output
    assert "study run [OPTIONS] STUDY_FILE" in " ".join(text.split())
    assert re.search(r"--force\s+When the study exists", text)  # a flag: no type between name and help
    assert re.search(r"--workers\s+-w\s+INTEGER", text)
    assert len(PATHS) > 15  # every command and group was visited
