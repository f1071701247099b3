"""What every layer shares: run statuses, metric directions, the trial config and the trial result.

This is a leaf module: it imports nothing of tmafbench's and no torch, so the CLI, study files,
the store and the reports can all use it cheaply. Layers above it:

    core  <-  store  <-  study (scheduling)  <-  cli
    core  <-  training (one trial)  <-  study
    core  <-  store  <-  reports

The configs are pydantic models, as the study file is: one validation system. Values keep the
type they were given (an integer stays an integer), so a config's hash is the same whether it
was built from a study file, from the CLI or from a stored record.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Callable, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError, field_validator

# --- statuses -----------------------------------------------------------------------------------


class RunStatus(StrEnum):
    """The status of one attempt at a cell, stored as these strings in `tmaf_run.status`."""

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"  # the loss became NaN/inf: final, not retried
    FAILED = "failed"  # an exception in training: retried up to max_retries
    INTERRUPTED = "interrupted"  # stopped on purpose (Ctrl-C, or abandoned by its worker): runs again
    LOST = "lost"  # its worker died (no heartbeat for the grace period): retried up to max_crashes


# A cell with a run in one of these states is done.
FINAL_OK = (RunStatus.COMPLETED, RunStatus.DIVERGED)


class Ending(StrEnum):
    """How a run of a study ended, for a scheduler or a script (the CLI maps each to an exit status)."""

    DONE = "done"  # every cell completed or diverged
    CELLS_FAILED = "cells failed"  # every cell is final, but some failed for good (max_retries, max_crashes)
    STOPPED = "stopped"  # cells are left: a worker stopped early (database away, disk full) or died
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM


class SlotState(StrEnum):
    """How a tuning slot's Optuna trial ended (artifact "tuning", key "state")."""

    COMPLETED = "completed"
    PRUNED = "pruned"
    FAILED = "failed"

    @classmethod
    def read(cls, raw: str | None) -> "SlotState":
        """A stored state; the first release wrote Optuna's words "complete" and "fail"."""
        legacy = {"complete": cls.COMPLETED, "fail": cls.FAILED}
        if raw is None:
            return cls.FAILED
        if raw in legacy:
            return legacy[raw]
        try:
            return cls(raw)
        except ValueError:
            return cls.FAILED


# --- metrics ------------------------------------------------------------------------------------

REGRESSION_METRICS = ("rel_l2", "mse", "max_abs")
CLASSIFICATION_METRICS = ("accuracy", "cross_entropy")
MAXIMIZED = frozenset({"accuracy"})
Direction = Literal["minimize", "maximize"]


# How a report draws a confidence interval (a study file's [report] interval): "auto" by the metric's range.
Interval = Literal["auto", "bootstrap", "t"]


# Prefixes of a task metric measured on another set than the test set: the validation split
# ("val_rel_l2") and, with TrainingConfig.evaluate_train, the training set ("train_rel_l2").
SET_PREFIXES = ("val_", "train_")


def base_metric(metric: str) -> str:
    """The task metric behind a name: "val_accuracy" and "train_accuracy" -> "accuracy".

    "train_loss" is the training loss itself, not a task metric, and stays as it is.
    """
    for prefix in SET_PREFIXES:
        rest = metric.removeprefix(prefix)
        if rest != metric and rest in REGRESSION_METRICS + CLASSIFICATION_METRICS:
            return rest
    return metric


def metric_direction(metric: str) -> Direction:
    """"accuracy", "val_accuracy" and "train_accuracy" are maximised; every other metric (errors,
    losses) is minimised."""
    return "maximize" if base_metric(metric) in MAXIMIZED else "minimize"


def metric_names(kind: str) -> tuple[str, ...]:
    """The metrics a task of this kind ("regression" or "classification") reports, primary first."""
    return REGRESSION_METRICS if kind == "regression" else CLASSIFICATION_METRICS


