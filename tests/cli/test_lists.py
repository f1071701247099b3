"""`tmafbench tasks | models | activations` list every registered name with its parameters."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tmafbench import activations, models, tasks
from tmafbench.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command, module, param", [
    ("tasks", tasks, "train_size"),
    ("models", models, "width"),
    ("activations", activations, None),
])
def test_lists_show_names_and_parameters(command, module, param):
    result = runner.invoke(app, [command])
    assert result.exit_code == 0, result.output
    for name in module.available():
        assert name in result.stdout
    if param:
        assert param in result.stdout


def test_task_list_shows_formula_and_defaults():
    out = runner.invoke(app, ["tasks"]).stdout
    assert "formula" in out and "n=1" in out and "augment=True" in out



def test_rows_are_shown_as_written(capsys):
    """Brackets in a summary or a default are text, not rich markup (pwlu's "[left, right]" vanished)."""
    from tmafbench.cli.lists import print_rows

    print_rows("things", [("thing", "Linear on a range [left, right].", "shape=[1, 2]")])
    out = capsys.readouterr().out
    assert "Linear on a range [left, right]." in out and "shape=[1, 2]" in out
