"""Fair tuning: the same Optuna budget for every activation group, then fresh evaluation seeds.

Two phases, both drained by the one worker loop (loop.py) on the store's run queue:

1. **Tuning.** Study `<name>/tune` (Study.kind "tune", parent = the main study) has one cell per
   trial *slot*: `tune.trials` slots per group, so every group gets exactly the same budget even
   with several workers, kills and resumes (a slot is claimed like any cell; completed slots are
   never run twice). The worker that claims slot k of group g asks the group's Optuna study
   (`<name>/tune/<group label>`, TPE sampler, the chosen pruner) for a point (runners.SlotRunner),
   trains it on every tuning seed with a validation split (`training.val_fraction`) and
   `evaluate_test=False`, reports the per-epoch validation metric for pruning (step = seed index *
   epochs + epoch), stores the run, then `tell`s Optuna. A pruned trial is a finished slot.
2. **Evaluation.** When every slot is final, each group's best trial (`core.best_trial`: lowest /
   highest mean validation metric among the non-pruned completed slots; ties: lowest trial number)
   gives the settings of its evaluation cells: the group's base config with those values, on the
   evaluation seeds, trained on the full training set and measured on the test set. They are
   ordinary cells of the main study `<name>` (Study.kind "eval").

Stored per tuning run (Run of a slot cell; see also store/schema.py):
- epoch metrics with epoch = seed index * epochs + epoch, only "val_*" metrics and train_loss;
- final metrics: the mean over the tuning seeds of each val_* metric and train_loss, and
  "pruned" (0 or 1);
- artifact "tuning" = {"trial_number", "state" (completed|pruned|failed; the first release wrote
  complete|fail), "value", "params", "seeds", "per_seed", "config"}: the settings it trained with.
A slot cell's own `config` is the group's base tuning config (before the sampled values).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

from tmafbench.core import (Direction, EpochRecord, OnEpoch, Outcome, RunStatus, SlotState, TrialConfig, TrialResult,
                            best_trial, metric_direction)
from tmafbench.errors import TmafbenchError
from tmafbench.store.repository import Repository
from tmafbench.study.cells import CellPlan
from tmafbench.study.design import StudyDesign
from tmafbench.study.plan import Group, tune_of
from tmafbench.study.tune_spec import apply_params
from tmafbench.training.dispatch import ManyFn, TrialFn, many_fn, one_by_one

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import Trial

T = TypeVar("T")


class Retry(Protocol):
    """Runs a database call, waiting out a database that blinks (the worker's `CellExecutor.retry`)."""

    def __call__(self, fn: Callable[[], T], /) -> T: ...


def _call(fn: Callable[[], T], /) -> T:
    return fn()


# --- one tuning slot -----------------------------------------------------------------------------------


class TuningProtocolError(TmafbenchError):
    """A tuning run produced a test metric: the protocol forbids it."""


def _guard(record: EpochRecord) -> None:
    test_metrics = [k for k in record.metrics if not k.startswith("val_")]
    if test_metrics:
        raise TuningProtocolError(f"a tuning run measured test metrics {test_metrics}; tuning reads validation metrics only")


@dataclass
class _Slot:
    """One tuning slot while its seeds train."""

    config: TrialConfig  # the group's tuning config with the trial's params applied
    trial: Trial
    params: dict[str, Any]
    results: list[TrialResult] = field(default_factory=list)  # of the seeds that ran to the end
    seen: list[tuple[int, EpochRecord]] = field(default_factory=list)  # (seed index, epoch record): a pruned seed has no result
    pruned: bool = False
    error: BaseException | None = None
    check: OnEpoch = None  # the worker's on_epoch, called before the slot's own

    @property
    def done(self) -> bool:
        return self.pruned or self.error is not None or any(r.status != RunStatus.COMPLETED for r in self.results)


def train_slots(configs: list[TrialConfig], on_epochs: list[OnEpoch] | None = None, *, trials: list[Trial],
                params: list[dict[str, Any]], seeds: list[int], metric: str, direction: Direction,
                train_many: ManyFn | None = None, retry: Retry = _call) -> list[Outcome]:
    """Train each slot's config + params on every tuning seed; a slot's value is its mean validation metric.

    The slots train seed by seed in step, together through `train_many` (packed where they can be).
    Each reports its per-epoch metric to its Optuna trial (step = seed index * epochs + epoch, so one
    step means the same seed and epoch in every trial) and stops at its first prune or divergence.
    `on_epochs[k](record)` is called first after each epoch of slot k (the worker's check that the
    slot's run is still its own); `retry` wraps each call to Optuna's storage (the worker's patience
    with its database). Returns, per slot, one TrialResult for the whole slot (see the module
    docstring for what is stored) or the exception that ended it.
    """
    train = train_many or many_fn()
    checks = on_epochs or [None] * len(configs)
    slots = [_Slot(apply_params(c, p), t, p, check=f) for c, t, p, f in zip(configs, trials, params, checks)]
    for i, seed in enumerate(seeds):
        running = [slot for slot in slots if not slot.done]
        if not running:
            break
        outcomes = train([slot.config.replace(seed=seed) for slot in running],
                         [_reporter(slot, i, seed, metric, retry) for slot in running])
        for slot, outcome in zip(running, outcomes):
            if _is_pruned(outcome):
                slot.pruned = True
            elif isinstance(outcome, BaseException):
                slot.error = outcome
            else:
                slot.results.append(outcome)
    return [slot.error if slot.error is not None else
            _slot_result(slot.config, slot.trial, slot.params, seeds, metric, direction, slot.results, slot.seen,
                         slot.pruned) for slot in slots]


def train_slot(config: TrialConfig, *, trial: Trial, params: dict[str, Any], seeds: list[int], metric: str,
               direction: Direction, trial_fn: TrialFn | None = None) -> TrialResult:
    """One slot alone (`train_slots` with one slot); raises what ended it, if anything did."""
    [outcome] = train_slots([config], trials=[trial], params=[params], seeds=seeds, metric=metric, direction=direction,
                            train_many=one_by_one(trial_fn) if trial_fn is not None else None)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _reporter(slot: _Slot, index: int, seed: int, metric: str, retry: Retry = _call) -> Callable[[EpochRecord], None]:
    """The per-epoch callback of one slot's seed: guard the protocol, report to Optuna, maybe prune."""
    import optuna

    epochs = slot.config.training.epochs

    def report(record: EpochRecord) -> None:
        if slot.check is not None:
            slot.check(record)
        _guard(record)
        slot.seen.append((index, record))
        value = record.metrics.get(metric)
        if value is not None and math.isfinite(value):
            step = index * epochs + record.epoch
            retry(lambda: slot.trial.report(value, step))
            if retry(slot.trial.should_prune):
                raise optuna.TrialPruned(f"pruned at seed {seed}, epoch {record.epoch}")

    return report


def _is_pruned(outcome: Outcome) -> bool:
    import optuna

    return isinstance(outcome, optuna.TrialPruned)


def _slot_result(config: TrialConfig, trial: Trial, params: dict[str, Any], seeds: list[int], metric: str,
                 direction: Direction, results: list[TrialResult], seen: list[tuple[int, EpochRecord]],
                 pruned: bool) -> TrialResult:
    """One TrialResult for the slot: epochs renumbered across seeds, finals averaged over seeds."""
    epochs = config.training.epochs
    status = results[-1].status if results and results[-1].status != RunStatus.COMPLETED else RunStatus.COMPLETED
    per_seed = [r.final_metrics.get(metric) for r in results if r.status == RunStatus.COMPLETED]
    if pruned:  # Optuna keeps a pruned trial's last reported value; so do we
        value = seen[-1][1].metrics.get(metric) if seen else None
    else:
        value = _mean(per_seed) if status == RunStatus.COMPLETED else None
    finals = _mean_finals(results) if results else {}
    finals["pruned"] = float(pruned)
    if not pruned and status == RunStatus.COMPLETED:
        finals[metric] = math.nan if value is None else value  # a seed without the metric: stored as NULL, as NaN is
    ok = status == RunStatus.COMPLETED and value is not None and math.isfinite(value)
    state = SlotState.PRUNED if pruned else SlotState.COMPLETED if ok else SlotState.FAILED
    first = results[0] if results else None
    return TrialResult(
        status=status, metric_name=metric, metric_direction=direction,
        epochs=[dataclasses.replace(r, epoch=i * epochs + r.epoch) for i, r in seen], final_metrics=finals,
        total_train_time_s=sum(r.epoch_time_s for _, r in seen), num_params=first.num_params if first else 0,
        num_act_params=first.num_act_params if first else 0, device=first.device if first else config.training.device,
        pack_size=max((r.pack_size for r in results), default=1),
        error=results[-1].error if results and status != RunStatus.COMPLETED else None,
        artifacts={"tuning": {"trial_number": trial.number, "state": str(state), "value": value, "params": params,
                              "seeds": list(seeds), "per_seed": per_seed, "config": config.to_dict()}},
    )


def _mean(values: list[float | None]) -> float | None:
    ok = [v for v in values if v is not None]
    return statistics.fmean(ok) if ok and len(ok) == len(values) else None


def _mean_finals(results: list[TrialResult]) -> dict[str, float]:
    names = sorted({k for r in results for k in r.final_metrics})
    return {k: statistics.fmean(r.final_metrics[k] for r in results if k in r.final_metrics) for k in names}


def make_pruner(kind: str, startup_trials: int = 2, epochs: int = 1) -> BasePruner:
    """Optuna's pruner on the per-epoch validation metric.

    Median: no pruning before `startup_trials` trials have finished (the TPE's random start) nor
    in the first third of the first seed's epochs, where every curve is still noisy.
    """
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, startup_trials), n_warmup_steps=epochs // 3)
    if kind == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def load_optuna_study(tuned: StudyDesign, group: Group, storage: BaseStorage, slot: int, attempt: int) -> Study:
    """The group's study with a TPE sampler seeded per (sampler_seed, group, slot, attempt).

    One fixed seed in every process would make parallel workers draw the same startup points;
    a seed per slot keeps runs reproducible while workers explore different points.
    """
    import optuna

    tune = tune_of(tuned)
    seed = int(hashlib.sha256(f"{tune.sampler_seed}/{group.index}/{slot}/{attempt}".encode()).hexdigest()[:8], 16)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.n_startup(), constant_liar=True)
    return optuna.load_study(study_name=group.optuna_name, storage=storage, sampler=sampler,
                             pruner=make_pruner(tune.pruner, tune.n_startup(), group.base.config.training.epochs))


