"""What a worker does with a claimed cell, per kind of phase: train an ordinary cell, or a tuning slot.

Both keep Optuna in step with our run queue:
- an ordinary cell (a grid study's, or a tuned study's evaluation cell; `CellRunner`) is mirrored as
  a trial of the Optuna study of the same name, so optuna-dashboard follows the study;
- a tuning slot (`SlotRunner`) *is* a trial of its group's Optuna study, asked for a point by TPE.
A trial's number is stored on its run as soon as the trial exists, so that `reconcile` can close a
trial whose worker died (its run swept as lost) instead of leaving it RUNNING forever.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Protocol

from tmafbench.core import FINAL_OK, RunStatus, SlotState, TrialResult, metric_direction
from tmafbench.store.optuna_storage import optuna_storage
from tmafbench.store.repository import Claim, Repository
from tmafbench.study.lifecycle import Phase, StudyInfo
from tmafbench.study.plan import groups_of, slot_plans, tune_of
from tmafbench.study.signals import pause_point, signals_held
from tmafbench.study.tuning import ensure_eval_cells, load_optuna_study, train_slots
from tmafbench.study.worker import CellExecutor

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import Trial


class Runner(Protocol):
    """Runs the claimed cells of one phase."""

    max_pack: int | None  # the most cells one pack may hold in this phase (None: as --pack says)

    def run(self, claims: list[Claim], ex: CellExecutor) -> list[TrialResult]:
        """Train the claimed cells (together where they pack), store their runs and tell Optuna;
        returns their TrialResults."""

    def reconcile(self, ex: CellExecutor, final: bool = False) -> int:
        """Close this phase's Optuna trials whose run is over (or never started); returns how many.

        `final`: every cell of the phase is final, so a trial without a run is an orphan whatever its
        age (a call that created it failed after its commit and was retried), never a live worker's.
        """

    def finish_phase(self, ex: CellExecutor) -> None:
        """Called once every cell of the phase is final."""

    def close(self) -> None:
        """Release the Optuna storage."""


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def reconcile_trials(repo: Repository, storage: BaseStorage, study: Study, study_id: int, grace_s: float,
                     group_hash: str | None = None) -> int:
    """Close the RUNNING trials of an Optuna study whose run is no longer running; returns how many.

    A trial takes its run's stored outcome (a completed slot its state and value, a completed grid
    cell its primary metric); a lost, interrupted or failed run's trial, and a trial with no run
    that is older than the grace period (its worker died before recording it), are failed. Workers
    that swept the same lost runs reconcile at the same moment: a trial another one closed first is
    left as it is.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return 0
    optuna_id = storage.get_study_id_from_name(study.study_name)
    outcomes = repo.trial_outcomes(study_id, [t.number for t in running], group_hash)
    cutoff = datetime.now() - timedelta(seconds=grace_s)
    closed = 0
    for trial in running:
        status, state, value = outcomes.get(trial.number, (None, None, None))
        if status == RunStatus.RUNNING or (status is None and trial.datetime_start and trial.datetime_start > cutoff):
            continue  # a live worker still owns it
        try:
            if status in FINAL_OK and state is SlotState.PRUNED:
                study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
            elif status == RunStatus.COMPLETED and state in (None, SlotState.COMPLETED) and _finite(value):
                study.tell(trial.number, value, skip_if_finished=True)
            else:
                trial_id = storage.get_trial_id_from_study_id_trial_number(optuna_id, trial.number)
                storage.set_trial_user_attr(trial_id, "status", status or "lost")
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        except UpdateFinishedTrialError:
            continue
        closed += 1
    return closed


