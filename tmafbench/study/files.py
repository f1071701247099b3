"""Study files by path or by name: the paper's and the family's studies ship inside the package.

`tmafbench/studies` is the repository's `studies/` folder (a symbolic link in a checkout; real
files in a wheel, `pyproject.toml`'s package data), so `tmafbench study run paper-table-3-2` works
from any folder after a plain install. A path that exists always wins over a name.

This module imports no torch and no registry: `tmafbench studies` lists the files cheaply.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tmafbench.errors import SpecError

PACKAGED = Path(__file__).resolve().parent.parent / "studies"


@dataclass(frozen=True)
class PackagedStudy:
    name: str  # the file's stem, which is also the study's name
    path: Path
    description: str


def packaged_studies() -> list[PackagedStudy]:
    """Every study file shipped with the package, by name."""
    out = []
    for path in sorted(PACKAGED.glob("*.toml"), key=lambda p: p.stem):
        try:
            description = str(tomllib.loads(path.read_text(encoding="utf-8")).get("description", ""))
        except (OSError, tomllib.TOMLDecodeError):  # a broken file is still listed; `study cells` says why
            description = "(cannot be read)"
        out.append(PackagedStudy(path.stem, path, description))
    return out


def locate(spec: str | Path) -> Path:
    """The study file `spec` names: an existing path, else a packaged study's name (with or
    without `.toml`). Anything else is a one-line SpecError that says where to look."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise SpecError(f"{path} is a folder, not a study file")
    text = str(spec)
    name = text.removesuffix(".toml")
    if name and "/" not in text and "\\" not in text:
        packaged = PACKAGED / f"{name}.toml"
        if packaged.is_file():
            return packaged
    return _missing(path, name)


def _missing(path: Path, name: str) -> Path:
    close = difflib.get_close_matches(Path(name).name, [s.name for s in packaged_studies()], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise SpecError(f"no study file at {path} and no packaged study of that name{hint}; "
                    "`tmafbench studies` lists the packaged ones")
