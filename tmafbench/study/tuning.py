"""Fair tuning: the same Optuna budget for every activation group, then fresh evaluation seeds.

Two phases, both on C's claim / heartbeat / retry machinery (scheduler.py, repository.py):

1. **Tuning.** Study `<name>/tune` (Study.kind "tune", parent = the main study) has one cell per
   trial *slot*: `tune.trials` slots per group, so every group gets exactly the same budget even
   with several workers, kills and resumes (a slot is claimed like any cell; completed slots are
   never run twice). A worker that claims slot k of group g asks the group's Optuna study
   (`<name>/tune/<group label>`, TPE sampler, the chosen pruner) for a point, trains it on every
   tuning seed with a validation split (`training.val_fraction`) and `evaluate_test=False`, reports
   the per-epoch validation metric for pruning (step = seed index * epochs + epoch), stores the
   run, then `tell`s Optuna. A pruned trial is a finished slot.
2. **Evaluation.** When every slot is final, each group's best trial (lowest / highest mean
   validation metric among the non-pruned completed slots; ties: lowest trial number) gives the
   settings of its evaluation cells: the group's base config with those values, on the evaluation
   seeds, trained on the full training set and measured on the test set. They are ordinary cells of
   the main study `<name>` (Study.kind "eval"), run by `scheduler.worker_loop`.

Stored per tuning run (Run of a slot cell; see also store/schema.py):
- epoch metrics with epoch = seed index * epochs + epoch, only "val_*" metrics and train_loss;
- final metrics: the mean over the tuning seeds of each val_* metric and train_loss, and
  "pruned" (0 or 1);
- artifact "tuning" = {"optuna_study", "trial_number", "state" (complete|pruned|fail), "value",
  "params", "seeds", "per_seed", "config"}: the settings it trained with.
A slot cell's own `config` is the group's base tuning config (before the sampled values).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database
from tmafbench.store.repository import Claim, Counts, Repository
from tmafbench.store.schema import Artifact, Cell, Run
from tmafbench.study.cells import CellPlan, expand
from tmafbench.study.scheduler import (
    SpecChangedError,
    ctrl_c_guard,
    WorkerOptions,
    WorkerStats,
    _retry_locked,
    git_commit,
    optuna_storage,
    run_cell,
    run_processes,
    worker_loop,
)
from tmafbench.study.validate import check_data
from tmafbench.study.tune_spec import SpaceParam, TunedStudy, apply_params, group_bases, metric_direction, space_for, tuned_from_dict

TUNE_SUFFIX = "/tune"


def tune_study_name(name: str) -> str:
    return name + TUNE_SUFFIX


# --- groups and slots -----------------------------------------------------------------------------


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
    """A tuning slot as a cell (the attributes Repository stores); config_hash names (group, slot)."""

    config: Any  # TrialConfig: the group's base tuning config
    axes: dict[str, Any]
    label: str
    activation: str
    grid: str | None
    intervals: int | None
    config_hash: str
    group_hash: str
    slot: int


def groups_of(tuned: TunedStudy, name: str) -> list[Group]:
    """The study's activation groups in study order."""
    cells = expand(tuned.spec)
    by_group: dict[str, list[CellPlan]] = {}
    for cell in cells:
        by_group.setdefault(cell.group_hash, []).append(cell)
    labels = [c.label for c in group_bases(cells)]
    groups = []
    for i, base in enumerate(group_bases(cells)):
        label = base.label if labels.count(base.label) == 1 else f"{base.label} #{base.group_hash[:6]}"
        groups.append(Group(i, label, base.group_hash, tuple(by_group[base.group_hash]), space_for(base, tuned.space),
                            f"{name}{TUNE_SUFFIX}/{label}"))
    return groups


def tuning_config(tuned: TunedStudy, group: Group) -> Any:
    """The group's base config for tuning: validation split on, test set off, no artifacts."""
    base = group.base.config
    training = dataclasses.replace(base.training, val_fraction=tuned.tune.val_fraction, evaluate_test=False,
                                   keep_predictions=False, keep_activation_params=False)
    return dataclasses.replace(base, training=training, seed=tuned.tune.tune_seed_list()[0])