# --- selection and the evaluation phase -------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """A group's chosen settings: its best tuning trial."""

    group: str  # label
    params: dict[str, Any]
    value: float | None
    trial_number: int | None
    tuned: bool  # False when no trial completed: the base settings are evaluated


def choices(repo: Repository, tune_id: int, design: StudyDesign, groups: list[Group]) -> list[Choice]:
    """Each group's best trial among its finished slots."""
    rows = repo.tuning_rows(tune_id)
    direction = metric_direction(tune_of(design).objective)
    out = []
    for group in groups:
        best = best_trial(rows.get(group.group_hash, []), direction)
        out.append(Choice(group.label, dict(best["params"]) if best else {}, best["value"] if best else None,
                          best["trial_number"] if best else None, best is not None))
    return out


def eval_plans(groups: list[Group], picked: list[Choice]) -> list[CellPlan]:
    """Each group's evaluation cells with its chosen settings applied."""
    plans: list[CellPlan] = []
    for group, choice in zip(groups, picked):
        for cell in group.cells:
            plans.append(dataclasses.replace(cell, config=apply_params(cell.config, choice.params)))
    return plans


def ensure_eval_cells(repo: Repository, main_id: int, tune_id: int, design: StudyDesign, groups: list[Group]) -> int:
    """Add the missing evaluation cells (idempotent: every process computes the same ones); returns how many."""
    return repo.add_cells(main_id, eval_plans(groups, choices(repo, tune_id, design, groups)))
