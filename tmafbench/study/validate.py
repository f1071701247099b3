"""Semantic checks of a parsed study: names against the registries, labels, scopes, grids.

Each distinct activation (name + params + grid) is built once with `activations.factory`, task
and model parameters are checked against their registries, and training options against
`TrainingConfig`. Errors name the key path; nothing is trained and nothing is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, cast

from tmafbench.registries import Registry, registry_of
from tmafbench.study.cells import expand, grids_for, own_grid, takes_grid
from tmafbench.core import ReportSpec, TrialConfig
from tmafbench.study.spec import MakeError, ScopedAxis, ScopedCases, StudySpec

if TYPE_CHECKING:
    from tmafbench.tasks.base import Task




def check_name_params(module: Any, kind: str, name: str, params: dict[str, Any]) -> None:
    """Raise ValueError for an unknown name or parameter, without building anything."""
    registry = registry_of(module)
    if registry is not None:
        registry.check_params(name, params)
        check_types(registry, name, params)
    elif name not in module.available():
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {', '.join(module.available())}")


def check_types(registry: Registry[Any], name: str, params: dict[str, Any]) -> None:
    """A value must have its default's type (int is fine for a float); None defaults accept anything."""
    for info in registry.entry(name).params:
        if info.name not in params or info.required or info.default is None:
            continue
        value, default = params[info.name], info.default
        expected = (int, float) if type(default) is float else type(default)
        ok = isinstance(value, expected) and not (isinstance(value, bool) and type(default) is not bool)
        if type(default) is tuple:
            ok = isinstance(value, (list, tuple))
        if not ok:
            raise ValueError(f"{registry.kind} {name!r}: {info.name} must be {type(default).__name__}, "
                             f"got {type(value).__name__} {value!r}")


def _unique(labels: list[str], what: str, loc: tuple[Any, ...], err: MakeError) -> None:
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if label in seen:
            raise err(loc + (i,), f"{what} label {label!r} is used twice; give each a distinct label")
        seen.add(label)


def _check_labels(spec: StudySpec, err: MakeError) -> None:
    tasks = [t.key for t in spec.tasks()]
    acts = [a.key for a in spec.axes.activations]
    grids = [g.default_label() for g in spec.axes.grids]
    _unique(tasks, "task", ("axes", "tasks"), err)
    _unique(acts, "activation", ("axes", "activations"), err)
    _unique(grids, "grid", ("axes", "grids"), err)
    for i, act in enumerate(spec.axes.activations):
        for name in act.grids or []:
            if name not in grids:
                raise err(("axes", "activations", i, "grids"), f"unknown grid {name!r}; grids: {', '.join(grids) or '(none)'}")
    axes = spec.axes
    scoped: list[tuple[tuple[str, ...], Any]] = [((key,), getattr(axes, key)) for key in ("depth", "width")]
    for section in ("task_params", "model_params", "training"):
        scoped += [((section, key), value) for key, value in getattr(axes, section).items()]
    for loc, value in scoped:
        cases: list[tuple[tuple[Any, ...], ScopedAxis]] = [((), value)] if isinstance(value, ScopedAxis) else []
        if isinstance(value, ScopedCases):
            cases = [(("cases", i), case) for i, case in enumerate(value.cases)]
        for where, case in cases:
            for field, valid in (("activations", acts), ("tasks", tasks)):
                for name in getattr(case, field) or []:
                    if name not in valid:
                        raise err(
                            ("axes",) + loc + where + (field,),
                            f"unknown {field[:-1]} label {name!r}; choose from: {', '.join(valid)}",
                        )


def _check_grid_scopes(spec: StudySpec, err: MakeError) -> None:
    for i, act in enumerate(spec.axes.activations):
        if act.grids is not None and (not takes_grid(act.name) or own_grid(act)):
            why = "takes no interval grid" if not takes_grid(act.name) else "sets its own grid in params"
            raise err(("axes", "activations", i, "grids"), f"activation {act.key!r} {why}; remove `grids`")


def check_spec(spec: StudySpec, err: MakeError) -> None:
    """Raise SpecError (via `err(loc, message)`) for anything that would fail later."""
    from tmafbench import activations, tasks

    if not spec.tasks():
        raise err(("defaults", "task"), "no task: set defaults.task or add [[axes.tasks]]")
    _check_labels(spec, err)
    for i, act in enumerate(spec.axes.activations):
        if act.name not in activations.available():
            raise err(("axes", "activations", i, "name"),
                      f"unknown activation {act.name!r}; choose one of: {', '.join(activations.available())}")
    _check_grid_scopes(spec, err)
    for i, task in enumerate(spec.tasks()):
        loc = ("axes", "tasks", i) if spec.axes.tasks else ("defaults",)
        try:
            check_name_params(tasks, "task", task.name, {**spec.defaults.task_params, **task.params})
        except ValueError as exc:
            raise err(loc + ("params",) if spec.axes.tasks else ("defaults", "task_params"), str(exc)) from None
    _check_cells(spec, err)
    _check_report(spec, err)