def slot_plans(tuned: TunedStudy, groups: list[Group]) -> list[SlotPlan]:
    """`tune.trials` slots per group, in (group, slot) order."""
    plans = []
    for group in groups:
        config = tuning_config(tuned, group)
        base = group.base
        axes = {k: v for k, v in base.axes.items() if k != "seed"}
        for k in range(tuned.tune.trials):
            digest = hashlib.sha256(f"{group.group_hash}/slot/{k}".encode()).hexdigest()[:16]
            plans.append(SlotPlan(config, {**axes, "slot": k}, group.label, base.activation, base.grid, base.intervals,
                                  digest, group.group_hash, k))
    return plans


# Keys of a study file that document it without changing what runs.
DOCUMENTATION_KEYS = ("name", "description", "reference")


def design_hash(data: dict[str, Any], ignored: tuple[str, ...] = DOCUMENTATION_KEYS) -> str:
    """The tuned study's design: its whole spec (space, budget, seeds and grid), documentation excluded."""
    blob = json.dumps({k: v for k, v in data.items() if k not in ignored}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def same_design(stored_hash: str, data: dict[str, Any]) -> bool:
    """True for the current hash, and for the first release's (which also hashed description and
    reference), so that studies stored by it still resume."""
    return stored_hash in (design_hash(data), design_hash(data, ignored=("name",)))


# --- create or load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunedInfo:
    name: str
    main_id: int
    tune_id: int
    max_retries: int
    groups: list[Group]
    created: bool
    message: str = ""


def prepare_tuned(tuned: TunedStudy, url: str, *, new_name: str | None = None) -> TunedInfo:
    """Create (or load) the main study, its tune study with every slot, and one Optuna study per group."""
    import optuna

    from tmafbench import __version__

    if tuned.tune is None:
        raise TmafbenchError("this study file has no [tune] table")
    name = new_name or tuned.spec.name
    data = {**tuned.data, "name": name}
    design = design_hash(data)
    groups = groups_of(tuned, name)
    check_data(cell.config for group in groups for cell in group.cells)  # before anything is written
    db = Database(url)
    try:
        db.create_all()
        repo = Repository(db)
        main = repo.get_study(name)
        created = main is None
        if main is not None and (main.kind != "eval" or not same_design(main.spec_hash, data)):
            raise SpecChangedError(
                f"study {name!r} already exists with another design; use --new-name NAME for a separate study "
                "(or `tmafbench study delete` it first)")
        common = dict(description=tuned.spec.description, spec=data, spec_hash=design, version=__version__,
                      git_commit=git_commit())
        reference = tuned.spec.reference.model_dump(mode="json") if tuned.spec.reference else None
        updated: list[str] = []
        if main is not None:  # same design: take the file's description and reference as they are now
            updated = repo.refresh_documentation(main.id, description=tuned.spec.description, reference=reference,
                                                 spec=data, spec_hash=design)
        main_id = main.id if main else repo.create_study(name=name, reference=reference, cells=[], kind="eval", **common)
        tune = repo.get_study(tune_study_name(name))
        tune_id = tune.id if tune else repo.create_study(name=tune_study_name(name), reference=None, cells=slot_plans(tuned, groups),
                                                        kind="tune", parent_id=main_id, **common)
        storage = optuna_storage(url)
        direction = metric_direction(tuned.tune.metric)
        for group in groups:
            study = optuna.create_study(study_name=group.optuna_name, storage=storage, load_if_exists=True,
                                        direction=direction)
            study.set_user_attr("tmafbench_study", name)
            study.set_user_attr("group", group.label)
            study.set_user_attr("metric", tuned.tune.metric)
            study.set_user_attr("pruner", tuned.tune.pruner)
        optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="minimize")
        storage.engine.dispose()
    finally:
        db.dispose()
    slots = len(groups) * tuned.tune.trials
    verb = "created" if created else "resuming"
    message = (f"{verb} tuned study {name!r}: {len(groups)} groups x {tuned.tune.trials} trials = {slots} tuning slots, "
               f"then {sum(len(g.cells) for g in groups)} evaluation cells")
    if updated:
        message += f"; updated its {' and '.join(updated)} from the file"
    return TunedInfo(name, main_id, tune_id, tuned.spec.max_retries, groups, created, message)


