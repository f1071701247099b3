"""Study files (TOML): parse, apply `--set` overrides, validate everything before anything runs.

A study file looks like this (see studies/quickstart.toml)::

    name = "quickstart"
    description = "ReLU against TMAF on small problems"
    max_retries = 2                       # attempts a cell may fail before its failure is final
    max_crashes = 2                       # attempts that may lose their worker (segfault, OOM kill) before the cell is given up

    [defaults]                            # shared by every task below
    task = "sine-sum"
    model = "mlp"
    task_params = { train_size = 256, test_size = 256 }
    model_params = { depth = 1, width = 20 }
    training = { epochs = 5, lr = 1e-3 }  # keys are TrainingConfig fields

    [[axes.tasks]]                        # optional; default: the one task of [defaults]
    name = "oscillatory"
    params = { train_size = 512 }         # merged over defaults.task_params
    training = { epochs = 8 }             # merged over defaults.training

    [[axes.activations]]
    name = "relu"                         # no interval grid: one cell per seed
    [[axes.activations]]
    name = "tmaf"
    label = "tmaf"                        # default: the name; must be unique
    params = { init = "relu" }
    grids = ["h1"]                        # optional: only these grids (labels) for this activation

    [[axes.grids]]                        # applied only to activations that take a grid
    label = "h1"                          # default: "[lo,hi]/intervals"
    lo = -5.0
    hi = 5.0
    intervals = 10
    [[axes.grids]]
    breakpoints = [-1.0, 0.0, 1.0]

    [axes]
    seeds = 2                             # a count (0..n-1) or a list
    depth = [1, 2]                        # model_params.depth
    width = { values = [20, 40], tasks = ["sine-sum"] }   # scoped to some tasks / activations
    task_params = { n = { values = [1, 3], tasks = ["sine-sum"] } }

    [reference]                           # published numbers (schema.py docstring)
    source = "Li, Liu, Zikatanov 2021, Table 3.1"
    metric = "rel_l2"
    rows = [ { activation = "relu", n = 1, value = 0.01 } ]

    [report]                              # how reports present the results; changes nothing that runs
    interval = "auto"                     # auto | bootstrap | t (reports/stats.py, INTERVAL_TEXT)
    success = [ { metric = "rel_l2", threshold = 0.1, tasks = ["sine-sum"] } ]   # share of seeds <= 0.1

Every error names the key path (e.g. `axes.activations[1].params`) and, where the key can be
found in the text, its line.
"""

from __future__ import annotations

import copy
import re
import tomllib
from typing import Annotated, Any, Callable, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from tmafbench.core import ReportSpec
from tmafbench.errors import SpecError

# Builds the one-line SpecError for a key path of the study file (`spec_error` with the file's text).
MakeError = Callable[[tuple[Any, ...], str], SpecError]