def best_trial(rows: list[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    """The best completed, non-pruned tuning trial; ties go to the lowest trial number.

    Each row is a tuning artifact: {"state", "value", "trial_number", "params", ...}. The study
    picks its settings with this rule and the reports show them with it.
    """
    ok = [r for r in rows if SlotState.read(r.get("state")) is SlotState.COMPLETED
          and r.get("value") is not None and math.isfinite(r["value"])]
    if not ok:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(ok, key=lambda r: (sign * r["value"], r.get("trial_number") or 0))


# --- the trial config -----------------------------------------------------------------------------

# Numbers keep the type they were given: 0 stays 0, 0.0 stays 0.0 (hashes never change with the
# path a config took); a bool is not a number.
Number = StrictInt | StrictFloat
Positive = Annotated[Number, Field(gt=0)]
NonNegative = Annotated[Number, Field(ge=0)]

# Training options a search space may not touch: they define the protocol, not a setting.
FIXED_TRAINING = {
    "val_fraction": "set by tune.val_fraction",
    "evaluate_test": "the test set is never read while tuning",
    "evaluate_train": "not a setting",
    "device": "chosen per worker",
    "epochs": "the epoch budget is fixed; set it in defaults.training",
    "keep_predictions": "not a setting",
    "keep_activation_params": "not a setting",
}

# Options added after studies were stored: at these values they are left out of the config hash,
# so cells stored before the option existed keep their identity.
HASH_NEUTRAL_DEFAULTS: dict[str, Any] = {"breakpoint_lr": None, "loss_reduction": "mean", "evaluate_train": False}

# How the training loss combines the samples of a batch (TrainingConfig.loss_reduction).
LossReduction = Literal["mean", "sum"]
# Learning-rate schedules by name (training/schedules.py says what each does).
Schedule = Literal["constant", "step-half", "cosine", "onecycle"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)

    def replace(self, **changes: Any) -> Self:
        """A validated copy with `changes` applied."""
        return self.build({**self.model_dump(), **changes})

    @classmethod
    def build(cls, data: dict[str, Any]) -> Self:
        """Validate `data`; a bad value raises ValueError with one readable line."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(describe_error(cls, exc)) from None


class TrainingConfig(_Config):
    """How one network is trained. Defaults live here, on the class."""

    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: Positive = 1e-3
    momentum: NonNegative = 0.9  # sgd only
    weight_decay: NonNegative = 0.0
    act_lr: Positive | None = None  # activation parameters' own lr; None = lr
    act_weight_decay: NonNegative | None = None  # None = weight_decay
    breakpoint_lr: Positive | None = None  # trainable breakpoints' own lr; None = act_lr
    schedule: Schedule = "constant"
    epochs: Annotated[StrictInt, Field(ge=1)] = 10
    batch_size: Annotated[StrictInt, Field(ge=1)] | None = 128  # None = full batch
    grad_clip: Positive | None = None
    device: str = "auto"  # cpu, cuda, cuda:N or auto
    init_scale: Positive = 1.0  # multiplies the default weight init of Linear/Conv layers
    # "mean" over the batch, or "sum": the paper's eq. 1.2 (summed squared error; summed cross-entropy
    # for classification). With "sum", SGD at lr/B moves the weights as "mean" at lr, batch B.
    loss_reduction: LossReduction = "mean"
    val_fraction: Annotated[Number, Field(ge=0, lt=1)] = 0.0  # share of the training set held out (tuning)
    evaluate_test: StrictBool = True  # False while tuning: the test set is never touched
    evaluate_train: StrictBool = False  # also the task's metrics on the training set, as "train_"-prefixed
    keep_predictions: StrictBool = True  # 1-D tasks: store predictions on a fixed grid
    keep_activation_params: StrictBool = True  # store learned activation parameters

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingConfig":
        return cls.build(data)

    @classmethod
    def option_names(cls) -> list[str]:
        return list(cls.model_fields)


class TrialConfig(_Config):
    """Everything one trial needs: task, model, activation, training and the seed."""

    task: str
    model: str
    activation: str
    seed: StrictInt = 0
    task_params: dict[str, Any] = Field(default_factory=dict)
    model_params: dict[str, Any] = Field(default_factory=dict)
    act_params: dict[str, Any] = Field(default_factory=dict)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialConfig":
        data = dict(data)
        training = data.pop("training", None) or {}
        if isinstance(training, dict):
            training = TrainingConfig.from_dict(training)
        return cls.build({**data, "training": training})

    def canonical_json(self, exclude: tuple[str, ...] = ()) -> str:
        data = {k: v for k, v in self.to_dict().items() if k not in exclude}
        data["training"] = {k: v for k, v in data["training"].items()
                            if not (k in HASH_NEUTRAL_DEFAULTS and v == HASH_NEUTRAL_DEFAULTS[k])}
        return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)

    def config_hash(self) -> str:
        """Stable 16-hex-digit hash of the whole config (seed included)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def group_hash(self) -> str:
        """Hash of everything but the seed: trials in one group differ only by seed."""
        return hashlib.sha256(self.canonical_json(exclude=("seed",)).encode()).hexdigest()[:16]


def describe_error(model: type[BaseModel], exc: ValidationError) -> str:
    """The first validation error as one line in our words, e.g. "epochs must be >= 1, got 0"."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "constrained-"))
           and p not in ("int", "float", "bool", "str", "none", "literal")]
    name, kind, got, ctx = ".".join(loc), err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        extra = sorted(set(exc.errors()[i]["loc"][-1] for i in range(len(exc.errors()))
                           if exc.errors()[i]["type"] == "extra_forbidden"))
        return f"unknown training option(s) {extra}; valid: {', '.join(sorted(model.model_fields))}" \
            if model is TrainingConfig else f"unknown option(s) {extra}; valid: {', '.join(model.model_fields)}"
    if kind == "literal_error":
        return f"unknown {name} {got!r}; choose one of: {ctx.get('expected', '').replace(' or ', ', ').replace(chr(39), '')}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in ("int_type", "float_type") and {"int_type", "float_type"} <= {e["type"] for e in exc.errors()}:
        return f"{name} must be a number, got {type(got).__name__} {got!r}"
    if kind in bounds:
        limit = next(iter(ctx.values()), "")
        return f"{name} must be {bounds[kind]} {limit}, got {got!r}"
    if kind == "missing":
        return f"{name} is required"
    return f"{name}: {err['msg']} (got {type(got).__name__} {got!r})"


# --- how reports present a study (its [report] table) -------------------------------------------


class _Strict(BaseModel):
    """Unknown keys and wrong types are errors (no silent coercion of "3" into 3)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SuccessRule(_Strict):
    """A seed succeeds when its final `metric` reaches `threshold`: at most it for an error, at least
    it for an accuracy. For outcomes that are bimodal (a seed learns the function or it does not)."""

    metric: str = Field(min_length=1)
    threshold: float
    tasks: list[str] | None = Field(default=None, min_length=1)  # task labels; default: every task

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"threshold must be a finite number, got {value}")
        return value


class ReportSpec(_Strict):
    """How reports present the study (`[report]`); like `description`, it changes nothing that runs."""

    interval: Interval = "auto"
    success: list[SuccessRule] = Field(default_factory=list)

    def threshold(self, metric: str, task: str) -> float | None:
        """The success threshold of `metric` on `task`, if the study states one."""
        for rule in self.success:
            if rule.metric == metric and (rule.tasks is None or task in rule.tasks):
                return rule.threshold
        return None


# --- what one trial produces ----------------------------------------------------------------------


@dataclass
class EpochRecord:
    """One epoch: train loss, evaluation metrics and timings."""

    epoch: int  # 1-based
    train_loss: float  # the epoch's loss per sample (mean over the samples, whatever loss_reduction is)
    # test metrics ("rel_l2", "accuracy", ...); "val_"-prefixed on the validation split, "train_"-prefixed
    # on the training set (evaluate_train)
    metrics: dict[str, float]
    epoch_time_s: float  # training only; evaluation timed apart
    eval_time_s: float
    samples_per_s: float
    lr: float


@dataclass
class TrialResult:
    """The outcome of one trial. The results store persists exactly this."""

    status: RunStatus
    metric_name: str  # the task's primary metric, e.g. "rel_l2" or "accuracy"
    metric_direction: Direction
    epochs: list[EpochRecord] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    total_train_time_s: float = 0.0
    num_params: int = 0
    num_act_params: int = 0
    device: str = "cpu"
    error: str | None = None
    pack_size: int = 1  # cells trained together as one packed model (training/packed.py); 1: alone
    # Small JSON-able arrays for the reports: "predictions" ({"x", "target", "prediction"} on a
    # fixed grid, 1-D tasks) and "activation_params" ({module_name: {param_name: nested list}}).
    artifacts: dict[str, Any] = field(default_factory=dict)

    @property
    def final_metric(self) -> float | None:
        return self.final_metrics.get(self.metric_name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# What a cell's training gives back: its result, or the exception that ended it (a bad config, a
# pruned tuning trial); and the callback each finished epoch is handed to (the worker's check that
# the run is still its own, a tuning slot's pruning report).
Outcome = TrialResult | BaseException
OnEpoch = Callable[[EpochRecord], None] | None