def load_info(name: str, url: str) -> tuple[TunedStudy, TunedInfo]:
    """Rebuild the study from its stored spec (e.g. a worker on another machine)."""
    db = Database(url)
    try:
        db.check_schema()
        repo = Repository(db)
        main = repo.require_study(name)
        tune = repo.get_study(tune_study_name(name))
        if tune is None:
            raise TmafbenchError(f"study {name!r} is not a tuned study (no {tune_study_name(name)!r})")
    finally:
        db.dispose()
    tuned = tuned_from_dict(main.spec, source=f"stored spec of {name!r}")
    return tuned, TunedInfo(name, main.id, tune.id, tuned.spec.max_retries, groups_of(tuned, name), created=False)


# --- one tuning slot -----------------------------------------------------------------------------------


class TuningProtocolError(TmafbenchError):
    """A tuning run produced a test metric: the protocol forbids it."""


def _guard(record: Any) -> None:
    test_metrics = [k for k in record.metrics if not k.startswith("val_")]
    if test_metrics:
        raise TuningProtocolError(f"a tuning run measured test metrics {test_metrics}; tuning reads validation metrics only")


def train_slot(config: Any, on_epoch: Callable[[Any], None] | None = None, *, trial: Any, params: dict[str, Any],
               seeds: list[int], metric: str, direction: str, trial_fn: Callable[..., Any] | None = None) -> Any:
    """Train `config` + `params` on every tuning seed; the mean validation metric is the trial's value.

    Reports the per-epoch metric to Optuna (step = seed index * epochs + epoch, so one step means the
    same seed and epoch in every trial) and stops at the first prune. Returns one TrialResult for
    the whole slot (see the module docstring for what is stored). `on_epoch` is unused: the slot
    reports to Optuna itself.
    """
    config = apply_params(config, params)
    results, seen, pruned = _train_seeds(config, trial, seeds, metric, trial_fn)
    return _slot_result(config, trial, params, seeds, metric, direction, results, seen, pruned)


def _train_seeds(config: Any, trial: Any, seeds: list[int], metric: str,
                 trial_fn: Callable[..., Any] | None) -> tuple[list[Any], list[tuple[int, Any]], bool]:
    """(results of the seeds that ran to the end, (seed index, epoch record) seen, pruned?)."""
    import optuna

    from tmafbench.training import train_trial

    trial_fn = trial_fn or train_trial
    epochs = config.training.epochs
    results: list[Any] = []
    seen: list[tuple[int, Any]] = []  # kept by the callback: a pruned seed returns no result
    for i, seed in enumerate(seeds):
        def report(record: Any, i: int = i, seed: int = seed) -> None:
            _guard(record)
            seen.append((i, record))
            value = record.metrics.get(metric)
            if value is not None and math.isfinite(value):
                trial.report(value, i * epochs + record.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at seed {seed}, epoch {record.epoch}")

        try:
            result = trial_fn(dataclasses.replace(config, seed=seed), on_epoch=report)
        except optuna.TrialPruned:
            return results, seen, True
        results.append(result)
        if result.status != "completed":  # diverged: the trial ends here
            break
    return results, seen, False


def _slot_result(config: Any, trial: Any, params: dict[str, Any], seeds: list[int], metric: str, direction: str,
                 results: list[Any], seen: list[tuple[int, Any]], pruned: bool) -> Any:
    """One TrialResult for the slot: epochs renumbered across seeds, finals averaged over seeds."""
    from tmafbench.training.result import TrialResult

    epochs = config.training.epochs
    status = results[-1].status if results and results[-1].status != "completed" else "completed"
    per_seed = [r.final_metrics.get(metric) for r in results if r.status == "completed"]
    if pruned:  # Optuna keeps a pruned trial's last reported value; so do we
        value = seen[-1][1].metrics.get(metric) if seen else None
    else:
        value = _mean(per_seed) if status == "completed" else None
    finals = _mean_finals(results) if results else {}
    finals["pruned"] = float(pruned)
    if not pruned and status == "completed":
        finals[metric] = value
    ok = status == "completed" and value is not None and math.isfinite(value)
    state = "pruned" if pruned else "complete" if ok else "fail"
    first = results[0] if results else None
    return TrialResult(
        status=status, metric_name=metric, metric_direction=direction,
        epochs=[dataclasses.replace(r, epoch=i * epochs + r.epoch) for i, r in seen], final_metrics=finals,
        total_train_time_s=sum(r.epoch_time_s for _, r in seen), num_params=first.num_params if first else 0,
        num_act_params=first.num_act_params if first else 0, device=first.device if first else config.training.device,
        error=results[-1].error if results and status != "completed" else None,
        artifacts={"tuning": {"trial_number": trial.number, "state": state, "value": value, "params": params,
                              "seeds": list(seeds), "per_seed": per_seed, "config": config.to_dict()}},
    )


def _mean(values: list[float | None]) -> float | None:
    ok = [v for v in values if v is not None]
    return statistics.fmean(ok) if ok and len(ok) == len(values) else None


def _mean_finals(results: list[Any]) -> dict[str, float]:
    names = sorted({k for r in results for k in r.final_metrics})
    return {k: statistics.fmean(r.final_metrics[k] for r in results if k in r.final_metrics) for k in names}


def make_pruner(kind: str, startup_trials: int = 2, epochs: int = 1) -> Any:
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


def load_optuna_study(tuned: TunedStudy, group: Group, storage: Any, slot: int, attempt: int) -> Any:
    """The group's study with a TPE sampler seeded per (sampler_seed, group, slot, attempt).

    One fixed seed in every process would make parallel workers draw the same startup points;
    a seed per slot keeps runs reproducible while workers explore different points.
    """
    import optuna

    tune = tuned.tune
    seed = int(hashlib.sha256(f"{tune.sampler_seed}/{group.index}/{slot}/{attempt}".encode()).hexdigest()[:8], 16)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.n_startup(), constant_liar=True)
    return optuna.load_study(study_name=group.optuna_name, storage=storage, sampler=sampler,
                             pruner=make_pruner(tune.pruner, tune.n_startup(), group.base.config.training.epochs))


