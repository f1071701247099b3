"""A tuned study's plan: its activation groups and their tuning slots, as pure functions of the design.

Nothing here reads a database, imports Optuna or trains: `study create`, the workers, the reports
and the tests all compute the same groups and slots from the same design.

- A *group* is one activation setting (every axis but the seed): its evaluation cells (one per
  evaluation seed) share one search space and one Optuna study, `<name>/tune/<group label>`.
- A *slot* is one of a group's `tune.trials` tuning trials, stored as a cell of the child study
  `<name>/tune`, so every group gets exactly the same budget whatever the workers do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from tmafbench.core import TrialConfig
from tmafbench.study.cells import CellPlan
from tmafbench.study.design import StudyDesign
from tmafbench.study.tune_spec import SpaceParam, TuneSpec, group_bases, space_for

TUNE_SUFFIX = "/tune"


def tune_study_name(name: str) -> str:
    """The child study that holds a tuned study's slots (and prefixes its groups' Optuna studies)."""
    return name + TUNE_SUFFIX


def tune_of(design: StudyDesign) -> TuneSpec:
    """The design's `[tune]` table; a grid study has none, and asking for it is a bug of ours."""
    if design.tune is None:
        raise ValueError(f"study {design.name!r} has no [tune] table")
    return design.tune


@dataclass(frozen=True)
class Group:
    """One activation group: its untuned evaluation cells, its share of the space, its Optuna study."""

    index: int
    label: str
    group_hash: str  # of the untuned base config
    cells: tuple[CellPlan, ...]  # evaluation cells before tuning (one per evaluation seed)
    space: dict[str, SpaceParam]
    optuna_name: str

    @property
    def base(self) -> CellPlan:
        return self.cells[0]


@dataclass(frozen=True)
class SlotPlan:
    """A tuning slot as a cell (the attributes the store keeps of a cell); config_hash names (group, slot)."""

    config: TrialConfig  # the group's base tuning config
    axes: dict[str, Any]
    label: str
    activation: str
    grid: str | None
    intervals: int | None
    config_hash: str
    group_hash: str
    slot: int


def groups_of(tuned: StudyDesign, name: str) -> list[Group]:
    """The study's activation groups in study order."""
    cells = tuned.cells
    by_group: dict[str, list[CellPlan]] = {}
    for cell in cells:
        by_group.setdefault(cell.group_hash, []).append(cell)
    labels = [c.label for c in group_bases(cells)]
    groups = []
    for i, base in enumerate(group_bases(cells)):
        label = base.label if labels.count(base.label) == 1 else f"{base.label} #{base.group_hash[:6]}"
        groups.append(Group(i, label, base.group_hash, tuple(by_group[base.group_hash]), space_for(base, tuned.space),
                            f"{tune_study_name(name)}/{label}"))
    return groups


def tuning_config(tuned: StudyDesign, group: Group) -> TrialConfig:
    """The group's base config for tuning: validation split on, test set off, no training-set
    metrics (tuning reads the validation metric only), no artifacts."""
    tune = tune_of(tuned)
    base = group.base.config
    training = base.training.replace(val_fraction=tune.val_fraction, evaluate_test=False, evaluate_train=False,
                                     keep_predictions=False, keep_activation_params=False)
    return base.replace(training=training, seed=tune.tune_seed_list()[0])


def slot_plans(tuned: StudyDesign, groups: list[Group]) -> list[SlotPlan]:
    """`tune.trials` slots per group, in (group, slot) order."""
    plans = []
    for group in groups:
        config = tuning_config(tuned, group)
        base = group.base
        axes = {k: v for k, v in base.axes.items() if k != "seed"}
        for k in range(tune_of(tuned).trials):
            digest = hashlib.sha256(f"{group.group_hash}/slot/{k}".encode()).hexdigest()[:16]
            plans.append(SlotPlan(config, {**axes, "slot": k}, group.label, base.activation, base.grid, base.intervals,
                                  digest, group.group_hash, k))
    return plans
