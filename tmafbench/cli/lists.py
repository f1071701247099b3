"""`tmafbench tasks | models | activations`: what exists, with each one's parameters.

The lists are read from the source (`Registry.catalog`): printing them imports no torch.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tmafbench.registries import ACTIVATIONS, MODELS, TASKS


def print_rows(title: str, rows: list[tuple[str, str, str]]) -> None:
    """A table of (name, summary, parameters) rows on stdout."""
    table = Table(title=title, show_lines=False)
    for column in ("name", "parameters", "summary"):
        table.add_column(column, overflow="fold")
    for name, summary, params in rows:  # shown as written: "[left, right]" is no markup tag
        table.add_row(escape(name), escape(params) or "-", escape(summary))
    Console(width=max(Console().width, 120)).print(table)


def list_tasks() -> None:
    """List the tasks and their parameters."""
    print_rows("tasks", TASKS.catalog())


def list_models() -> None:
    """List the models and their parameters."""
    print_rows("models", MODELS.catalog())


def list_activations() -> None:
    """List the activations and their parameters."""
    print_rows("activations", ACTIVATIONS.catalog())


def register(app: typer.Typer) -> None:
    app.command("tasks")(list_tasks)
    app.command("models")(list_models)
    app.command("activations")(list_activations)