def run_slot(repo: Repository, claim: Claim, tuned: TunedStudy, group: Group, slot: int, storage: Any, *,
             device: str, options: WorkerOptions, stats: WorkerStats, trial_fn: Callable[..., Any] | None = None) -> Any:
    """Ask Optuna for a point, train the slot, store the run, tell Optuna; returns the TrialResult."""
    from optuna.trial import TrialState

    study = _retry_locked(stats, lambda: load_optuna_study(tuned, group, storage, slot, claim.attempt))
    if claim.attempt > 1:
        _retry_locked(stats, lambda: reconcile(repo, study, tune_id_of(repo, claim), group.group_hash, options.grace_s))
    trial = _retry_locked(stats, study.ask)
    params = {key: param.suggest(trial, key) for key, param in group.space.items()}
    trial.set_user_attr("slot", slot)
    _retry_locked(stats, lambda: _set_trial_number(repo, claim.run_id, trial.number))
    fn = lambda config, on_epoch=None: train_slot(  # noqa: E731
        config, on_epoch, trial=trial, params=params, seeds=tuned.tune.tune_seed_list(), metric=tuned.tune.metric,
        direction=metric_direction(tuned.tune.metric), trial_fn=trial_fn)
    try:
        result = run_cell(repo, claim, device=device, heartbeat_s=options.heartbeat_s, trial_fn=fn, trial_number=trial.number)
    except (KeyboardInterrupt, SystemExit):
        _retry_locked(stats, lambda: study.tell(trial, state=TrialState.FAIL))
        raise
    state = (result.artifacts or {}).get("tuning", {}).get("state", "fail") if result.status == "completed" else "fail"
    value = result.artifacts["tuning"]["value"] if state == "complete" else None
    _retry_locked(stats, lambda: _tell(study, trial.number, state, value))
    return result


def _set_trial_number(repo: Repository, run_id: int, number: int) -> None:
    with repo.db.session() as s:
        s.execute(update(Run).where(Run.id == run_id).values(optuna_trial_number=number))


def _tell(study: Any, number: int, state: str, value: float | None) -> None:
    from optuna.trial import TrialState

    if state == "complete":
        study.tell(number, value)
    else:
        study.tell(number, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)


def tune_id_of(repo: Repository, claim: Claim) -> int:
    """The study of a claimed cell."""
    with repo.db.session() as s:
        return s.scalar(select(Cell.study_id).where(Cell.id == claim.cell_id))


