"""Shared CLI plumbing: one-line errors, `key=value` parsing, storage resolution."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import typer

from tmafbench.errors import InputError, TmafbenchError

DEFAULT_STORAGE = "sqlite:///tmafbench.db"
STORAGE_ENV = "TMAFBENCH_STORAGE"

EXIT_REFUSED = 2  # every one-line error before anything ran (`fail`)
EXIT_BUG = 1  # an exception tmafbench did not expect: a bug, reported in one line (`--debug`: the traceback)
# click's base of usage errors (typer re-exports click, or ships its own copy): it is click's to report.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
DEBUG_ENV = "TMAFBENCH_DEBUG"  # set by `tmafbench --debug`; worker processes inherit it

# Errors that are the user's input, not our bug: print one line, no traceback. Only the project's
# own types, and a path the user named that is missing or closed (the OS's message names it).
USER_ERRORS = (TmafbenchError, FileNotFoundError, PermissionError)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report_bug(exc: BaseException) -> None:
    """One line for an unexpected exception (a KeyError, a ValueError...): it is a bug, and
    `--debug` shows where."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    fail(f"unexpected {type(exc).__name__}{': ' + detail if detail else ''} (a bug in tmafbench; rerun with "
         "`tmafbench --debug ...` for the traceback, and please report it)", EXIT_BUG)


def fail(message: str, code: int = EXIT_REFUSED) -> None:
    """Print `error: message` on stderr and exit with `code`."""
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    typer.echo(f"error: {first_line}", err=True)
    raise typer.Exit(code)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user-input exceptions into one clean line (also under CliRunner)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, _ClickException):
            raise  # typer.Exit(code) and the like: an outcome already reported, not an error
        except USER_ERRORS as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # a database that is unreachable or refuses: one line, no traceback
            from tmafbench.store.database import database_error_message

            url = resolve_storage(kwargs["storage"]) if "storage" in kwargs else None
            message = database_error_message(exc, url)
            if message is not None:
                fail(message)
            if debugging():
                raise
            report_bug(exc)

    return wrapper


class App(typer.Typer):
    """A Typer app whose commands report user errors as one line."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("pretty_exceptions_enable", False)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(friendly_errors(fn))
            return fn

        return decorator


def parse_value(text: str) -> Any:
    """Parse a CLI value: JSON literals (numbers, true/false, null, lists) else the plain string."""
    lowered = text.strip()
    if lowered in ("true", "false", "null"):
        return json.loads(lowered)
    if lowered in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[lowered]
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        return text


def parse_params(items: list[str] | None, option: str = "--param") -> dict[str, Any]:
    """['intervals=100', 'lo=-5'] -> {'intervals': 100, 'lo': -5}."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{option} expects key=value, got {item!r}")
        params[key.strip()] = parse_value(value)
    return params


def model_params(depth: int | None, width: int | None, items: list[str] | None) -> dict[str, Any]:
    """--model-param k=v, with --depth/--width as shorthands."""
    params = parse_params(items, "--model-param")
    params.update({k: v for k, v in (("depth", depth), ("width", width)) if v is not None})
    return params


def resolve_storage(storage: str | None) -> str:
    """--storage beats TMAFBENCH_STORAGE beats the default SQLite file in the current folder. An empty
    --storage is refused (a shell variable that was not set), not taken for the default."""
    if storage is not None and not storage.strip():
        raise InputError("--storage is empty; give a database URL (sqlite:///FILE or postgresql://...), or leave "
                         f"the option out for ${STORAGE_ENV} or {DEFAULT_STORAGE}")
    return storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def out_folder(path: Path | None) -> Path | None:
    """--out that names a folder (a report, a shipment): refused up front when it, or a folder above
    it, exists as something else."""
    if path is not None:
        if path.exists() and not path.is_dir():
            raise InputError(f"--out {path} is a file; give a folder (several files are written into it)")
        _parents_are_folders(path)
    return path


def out_file(path: Path | None) -> Path | None:
    """--out that names a file (an export): refused up front when it exists as a folder."""
    if path is not None:
        if path.is_dir():
            raise InputError(f"--out {path} is a folder; give a file name, e.g. {path / 'runs.csv'}")
        _parents_are_folders(path)
    return path


def _parents_are_folders(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--out {path}: {parent} is a file, not a folder")
            return


def is_tty() -> bool:
    return sys.stderr.isatty()