def _check_report(spec: StudySpec, err: MakeError) -> None:
    """Each success rule names task labels of the study and a final metric they measure, once per task."""
    from tmafbench import tasks
    from tmafbench.core import metric_names

    measures = {}
    for task in spec.tasks():
        task_class = cast("type[Task]", tasks.REGISTRY.entry(task.name).factory)
        task_metrics = metric_names(task_class.kind)
        measures[task.key] = ({m for base in (*task_metrics, "train_loss") for m in (base, f"val_{base}")}
                              | {f"train_{m}" for m in task_metrics})  # with training.evaluate_train
    seen: set[tuple[str, str]] = set()
    for i, rule in enumerate((spec.report or ReportSpec()).success):
        loc = ("report", "success", i)
        for label in rule.tasks or []:
            if label not in measures:
                raise err(loc + ("tasks",), f"unknown task label {label!r}; choose from: {', '.join(measures)}")
        scope = [t for t in rule.tasks or measures if rule.metric in measures[t]]
        if not scope or (rule.tasks and len(scope) < len(rule.tasks)):
            asked = rule.tasks or list(measures)
            valid = sorted({m for t in asked for m in measures[t] if not m.startswith("val_")})
            raise err(loc + ("metric",), f"task {', '.join(t for t in asked if t not in scope)} does not measure "
                                         f"{rule.metric!r}; choose one of: {', '.join(valid)}")
        for label in scope:
            if (rule.metric, label) in seen:
                raise err(loc, f"a second success threshold for {rule.metric} on task {label!r}")
            seen.add((rule.metric, label))


def _check_activations(spec: StudySpec, err: MakeError) -> None:
    """Build each activation once per grid it is crossed with (impossible grids fail here)."""
    from tmafbench import activations

    for i, act in enumerate(spec.axes.activations):
        for grid in grids_for(spec, act):
            params = {**act.params, **(grid.params() if grid else {})}
            try:
                activations.factory(act.name, **params)
                activations.grid_info(act.name, params)
            except (ValueError, TypeError) as exc:
                where = f" with grid {grid.default_label()}" if grid else ""
                raise err(("axes", "activations", i, "params"), f"activation {act.key!r}{where}: {exc}") from None


def _check_cells(spec: StudySpec, err: MakeError) -> None:
    """Check activations, then model params and training options of every cell, and cell uniqueness."""
    from tmafbench import models

    _check_activations(spec, err)
    try:
        cells = expand(spec)
    except (ValueError, TypeError) as exc:  # TrainingConfig rejects an option or a value
        loc = ("axes", "training") if spec.axes.training else ("defaults", "training")
        raise err(loc, str(exc)) from None
    checked_models: set[str] = set()
    seen: dict[str, str] = {}
    for cell in cells:
        cfg = cell.config
        model_key = repr((cfg.model, sorted(cfg.model_params.items(), key=str)))
        if model_key not in checked_models:
            checked_models.add(model_key)
            try:
                check_name_params(models, "model", cfg.model, cfg.model_params)
            except ValueError as exc:
                raise err(("defaults", "model_params"), str(exc)) from None
        if cell.config_hash in seen:
            raise err(("axes", "activations"), f"cells {seen[cell.config_hash]!r} and {cell.label!r} are identical; differ their params")
        seen[cell.config_hash] = cell.label


def check_data(configs: Iterable[TrialConfig]) -> None:
    """Find every data set the cells read, once, so that missing data fails before anything is written.

    Generated tasks (sine-sum, oscillatory, expression) need nothing. Image tasks are loaded through
    the same per-process cache the trainer uses, so a DataNotFoundError names the folders looked in.
    """
    from tmafbench import tasks
    from tmafbench.tasks.vision import VisionTask, load_splits

    seen: set[tuple[Any, ...]] = set()
    for config in configs:
        task = tasks.create(config.task, **config.task_params)
        key = (type(task), getattr(task, "data_dir", None), getattr(task, "download", None))
        if isinstance(task, VisionTask) and key not in seen:
            seen.add(key)
            load_splits(type(task), task.data_dir, task.download)  # type: ignore[arg-type]  # a class is hashable