def reconcile(repo: Repository, study: Any, tune_id: int, group_hash: str, grace_s: float) -> int:
    """Close Optuna trials left RUNNING by a dead worker, from the runs we stored; returns how many.

    A finished run's trial is told its stored outcome; a trial whose run was interrupted or failed,
    or that has no run and is older than the grace period, is told FAIL.
    """
    from optuna.trial import TrialState

    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if not running:
        return 0
    outcomes = _run_outcomes(repo, tune_id, group_hash, [t.number for t in running])
    cutoff = datetime.now() - timedelta(seconds=grace_s)
    closed = 0
    for t in running:
        status, tuning = outcomes.get(t.number, (None, None))
        if status == "running" or (status is None and t.datetime_start and t.datetime_start > cutoff):
            continue  # a live worker still owns it
        state = tuning.get("state", "fail") if status == "completed" and tuning else "fail"
        _tell(study, t.number, state, tuning.get("value") if tuning else None)
        closed += 1
    return closed


def _run_outcomes(repo: Repository, tune_id: int, group_hash: str, numbers: list[int]) -> dict[int, tuple[str, dict | None]]:
    """{trial number: (run status, tuning artifact)} for the runs of one group's slots."""
    with repo.db.session() as s:
        rows = s.execute(
            select(Run.optuna_trial_number, Run.status, Artifact.data)
            .join(Cell, Cell.id == Run.cell_id)
            .join(Artifact, (Artifact.run_id == Run.id) & (Artifact.name == "tuning"), isouter=True)
            .where(Cell.study_id == tune_id, Cell.group_hash == group_hash, Run.optuna_trial_number.in_(numbers))
        ).all()
    return {n: (status, data) for n, status, data in rows}


# --- selection and the evaluation phase -------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """A group's chosen settings: its best tuning trial."""

    group: str  # label
    params: dict[str, Any]
    value: float | None
    trial_number: int | None
    trials: int  # finished slots (complete + pruned + failed)
    tuned: bool  # False when no trial completed: the base settings are evaluated


