"""Tasks: regression of smooth functions and image classification.

`create(name, **params)` is the one place a task name becomes a Task (DESIGN.md section 1).
"""

from __future__ import annotations

from typing import Any

from tmafbench.registry import Registry
from tmafbench.tasks.base import Task, TaskData
from tmafbench.tasks.functions import Expression, Oscillatory, SineSum
from tmafbench.tasks.vision import CIFAR10, MNIST, FashionMNIST

REGISTRY: Registry[Task] = Registry("task")
for _cls in (SineSum, Oscillatory, Expression, MNIST, FashionMNIST, CIFAR10):
    REGISTRY.register(_cls.name)(_cls)


def create(name: str, **params: Any) -> Task:
    """Build the task `name`; unknown names or parameters raise ValueError with the choices."""
    return REGISTRY.create(name, **params)


def available() -> list[str]:
    return REGISTRY.available()


def describe() -> list[tuple[str, str, str]]:
    """(name, summary, parameters) rows for `tmafbench tasks`."""
    return REGISTRY.describe()


__all__ = ["Task", "TaskData", "create", "available", "describe", "REGISTRY"]
