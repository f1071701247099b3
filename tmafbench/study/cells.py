"""Expand a StudySpec into cells: one TrialConfig each, with its axis values and group label.

Only meaningful combinations are made: an activation without an interval grid (ReLU) gets one
cell per seed, not one per grid; a scoped axis applies only to the activations / tasks it names.
A cell's identity is `TrialConfig.config_hash()`; its group (all axes but the seed) is
`TrialConfig.group_hash()`.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

from tmafbench.study.spec import (
    GRID_KEYS,
    ActivationSpec,
    AxisValues,
    GridSpec,
    ScopedAxis,
    ScopedCases,
    StudySpec,
    TaskSpec,
)
from tmafbench.core import TrainingConfig, TrialConfig


@dataclass(frozen=True)
class CellPlan:
    """One cell of a study, before it is stored."""

    config: TrialConfig
    axes: dict[str, Any]  # every axis value by name, incl. "activation" (label), "grid", "seed"
    label: str  # the group's readable label (no seed)
    activation: str  # the activation label
    grid: str | None = None
    intervals: int | None = None
    config_hash: str = field(init=False)
    group_hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config_hash", self.config.config_hash())
        object.__setattr__(self, "group_hash", self.config.group_hash())


def activation_param_names(name: str) -> set[str]:
    """Parameter names the activation `name` takes (none for a name that is not registered)."""
    from tmafbench import activations  # noqa: F401 - importing the package registers its activations
    from tmafbench.registries import ACTIVATIONS

    if name not in ACTIVATIONS.available():
        return set()
    return {p.name for p in ACTIVATIONS.entry(name).params}


def takes_grid(name: str) -> bool:
    """True for activations with an interval grid (TMAF family), False for ReLU and friends."""
    return bool(activation_param_names(name) & {"intervals", "breakpoints"})


def own_grid(act: ActivationSpec) -> bool:
    """An activation whose params already set a grid ignores the study's grids."""
    return any(k in act.params for k in GRID_KEYS)


def grids_for(spec: StudySpec, act: ActivationSpec) -> list[GridSpec | None]:
    """The study grids an activation is crossed with; [None] when it has no (study) grid."""
    if not takes_grid(act.name) or own_grid(act) or not spec.axes.grids:
        return [None]
    if act.grids is None:
        return list(spec.axes.grids)
    return [g for g in spec.axes.grids if g.default_label() in act.grids]


def _axis(values: AxisValues | None, task: str, activation: str) -> list[Any] | None:
    if values is None:
        return None
    if isinstance(values, ScopedAxis):
        return list(values.values) if values.applies(task, activation) else None
    if isinstance(values, ScopedCases):
        return values.values_for(task, activation)
    return list(values)


def axis_lists(spec: StudySpec, task: TaskSpec, act: ActivationSpec) -> dict[tuple[str, str], list[Any]]:
    """{(section, key): values} of every axis that applies to this task and activation."""
    axes = spec.axes
    found: dict[tuple[str, str], list[Any]] = {}
    for key in ("depth", "width"):
        values = _axis(getattr(axes, key), task.key, act.key)
        if values is not None:
            found[("model_params", key)] = values
    for section in ("task_params", "model_params", "training"):
        for key, raw in getattr(axes, section).items():
            values = _axis(raw, task.key, act.key)
            if values is not None:
                found[(section, key)] = values
    return found


def _grid_label(act: ActivationSpec, params: dict[str, Any], grid: GridSpec | None) -> tuple[str | None, int | None]:
    from tmafbench import activations

    if grid is not None and grid.label:
        return grid.label, grid.inner_intervals()
    label, intervals = activations.grid_info(act.name, params)
    if label is not None:
        return label, intervals
    if grid is not None:
        return grid.default_label(), grid.inner_intervals()
    if own_grid(act):  # grid_info unknown: describe the activation's own grid ourselves
        own = GridSpec(**{k: act.params[k] for k in GRID_KEYS if k in act.params})
        return own.default_label(), own.inner_intervals()
    return None, None


def group_label(activation: str, grid: str | None, axes: dict[str, Any], task: str | None) -> str:
    """e.g. "tmaf [-5,5]/10 depth=1 width=20 n=3" (+ " task=mnist" when the study has several tasks)."""
    skip = {"activation", "grid", "intervals", "seed", "task"}
    parts = [activation] + ([grid] if grid else [])
    parts += [f"{k}={v}" for k, v in axes.items() if k not in skip]
    if task is not None:
        parts.append(f"task={task}")
    return " ".join(parts)


def _combos(spec: StudySpec, task: TaskSpec, act: ActivationSpec) -> Iterator[tuple[GridSpec | None, dict[tuple[str, str], Any]]]:
    lists = axis_lists(spec, task, act)
    keys = list(lists)
    for grid in grids_for(spec, act):
        for values in itertools.product(*(lists[k] for k in keys)):
            yield grid, dict(zip(keys, values))


def expand(spec: StudySpec) -> list[CellPlan]:
    """Every cell of the study, in a stable order (task, activation, grid, axes, seed)."""
    defaults = spec.defaults
    several_tasks = len(spec.tasks()) > 1
    cells: list[CellPlan] = []
    for task in spec.tasks():
        model = task.model or defaults.model
        for act in spec.axes.activations:
            for grid, picked in _combos(spec, task, act):
                sections: dict[str, dict[str, Any]] = {
                    "task_params": {**defaults.task_params, **task.params},
                    "model_params": {**defaults.model_params, **task.model_params},
                    "training": {**defaults.training, **task.training},
                }
                for (section, key), value in picked.items():
                    sections[section][key] = value
                act_params = {**act.params, **(grid.params() if grid else {})}
                grid_label, intervals = _grid_label(act, act_params, grid)
                axes: dict[str, Any] = {"task": task.key, "activation": act.key, "grid": grid_label, "intervals": intervals}
                for key in ("depth", "width"):
                    if key in sections["model_params"]:
                        axes[key] = sections["model_params"][key]
                axes.update({key: value for (_s, key), value in picked.items()})
                label = group_label(act.key, grid_label, axes, task.key if several_tasks else None)
                base = TrialConfig(
                    task=task.name,
                    model=model,
                    activation=act.name,
                    task_params=sections["task_params"],
                    model_params=sections["model_params"],
                    act_params=act_params,
                    training=TrainingConfig.from_dict(sections["training"]),
                )
                for seed in spec.axes.seed_list():
                    cells.append(
                        CellPlan(
                            config=base.replace(seed=seed),
                            axes={**axes, "seed": seed},
                            label=label,
                            activation=act.key,
                            grid=grid_label,
                            intervals=intervals,
                        )
                    )
    return cells


def cells_hash(cells: list[CellPlan]) -> str:
    """The study's design hash: which cells it has (order and description do not matter)."""
    blob = "\n".join(sorted(c.config_hash for c in cells))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
