"""Tasks: regression of smooth functions and image classification.

`create(name, **params)` is the one place a task name becomes a Task (docs/design.md section 1).
"""

from __future__ import annotations

from typing import Any

# Importing the modules registers their tasks.
from tmafbench.registries import TASKS as REGISTRY
from tmafbench.tasks import functions, vision  # noqa: F401
from tmafbench.tasks.base import Task, TaskData


def create(name: str, **params: Any) -> Task:
    """Build the task `name`; unknown names or parameters raise ValueError with the choices."""
    return REGISTRY.create(name, **params)


def available() -> list[str]:
    return REGISTRY.available()


def describe() -> list[tuple[str, str, str]]:
    """(name, summary, parameters) rows for `tmafbench tasks`."""
    return REGISTRY.describe()


__all__ = ["Task", "TaskData", "create", "available", "describe", "REGISTRY"]
