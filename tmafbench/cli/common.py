"""Shared CLI plumbing: one-line errors, `key=value` parsing, storage resolution."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from typing import Any, Callable, Iterator

import typer

from tmafbench.errors import TmafbenchError

DEFAULT_STORAGE = "sqlite:///tmafbench.db"
STORAGE_ENV = "TMAFBENCH_STORAGE"

# Exit status of `study run` and `study worker`, by how the run ended (scheduler.Ending). Kept in
# step with README.md ("Exit status") and the commands' --help (EXIT_STATUS_HELP).
EXIT_REFUSED = 2  # every one-line error before anything ran (`fail`)
EXIT_CODES = {"done": 0, "cells failed": 3, "stopped": 4, "interrupted": 130}
EXIT_STATUS_HELP = (
    "Exit status: 0 every cell done (completed or diverged); 2 refused before anything ran (bad input, "
    "missing data, devices this machine lacks, a database that cannot be reached or written); 3 every cell is "
    "final but some failed for good (max_retries failures or max_crashes lost workers); 4 stopped early with "
    "cells left (database away longer than --db-patience, disk full, a worker died): run the same command "
    "again to resume; 130 interrupted (Ctrl-C, SIGTERM).")


# Errors that are the user's input, not our bug: print one line, no traceback.
USER_ERRORS = (TmafbenchError, ValueError, FileNotFoundError, KeyError, PermissionError)


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
        except KeyError as exc:  # str(KeyError) adds quotes; keep the message readable
            fail(exc.args[0] if exc.args else "missing key")
        except USER_ERRORS as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)
        except Exception as exc:  # a database that is unreachable or refuses: one line, no traceback
            from tmafbench.store.database import database_error_message

            url = resolve_storage(kwargs["storage"]) if "storage" in kwargs else None
            message = database_error_message(exc, url)
            if message is None:
                raise
            fail(message)

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
            raise ValueError(f"{option} expects key=value, got {item!r}")
        params[key.strip()] = parse_value(value)
    return params


def resolve_storage(storage: str | None) -> str:
    """--storage beats TMAFBENCH_STORAGE beats the default SQLite file in the current folder."""
    return storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


@contextlib.contextmanager
def phases_progress(console: Any) -> Iterator[Callable[[Any, float | None], None]]:
    """A rich progress display with one bar per phase of a study (cells; or tuning slots, then
    evaluation cells); yields the `progress(phases, eta_s)` callback the study runner calls. The
    display starts with the first update, so an error before any work prints its line alone."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console)
    tasks: dict[str, Any] = {}

    def update(phases: Any, eta_s: float | None) -> None:
        if not tasks:
            bars.start()
        for phase, counts in phases:
            if phase.label not in tasks:
                tasks[phase.label] = bars.add_task(phase.label, total=None, detail="")
            crashed = f"  crashed {counts.crashed}" if counts.crashed else ""
            detail = (f"done {counts.completed}  running {counts.running}  failed {counts.failed}{crashed}  "
                      f"pending {counts.pending}")
            if not counts.done and eta_s is not None:
                detail += f"  ETA {eta_s / 60:.1f} min" if eta_s >= 60 else f"  ETA {eta_s:.0f} s"
            bars.update(tasks[phase.label], total=counts.total, completed=counts.finished, detail=detail)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()


def exit_for_outcome(console: Any, outcome: Any, resume_hint: str = "run the same command again to resume") -> None:
    """After local workers: say why the run ended unless every cell is done, and exit with its code."""
    crashed = [code for code in outcome.exit_codes if code not in (0, None)]
    if crashed and not outcome.interrupted:
        console.print(f"{len(crashed)} worker process(es) exited with an error (codes {crashed}); see the messages above")
    ending = str(outcome.ending)
    if ending == "interrupted":
        console.print(f"interrupted: {resume_hint}")
    elif ending == "stopped":
        console.print(f"stopped early: {outcome.stopped or 'cells are left'}; {resume_hint}", markup=False)
    elif ending == "cells failed":
        console.print(f"some cells failed for good; `tmafbench study status {outcome.name}` counts them and "
                      "`tmafbench results export` gives their errors", markup=False)
    if EXIT_CODES[ending]:
        raise typer.Exit(EXIT_CODES[ending])


def is_tty() -> bool:
    return sys.stderr.isatty()
