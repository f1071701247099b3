"""`Section`: one part of a report (a task's comparison, or a tuned study's tuning), with its own
metric, tables, figures and notes. Its own module so that the parts that build sections (render,
tuning) need not import each other."""

from __future__ import annotations

from dataclasses import dataclass, field

from tmafbench.reports.plotting import Figure
from tmafbench.reports.tables import Table


@dataclass
class Section:
    """One task's part of the report: its own primary metric, tables and figures."""

    task: str
    prefix: str  # file-name prefix of its tables and figures ("" with a single task)
    metric: str | None
    direction: str | None
    baseline: str | None
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