class CellRunner:
    """Ordinary cells (a grid study's, a tuned study's evaluation cells): train each as its config
    says; mirror its run as a trial of the study's Optuna study."""

    max_pack: int | None = None  # ordinary cells pack as --pack says

    def __init__(self, url: str, info: StudyInfo, study_id: int):
        self.storage = optuna_storage(url)
        self.optuna_name = info.name
        self.study_id = study_id
        self._optuna_study_id: int | None = None

    @property
    def optuna_study_id(self) -> int:
        if self._optuna_study_id is None:
            self._optuna_study_id = self.storage.get_study_id_from_name(self.optuna_name)
        return self._optuna_study_id

    def run(self, claims: list[Claim], ex: CellExecutor) -> list[TrialResult]:
        trials: list[tuple[int, int]] = []
        for claim in claims:
            with signals_held():  # a trial is never left without its run's link to it
                trial_id = ex.retry(lambda: self._start_trial(claim, ex))
                pause_point("trial")
                number = ex.retry(lambda: self.storage.get_trial_number_from_id(trial_id))  # apart: a retry makes no 2nd trial
                ex.retry(lambda: ex.repo.set_trial_number(claim.run_id, number))
            trials.append((trial_id, number))
        results = ex.run_cells(claims, trial_numbers=[number for _id, number in trials])
        for (trial_id, _number), result in zip(trials, results):
            ex.retry(lambda: self._finish_trial(trial_id, result.status, result.final_metric))
        return results

    def _start_trial(self, claim: Claim, ex: CellExecutor) -> int:
        """Create the RUNNING trial; returns its id.

        The cell's hash is a user attribute, not a parameter: a categorical parameter's choices are
        fixed for an Optuna study's life, and `--force` adds cells to a running study.
        """
        from optuna.trial import FrozenTrial, TrialState

        attrs = {"cell": claim.config_hash, "attempt": claim.attempt, "host": ex.host, "worker": ex.stats.worker}
        template = FrozenTrial(
            number=0, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(), datetime_complete=None,
            params={}, distributions={}, user_attrs=attrs, system_attrs={}, intermediate_values={}, trial_id=0)
        return self.storage.create_new_trial(self.optuna_study_id, template_trial=template)

    def _finish_trial(self, trial_id: int, status: str, value: float | None) -> None:
        """Close the trial as the run ended. A trial already closed is left as it is: the sweep failed
        it while this worker was away, or an earlier try committed before its connection died. A trial
        that is gone ("Record does not exist.") went with its cell (`study run --force`)."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            if status == RunStatus.COMPLETED and value is not None and math.isfinite(value):
                self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values=[value])
                return
            self.storage.set_trial_user_attr(trial_id, "status", str(status))  # diverged, failed or interrupted
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except (UpdateFinishedTrialError, KeyError):
            pass

    def reconcile(self, ex: CellExecutor, final: bool = False) -> int:
        import optuna

        study = optuna.load_study(study_name=self.optuna_name, storage=self.storage)
        return reconcile_trials(ex.repo, self.storage, study, self.study_id, 0.0 if final else ex.options.grace_s)

    def finish_phase(self, ex: CellExecutor) -> None:
        pass

    def close(self) -> None:
        self.storage.engine.dispose()


class SlotRunner:
    """Tuning slots: ask the group's Optuna study for a point, train it on the tuning seeds, tell."""

    def __init__(self, url: str, info: StudyInfo, study_id: int):
        if info.design is None:
            raise ValueError(f"study {info.name!r}: a tuning phase needs the study's design")
        self.storage = optuna_storage(url)
        self.info, self.study_id, self.design = info, study_id, info.design
        self.tune = tune_of(self.design)
        self.groups = groups_of(self.design, info.name)
        self.slots = {p.config_hash: p for p in slot_plans(self.design, self.groups)}
        self.by_hash = {g.group_hash: g for g in self.groups}
        # Slots claimed together are asked of the sampler before any of them has finished. TPE's
        # random start needs no finished trial, so a pack may hold that many; a larger one would let
        # TPE propose a whole group's trials blind (random search) and leave the median pruner,
        # which compares with finished trials, nothing to compare with.
        self.max_pack: int | None = self.tune.max_pack()

    def run(self, claims: list[Claim], ex: CellExecutor) -> list[TrialResult]:
        from optuna.trial import TrialState

        tune = self.tune
        studies: list[Study] = []
        trials: list[Trial] = []
        params: list[dict[str, object]] = []
        for claim in claims:
            plan = self.slots[claim.config_hash]
            group = self.by_hash[plan.group_hash]
            study = ex.retry(lambda: load_optuna_study(self.design, group, self.storage, plan.slot, claim.attempt))
            with signals_held():  # a trial is never left without its run's link to it
                trial = ex.retry(study.ask)
                pause_point("trial")
                params.append({key: ex.retry(lambda: param.suggest(trial, key)) for key, param in group.space.items()})
                ex.retry(lambda: trial.set_user_attr("slot", plan.slot))
                ex.retry(lambda: ex.repo.set_trial_number(claim.run_id, trial.number))
            studies.append(study)
            trials.append(trial)
        fn = partial(train_slots, trials=trials, params=params, seeds=tune.tune_seed_list(), metric=tune.objective,
                     direction=metric_direction(tune.objective), train_many=ex.many_fn, retry=ex.retry)
        try:
            results = ex.run_cells(claims, fn, trial_numbers=[t.number for t in trials])
        except (KeyboardInterrupt, SystemExit):
            for study, trial in zip(studies, trials):
                ex.retry(lambda: study.tell(trial, state=TrialState.FAIL, skip_if_finished=True))
            raise
        for study, trial, result in zip(studies, trials, results):
            tuning = (result.artifacts or {}).get("tuning", {})
            state = SlotState.read(tuning.get("state")) if result.status == RunStatus.COMPLETED else SlotState.FAILED
            ex.retry(lambda: _tell(study, trial.number, state, tuning.get("value")))
        return results

    def reconcile(self, ex: CellExecutor, final: bool = False) -> int:
        import optuna

        closed = 0
        for group in self.groups:
            study = optuna.load_study(study_name=group.optuna_name, storage=self.storage)
            closed += reconcile_trials(ex.repo, self.storage, study, self.study_id,
                                       0.0 if final else ex.options.grace_s, group.group_hash)
        return closed

    def finish_phase(self, ex: CellExecutor) -> None:
        """Every slot is final: add the evaluation cells with each group's chosen settings."""
        ex.retry(lambda: ensure_eval_cells(ex.repo, self.info.id, self.study_id, self.design, self.groups))

    def close(self) -> None:
        self.storage.engine.dispose()


def _tell(study: Study, number: int, state: SlotState, value: float | None) -> None:
    from optuna.trial import TrialState

    # A trial already closed (the sweep failed it while this worker was away, or an earlier try
    # committed before its connection died) is left as it is.
    if state is SlotState.COMPLETED:
        study.tell(number, value, skip_if_finished=True)
    else:
        study.tell(number, state=TrialState.PRUNED if state is SlotState.PRUNED else TrialState.FAIL,
                   skip_if_finished=True)


def runner_for(url: str, info: StudyInfo, phase: Phase) -> Runner:
    """The runner of a phase: tuning slots or ordinary cells."""
    return SlotRunner(url, info, phase.study_id) if phase.tuning else CellRunner(url, info, phase.study_id)
