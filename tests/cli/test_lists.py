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


def test_studies_lists_every_packaged_study_on_one_line_each():
    from tmafbench.study.files import PACKAGED

    result = runner.invoke(app, ["studies"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    names = sorted(p.stem for p in PACKAGED.glob("*.toml"))
    assert len(names) >= 20 and [line.split()[0] for line in lines] == names
    assert any(line.startswith("paper-table-3-2 ") and "Table 3.2" in line for line in lines)