def best_trial(rows: list[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    """The best completed, non-pruned trial; ties go to the lowest trial number."""
    ok = [r for r in rows if r.get("state") == "complete" and r.get("value") is not None and math.isfinite(r["value"])]
    if not ok:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(ok, key=lambda r: (sign * r["value"], r.get("trial_number") or 0))


def tuning_rows(db: Database, tune_id: int) -> dict[str, list[dict[str, Any]]]:
    """{group hash: [tuning artifact of each completed slot run, in trial order]}."""
    with db.session() as s:
        rows = s.execute(
            select(Cell.group_hash, Artifact.data).join(Run, Run.cell_id == Cell.id)
            .join(Artifact, (Artifact.run_id == Run.id) & (Artifact.name == "tuning"))
            .where(Cell.study_id == tune_id, Run.status.in_(("completed", "diverged")))
        ).all()
    out: dict[str, list[dict[str, Any]]] = {}
    for group_hash, data in rows:
        out.setdefault(group_hash, []).append(data)
    for items in out.values():
        items.sort(key=lambda r: r.get("trial_number") or 0)
    return out


def choices(db: Database, info: TunedInfo, direction: str, trials: int) -> list[Choice]:
    rows = tuning_rows(db, info.tune_id)
    out = []
    for group in info.groups:
        best = best_trial(rows.get(group.group_hash, []), direction)
        out.append(Choice(group.label, dict(best["params"]) if best else {}, best["value"] if best else None,
                          best["trial_number"] if best else None, trials, best is not None))
    return out


def eval_plans(info: TunedInfo, picked: list[Choice]) -> list[CellPlan]:
    """Each group's evaluation cells with its chosen settings applied."""
    plans = []
    for group, choice in zip(info.groups, picked):
        for cell in group.cells:
            plans.append(dataclasses.replace(cell, config=apply_params(cell.config, choice.params)))
    return plans


def ensure_eval_cells(db: Database, info: TunedInfo, direction: str, trials: int) -> int:
    """Add the missing evaluation cells (idempotent: every process computes the same ones); returns how many."""
    repo = Repository(db)
    plans = eval_plans(info, choices(db, info, direction, trials))
    for _ in range(5):
        existing = set(repo.cell_hashes(info.main_id))
        missing = [p for p in plans if p.config_hash not in existing]
        if not missing:
            return 0
        try:
            with db.session() as s:
                s.add_all(Repository._cell_rows(info.main_id, missing))
            return len(missing)
        except IntegrityError:  # another process added them at the same moment
            continue
    raise TmafbenchError("could not add the evaluation cells")


# --- the worker loop (both phases) ------------------------------------------------------------------


@ctrl_c_guard()
def tune_worker_loop(name: str, url: str, *, device: str = "cpu", options: WorkerOptions = WorkerOptions(),
                     trial_fn: Callable[..., Any] | None = None, worker: str | None = None) -> WorkerStats:
    """Claim and run tuning slots until all are final, then evaluation cells until all are final."""
    from tmafbench.store.environment import collect

    tuned, info = load_info(name, url)
    slots = {p.config_hash: p for p in slot_plans(tuned, info.groups)}
    groups = {g.group_hash: g for g in info.groups}
    stats = WorkerStats(worker=worker or f"pid {os.getpid()}")
    host = socket.gethostname()
    db = Database(url)
    storage = optuna_storage(url)
    try:
        repo = Repository(db)
        env_id = _retry_locked(stats, lambda: repo.environment_id(collect(device)))
        last_stale = -float("inf")
        while options.max_runs is None or stats.runs < options.max_runs:
            now = time.perf_counter()
            if now - last_stale > options.grace_s / 2:
                stats.stale_marked += _retry_locked(stats, lambda: repo.mark_stale_runs(info.tune_id, options.grace_s))
                last_stale = now
            claim = _retry_locked(stats, lambda: repo.claim_cell(info.tune_id, info.max_retries, host=host, worker=stats.worker,
                                                                 device=device, environment_id=env_id))
            if claim is None:
                if _retry_locked(stats, lambda: repo.counts(info.tune_id, info.max_retries)).done:
                    break
                time.sleep(options.poll_s)
                last_stale = -float("inf")
                continue
            plan = slots[claim.config_hash]
            start = time.perf_counter()
            result = run_slot(repo, claim, tuned, groups[plan.group_hash], plan.slot, storage, device=device,
                              options=options, stats=stats, trial_fn=trial_fn)
            stats.record(result.status, time.perf_counter() - start)
        else:
            return stats  # max_runs reached inside the tuning phase
        finish_tuning(db, storage, tuned, info, options.grace_s)
    finally:
        storage.engine.dispose()
        db.dispose()
    left = None if options.max_runs is None else options.max_runs - stats.runs
    evaluation = worker_loop(name, url, device=device, options=dataclasses.replace(options, max_runs=left),
                             trial_fn=trial_fn, worker=stats.worker)
    return stats.merged(evaluation)


def finish_tuning(db: Database, storage: Any, tuned: TunedStudy, info: TunedInfo, grace_s: float) -> int:
    """Every slot is final: close leftover Optuna trials, then add the evaluation cells."""
    import optuna

    repo = Repository(db)
    for group in info.groups:
        reconcile(repo, optuna.load_study(study_name=group.optuna_name, storage=storage), info.tune_id, group.group_hash, grace_s)
    return ensure_eval_cells(db, info, metric_direction(tuned.tune.metric), tuned.tune.trials)


# --- local workers ------------------------------------------------------------------------------------


@dataclass
class TunedOutcome:
    tune_counts: Counts
    eval_counts: Counts
    wall_s: float
    workers: list[WorkerStats] = field(default_factory=list)
    interrupted: bool = False
    exit_codes: list[int | None] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.tune_counts.done and self.eval_counts.done and self.eval_counts.total > 0


def counts_of(repo: Repository, info: TunedInfo) -> tuple[Counts, Counts]:
    """(tuning slots, evaluation cells) by state."""
    return repo.counts(info.tune_id, info.max_retries), repo.counts(info.main_id, info.max_retries)


def run_tuned_local(info: TunedInfo, url: str, devices: list[str], options: WorkerOptions = WorkerOptions(),
                    progress: Callable[[str, Counts], None] | None = None, poll_s: float = 0.5) -> TunedOutcome:
    """Run both phases to the end with one local process per device entry."""
    db = Database(url)  # one engine for every progress poll
    repo = Repository(db)
    start = time.perf_counter()

    def report() -> None:
        tune, evaluation = counts_of(repo, info)
        progress("tune", tune)
        if tune.done:  # evaluation cells exist only once tuning is over
            progress("eval", evaluation)

    try:
        run = run_processes(tune_worker_loop, info.name, url, devices, options, report if progress else None, poll_s,
                            process_name="tmafbench-tune")
        tune, evaluation = counts_of(repo, info)
    finally:
        db.dispose()
    return TunedOutcome(tune, evaluation, time.perf_counter() - start, run.workers, run.interrupted, run.exit_codes)
