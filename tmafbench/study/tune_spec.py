"""The `[tune]` table of a study file: a search space, a budget per group, tuning and evaluation seeds.

A study file with a `[tune]` table is run in two phases (tmafbench/study/tuning.py): every
activation group is tuned with the same number of Optuna trials on a validation split carved from
the training data, then each group's best settings are trained on fresh evaluation seeds::

    [tune]
    trials = 20                  # budget per activation group (the same for every group)
    seeds = 1                    # tuning seeds: a count (0..n-1) or a list; each trial trains them all
    eval_seeds = 5               # a list, or a count of fresh seeds after the largest tuning seed
    metric = "val_rel_l2"        # a validation metric; default "val_" + the task's primary metric
    val_fraction = 0.2           # share of the training set held out while tuning
    pruner = "median"            # none | median | successive-halving (per-epoch validation metric)
    sampler_seed = 0             # TPE's seed
    startup_trials = 5           # random trials before TPE models the space (default: trials // 3, 1..10)

    [tune.space]                 # each key: section.name, section in training/act_params/task_params/model_params
    "training.lr" = { low = 1e-4, high = 3e-2, log = true }
    "training.batch_size" = { choices = [32, 64, 128] }
    "training.act_lr" = { low = 1e-4, high = 1e-1, log = true, activations = ["tmaf"] }

`axes.seeds` is not used with `[tune]` (seeds come from `tune.seeds` and `tune.eval_seeds`).
An `act_params.*` key applies only to the activations that take that parameter; `activations`
scopes any key to some activation labels. Every error names its key path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tmafbench.core import FIXED_TRAINING, TrainingConfig, TrialConfig, metric_names
from tmafbench.study.cells import CellPlan, activation_param_names, expand
from tmafbench.study.spec import MakeError, Seeds, StudySpec, _clean, _Strict, seed_list

if TYPE_CHECKING:
    from optuna.trial import Trial

M = TypeVar("M", bound=BaseModel)

SECTIONS = ("training", "act_params", "task_params", "model_params")
Scalar = str | int | float | bool


class RangeParam(_Strict):
    """A numeric range: integers when low and high are both integers (and step is), else floats."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None
    activations: list[str] | None = None  # activation labels this key applies to; None = all

    @model_validator(mode="after")
    def _check(self) -> "RangeParam":
        if not self.low < self.high:
            raise ValueError(f"low must be < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("give either log = true or step, not both")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high)) and isinstance(self.step, (int, type(None)))

    def suggest(self, trial: Trial, name: str) -> int | float:
        if self.is_int:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        return [self.low, self.high]


class ChoiceParam(_Strict):
    """A categorical choice among scalars."""

    choices: list[Scalar] = Field(min_length=1)
    activations: list[str] | None = None

    @field_validator("choices")
    @classmethod
    def _distinct(cls, value: list[Scalar]) -> list[Scalar]:
        if len({repr(v) for v in value}) != len(value):
            raise ValueError("choices must be distinct")
        return value

    def suggest(self, trial: Trial, name: str) -> Scalar | None:
        return trial.suggest_categorical(name, list(self.choices))

    def extremes(self) -> list[Any]:
        return list(self.choices)


SpaceParam = RangeParam | ChoiceParam


class TuneSpec(_Strict):
    """The `[tune]` table, less `space` (parsed into `SpaceParam`s by `parse_space`)."""

    trials: int = Field(ge=1)
    seeds: Seeds = 1
    eval_seeds: Seeds
    metric: str | None = None
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    pruner: Literal["none", "median", "successive-halving"] = "none"
    sampler_seed: int = 0
    startup_trials: int | None = Field(default=None, ge=0)
    space: dict[str, Any] = Field(min_length=1)

    def tune_seed_list(self) -> list[int]:
        return seed_list(self.seeds)

    def eval_seed_list(self) -> list[int]:
        """A list as given; a count n means the n seeds after the largest tuning seed (fresh)."""
        if isinstance(self.eval_seeds, list):
            return list(self.eval_seeds)
        start = max(self.tune_seed_list()) + 1
        return list(range(start, start + self.eval_seeds))

    def n_startup(self) -> int:
        return self.startup_trials if self.startup_trials is not None else max(1, min(10, self.trials // 3))

    @property
    def objective(self) -> str:
        """The validation metric tuning reads: `metric`, which `check_tune` always sets."""
        if self.metric is None:
            raise ValueError("tune.metric is set by check_tune; this TuneSpec was not checked")
        return self.metric

    def max_pack(self) -> int:
        """The most slots of a group one pack may hold: slots packed together are proposed before any
        of them finishes, which TPE's random start can do well and nothing after it."""
        return self.n_startup()

    def as_run(self) -> dict[str, Any]:
        """The table as the study runs it, stored with its tuning study: every default filled in (the
        metric resolved from the task's kind, startup_trials from the budget, the seeds as lists),
        and the sampler behaviour in force (SAMPLER, max_pack), so that a report says what ran."""
        data = self.model_dump(mode="json")
        data.update(seeds=self.tune_seed_list(), eval_seeds=self.eval_seed_list(), startup_trials=self.n_startup(),
                    sampler=SAMPLER, max_pack=self.max_pack())
        return data


# How tuning slots are proposed (recorded per study by `TuneSpec.as_run`). Before the cap, a worker's
# pack could hold a whole group's trials, all proposed before any finished: a random search.
SAMPLER = "tpe (packs capped at startup_trials)"


def validate_model(model: type[M], data: dict[str, Any], prefix: tuple[Any, ...], err: MakeError) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise err(prefix + tuple(first["loc"]), _clean(first)) from None


def flatten_space(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"training": {"lr": {...}}}` (TOML's dotted bare keys) and `{"training.lr": {...}}` alike."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else key
        is_entry = not isinstance(value, dict) or {"low", "high", "choices"} & set(value)
        if is_entry:
            out[name] = value
        else:
            out.update(flatten_space(value, name))
    return out


def parse_space(raw: dict[str, Any], err: MakeError) -> dict[str, SpaceParam]:
    """Each `section.name` entry as a RangeParam or a ChoiceParam."""
    space: dict[str, SpaceParam] = {}
    for key, value in flatten_space(raw).items():
        loc = ("tune", "space", key)
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name or "." in name:
            raise err(loc, f"a search-space key is section.name with section one of {', '.join(SECTIONS)}; got {key!r}")
        if not isinstance(value, dict):
            raise err(loc, "must be a table: { low = .., high = .., log = true } or { choices = [...] }")
        if "choices" in value:
            space[key] = validate_model(ChoiceParam, value, loc, err)
        else:
            space[key] = validate_model(RangeParam, value, loc, err)
    return space


# --- semantic checks ---------------------------------------------------------------------------


def check_tune(spec: StudySpec, tune: TuneSpec, space: dict[str, SpaceParam], err: MakeError) -> TuneSpec:
    """Metric, seeds, scopes and every space key against the study; returns tune with its metric set."""
    tune = _check_metric(spec, tune, err)
    overlap = sorted(set(tune.tune_seed_list()) & set(tune.eval_seed_list()))
    if overlap:
        raise err(("tune", "eval_seeds"), f"evaluation seeds must be fresh; {overlap} are also tuning seeds")
    labels = [a.key for a in spec.axes.activations]
    for key, param in space.items():
        for label in param.activations or []:
            if label not in labels:
                raise err(("tune", "space", key, "activations"), f"unknown activation label {label!r}; choose from: {', '.join(labels)}")
        _check_key(spec, key, param, err)
    return tune


def _check_metric(spec: StudySpec, tune: TuneSpec, err: MakeError) -> TuneSpec:
    from tmafbench import tasks

    kinds = set()
    for task in spec.tasks():
        params = {**spec.defaults.task_params, **task.params}
        kinds.add(tasks.create(task.name, **params).kind)
    if len(kinds) > 1 and tune.metric is None:
        raise err(("tune", "metric"), "the tasks mix regression and classification: name the metric")
    valid = sorted({f"val_{m}" for kind in kinds for m in metric_names(kind)})
    metric = tune.metric or f"val_{metric_names(kinds.pop())[0]}"
    if not metric.startswith("val_"):
        raise err(("tune", "metric"), f"tuning reads validation metrics only (the test set is never used); use one of: {', '.join(valid)}")
    if metric not in valid:
        raise err(("tune", "metric"), f"unknown metric {metric!r}; choose one of: {', '.join(valid)}")
    return tune.model_copy(update={"metric": metric})


def _check_key(spec: StudySpec, key: str, param: SpaceParam, err: MakeError) -> None:
    """The key exists for some group, and its extreme values build (TrainingConfig, activation factory)."""
    section, _, name = key.partition(".")
    loc = ("tune", "space", key)
    if section == "training":
        known = set(TrainingConfig.option_names())
        if name in FIXED_TRAINING:
            raise err(loc, f"training.{name} cannot be tuned: {FIXED_TRAINING[name]}")
        if name not in known:
            raise err(loc, f"unknown training option {name!r}; valid: {', '.join(sorted(known - set(FIXED_TRAINING)))}")
    groups = group_bases(expand(spec))
    applies = [g for g in groups if key in space_for(g, {key: param})]
    if not applies:
        if section == "act_params":
            raise err(loc, f"no activation of the study takes parameter {name!r}")
        raise err(loc, "applies to no group of the study")
    for group in applies:
        for value in param.extremes():
            try:
                _build_check(apply_params(group.config, {key: value}))
            except (ValueError, TypeError) as exc:
                raise err(loc, f"value {value!r} fails for {group.label!r}: {exc}") from None


def _build_check(config: TrialConfig) -> None:
    """Validate without training (TrainingConfig checked itself in `apply_params`): registries
    check names and parameters, the activation factory builds eagerly."""
    from tmafbench import activations, models, tasks
    from tmafbench.study.validate import check_name_params

    activations.factory(config.activation, **config.act_params)
    check_name_params(tasks, "task", config.task, config.task_params)
    check_name_params(models, "model", config.model, config.model_params)


# --- groups and settings -------------------------------------------------------------------------


def group_bases(cells: list[CellPlan]) -> list[CellPlan]:
    """The first cell of each group (all axes but the seed), in study order."""
    seen: dict[str, CellPlan] = {}
    for cell in cells:
        seen.setdefault(cell.group_hash, cell)
    return list(seen.values())


def space_for(cell: CellPlan, space: dict[str, SpaceParam]) -> dict[str, SpaceParam]:
    """The part of the space that applies to this cell's group (scope, and act_params it takes)."""
    out = {}
    for key, param in space.items():
        if param.activations is not None and cell.activation not in param.activations:
            continue
        section, _, name = key.partition(".")
        if section == "act_params" and name not in activation_param_names(cell.config.activation):
            continue
        out[key] = param
    return out


def apply_params(config: TrialConfig, params: dict[str, Any]) -> TrialConfig:
    """`config` with `{"training.lr": 0.01, "act_params.init": "relu", ...}` set."""
    data = config.to_dict()
    for key, value in params.items():
        section, _, name = key.partition(".")
        data[section] = {**data[section], name: value}
    return TrialConfig.from_dict(data)