GRID_KEYS = ("lo", "hi", "intervals", "breakpoints")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class _Strict(BaseModel):
    """Unknown keys and wrong types are errors (no silent coercion of "3" into 3)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GridSpec(_Strict):
    """One interval grid: uniform (lo, hi, intervals) or explicit breakpoints."""

    label: str | None = None
    lo: float | None = None
    hi: float | None = None
    intervals: int | None = None
    breakpoints: list[float] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "GridSpec":
        uniform = (self.lo, self.hi, self.intervals)
        if self.breakpoints is not None:
            if any(v is not None for v in uniform):
                raise ValueError("give either breakpoints or lo/hi/intervals, not both")
            bps = self.breakpoints
            if not bps or any(b <= a for a, b in zip(bps, bps[1:])):
                raise ValueError("breakpoints must be a non-empty, strictly increasing list")
        else:
            if any(v is None for v in uniform):
                raise ValueError("a uniform grid needs lo, hi and intervals (or give breakpoints)")
            if not self.lo < self.hi:  # type: ignore[operator]
                raise ValueError(f"lo must be < hi, got lo={self.lo:g}, hi={self.hi:g}")
            if self.intervals < 1:  # type: ignore[operator]
                raise ValueError(f"intervals must be >= 1, got {self.intervals}")
        return self

    def params(self) -> dict[str, Any]:
        """The activation parameters this grid sets."""
        if self.breakpoints is not None:
            return {"breakpoints": list(self.breakpoints)}
        return {"lo": self.lo, "hi": self.hi, "intervals": self.intervals}

    def default_label(self) -> str:
        if self.label:
            return self.label
        if self.breakpoints is not None:
            return "bp(" + ",".join(f"{b:g}" for b in self.breakpoints) + ")"
        return f"[{self.lo:g},{self.hi:g}]/{self.intervals}"

    def inner_intervals(self) -> int:
        return self.intervals if self.breakpoints is None else max(1, len(self.breakpoints) - 1)  # type: ignore[return-value]


class ActivationSpec(_Strict):
    name: str
    label: str | None = Field(default=None, pattern=NAME_PATTERN)
    params: dict[str, Any] = Field(default_factory=dict)
    grids: list[str] | None = None  # grid labels this activation uses; None = every grid

    @property
    def key(self) -> str:
        return self.label or self.name


class TaskSpec(_Strict):
    name: str
    label: str | None = Field(default=None, pattern=NAME_PATTERN)
    params: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    model_params: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


class ScopedAxis(_Strict):
    """Axis values that apply only to some activations and/or tasks (by label)."""

    values: list[Any] = Field(min_length=1)
    activations: list[str] | None = None
    tasks: list[str] | None = None

    def applies(self, task: str, activation: str) -> bool:
        return (self.activations is None or activation in self.activations) and (
            self.tasks is None or task in self.tasks
        )


class ScopedCases(_Strict):
    """Several scoped value lists for one axis, e.g. n = 1..4 for one task and 5..8 for another:
    `n = { cases = [ { values = [1, 2], tasks = ["shallow"] }, { values = [5], tasks = ["deep"] } ] }`.
    A cell takes the values of every case that applies to it, in order."""

    cases: list[ScopedAxis] = Field(min_length=1)

    def values_for(self, task: str, activation: str) -> list[Any] | None:
        values = [v for case in self.cases if case.applies(task, activation) for v in case.values]
        return values or None


AxisValues = list[Any] | ScopedAxis | ScopedCases


def _check_seeds(value: int | list[int]) -> int | list[int]:
    if isinstance(value, int) and value < 1:
        raise ValueError(f"a seed count must be >= 1, got {value}")
    if isinstance(value, list) and (not value or len(set(value)) != len(value)):
        raise ValueError("a seed list must be non-empty and without repeats")
    return value


# A seed count n (seeds 0..n-1) or an explicit list of distinct seeds.
Seeds = Annotated[int | list[int], AfterValidator(_check_seeds)]


def seed_list(seeds: int | list[int]) -> list[int]:
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


class Axes(_Strict):
    tasks: list[TaskSpec] = Field(default_factory=list)
    activations: list[ActivationSpec] = Field(min_length=1)
    grids: list[GridSpec] = Field(default_factory=list)
    seeds: Seeds = 1
    depth: AxisValues | None = None
    width: AxisValues | None = None
    task_params: dict[str, AxisValues] = Field(default_factory=dict)
    model_params: dict[str, AxisValues] = Field(default_factory=dict)
    training: dict[str, AxisValues] = Field(default_factory=dict)

    def seed_list(self) -> list[int]:
        return seed_list(self.seeds)


class Defaults(_Strict):
    task: str | None = None
    model: str = "mlp"
    task_params: dict[str, Any] = Field(default_factory=dict)
    model_params: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)


class Reference(_Strict):
    """Published numbers set beside the measured ones (format in store/schema.py's docstring)."""

    source: str
    metric: str
    rows: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("rows")
    @classmethod
    def _rows(cls, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, row in enumerate(rows):
            if "value" not in row:
                raise ValueError(f"row {i} has no 'value'")
        return rows


class StudySpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    max_retries: int = Field(default=2, ge=1)
    max_crashes: int = Field(default=2, ge=1)
    defaults: Defaults = Field(default_factory=Defaults)
    axes: Axes
    reference: Reference | None = None
    report: ReportSpec | None = None

    def tasks(self) -> list[TaskSpec]:
        """The task axis: `axes.tasks`, or the one task named in `defaults`."""
        if self.axes.tasks:
            return list(self.axes.tasks)
        return [TaskSpec(name=self.defaults.task)] if self.defaults.task else []

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# --- loading -------------------------------------------------------------------------------


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` items (list items by index: `axes.activations.0.params.init=relu`)."""
    data = copy.deepcopy(data)
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise SpecError(f"--set expects key.path=value, got {item!r}")
        keys = path.strip().split(".")
        node: Any = data
        for depth, key in enumerate(keys[:-1]):
            node = _step(node, key, ".".join(keys[: depth + 1]))
        last = keys[-1]
        if isinstance(node, list):
            node[_index(node, last, path)] = parse_value(raw)
        elif isinstance(node, dict):
            node[last] = parse_value(raw)
        else:
            raise SpecError(f"--set {path}: {'.'.join(keys[:-1])} is not a table")
    return data


def parse_value(raw: str) -> Any:
    """A `--set` value as a TOML value (3, 1e-3, true, [1, 2], "text"); anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


def _index(node: list[Any], key: str, path: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise SpecError(f"--set {path}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def _step(node: Any, key: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, path)]
    if not isinstance(node, dict):
        raise SpecError(f"--set {path}: not a table")
    return node.setdefault(key, {})


def format_loc(loc: tuple[Any, ...]) -> str:
    """('axes', 'activations', 1, 'params') -> 'axes.activations[1].params'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("list[any]", "ScopedAxis", "ScopedCases", "int", "list[int]") or str(part).startswith(("function-", "list[")):
            continue  # pydantic's union-branch names are not keys
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def find_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """The first line that defines the deepest named key of `loc` (a cheap lookup: tomllib has no positions)."""
    names = [str(p) for p in loc if isinstance(p, str) and re.fullmatch(r"[A-Za-z0-9_\-]+", str(p))]
    for name in reversed(names):
        pattern = re.compile(rf"^\s*(\[\[?\s*)?([\w.\-\"]*\.)?\"?{re.escape(name)}\"?\s*(=|\]|\.)|[{{,]\s*{re.escape(name)}\s*=", re.M)
        match = pattern.search(text)
        if match:
            return text.count("\n", 0, match.start()) + 1
    return None


def spec_error(text: str, source: str, loc: tuple[Any, ...], message: str) -> SpecError:
    line = find_line(text, loc) if text else None
    where = f"{source}:{line}" if line else source
    return SpecError(f"{where}: {format_loc(loc)}: {message}")


def _clean(err: Mapping[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "missing required key"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if "input" in err and err["type"].endswith("_type"):
        msg += f" (got {type(err['input']).__name__} {err['input']!r})"
    return msg
