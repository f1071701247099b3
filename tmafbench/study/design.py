"""A study file, read and validated: its grid of cells and, when it has `[tune]`, its tuning.

The one loader of study files (`load_design` / `parse_design`), and the one design hash. The
design is what decides which runs happen: the cells, and for a tuned study the tuning table too.
The documentation keys (name, description, reference, report) are not part of it: editing them and
running the file again updates them without training anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tmafbench.errors import SpecError
from tmafbench.study.cells import CellPlan, cells_hash, expand
from tmafbench.study.spec import StudySpec, apply_overrides, spec_error
from tmafbench.study.tune_spec import SpaceParam, TuneSpec, check_tune, parse_space, validate_model

# Keys of a study file that document it without changing what runs.
DOCUMENTATION_KEYS = ("name", "description", "reference", "report")


@dataclass(frozen=True)
class StudyDesign:
    """A validated study file: the grid spec (seeds = evaluation seeds) and, if present, its tuning."""

    spec: StudySpec
    tune: TuneSpec | None = None
    space: dict[str, SpaceParam] = field(default_factory=dict)  # "training.lr" -> range or choice
    data: dict[str, Any] = field(default_factory=dict)  # the file's tables after --set: stored as the spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tuned(self) -> bool:
        return self.tune is not None

    @cached_property
    def cells(self) -> list[CellPlan]:
        """Every (evaluation) cell, in study order."""
        return expand(self.spec)

    def design_hash(self) -> str:
        """Which cells the study has; for a tuned study also its tuning table (space, budget, seeds)."""
        if self.tune is None:
            return cells_hash(self.cells)
        tune = json.dumps(self.data.get("tune", {}), sort_keys=True, default=str)
        return hashlib.sha256(f"{cells_hash(self.cells)}\n{tune}".encode()).hexdigest()[:32]

    def same_design(self, stored_hash: str) -> bool:
        """True for this design's hash, and for the hashes earlier releases stored for a tuned study
        (the whole file without its name, with or without description and reference)."""
        if stored_hash == self.design_hash():
            return True
        if self.tune is None:
            return False
        return stored_hash in (_legacy_hash(self.data, DOCUMENTATION_KEYS), _legacy_hash(self.data, ("name",)))

    def renamed(self, name: str) -> "StudyDesign":
        """The same design under another study name (`--new-name`)."""
        try:
            spec = StudySpec.model_validate({**self.spec.model_dump(), "name": name})
        except ValidationError:
            raise SpecError(f"--new-name {name!r}: a study name is letters, digits, '_', '.' and '-'") from None
        return StudyDesign(spec, self.tune, self.space, {**self.data, "name": name})


def _legacy_hash(data: dict[str, Any], ignored: tuple[str, ...]) -> str:
    blob = json.dumps({k: v for k, v in data.items() if k not in ignored}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# --- loading -------------------------------------------------------------------------------------


def load_design(path: str | Path, overrides: list[str] | None = None) -> StudyDesign:
    """Read a study file, with or without `[tune]`, and validate everything (nothing is written)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no study file at {path}")
    return parse_design(path.read_text(), overrides, source=str(path))


def parse_design(text: str, overrides: list[str] | None = None, source: str = "<study>") -> StudyDesign:
    """Parse TOML text and `--set` overrides; see `design_from_dict`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from None
    return design_from_dict(apply_overrides(data, overrides or []), text, source)


def stored_form(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any] | None:
    """The spec a study made from this file stores, from a check of its shape only (no registry,
    no torch); None when the shape is wrong (the full validation then says why).

    Enough to tell whether a stored study has exactly this file, so that resuming a finished study
    needs nothing that imports torch.
    """
    try:
        data = apply_overrides(tomllib.loads(Path(path).read_text()), overrides or [])
        if "tune" in data:
            return _stored(data, data["tune"])
        return StudySpec.model_validate(data).to_dict()
    except (OSError, tomllib.TOMLDecodeError, SpecError, ValidationError):
        return None


def design_from_dict(data: dict[str, Any], text: str = "", source: str = "<study>") -> StudyDesign:
    """Validate a study dict (a file, or the spec stored in the database) with its optional `tune` table."""
    from tmafbench.study.validate import check_spec

    data = copy.deepcopy(data)

    def err(loc: tuple[Any, ...], message: str) -> SpecError:
        return spec_error(text, source, loc, message)

    tune_raw = data.pop("tune", None)
    tune = None
    if tune_raw is not None:
        if not isinstance(tune_raw, dict):
            raise err(("tune",), "must be a table")
        if "seeds" in data.get("axes", {}):
            raise err(("axes", "seeds"), "a study with [tune] takes its seeds from tune.seeds and tune.eval_seeds; remove axes.seeds")
        tune = validate_model(TuneSpec, tune_raw, ("tune",), err)
        data.setdefault("axes", {})["seeds"] = tune.eval_seed_list()
    spec = validate_model(StudySpec, data, (), err)
    check_spec(spec, err)
    if tune is None:
        return StudyDesign(spec, None, {}, spec.to_dict())
    space = parse_space(tune.space, err)
    tune = check_tune(spec, tune, space, err)
    return StudyDesign(spec, tune, space, _stored(data, tune_raw))


def _stored(data: dict[str, Any], tune_raw: dict[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(data)
    if tune_raw is not None:
        out.setdefault("axes", {}).pop("seeds", None)  # derived from tune.eval_seeds
        out["tune"] = copy.deepcopy(tune_raw)
    return out

