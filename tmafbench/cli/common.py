"""Shared CLI plumbing: one-line errors, `key=value` parsing, storage resolution."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable

import typer

from tmafbench.errors import TmafbenchError

DEFAULT_STORAGE = "sqlite:///tmafbench.db"
STORAGE_ENV = "TMAFBENCH_STORAGE"

EXIT_REFUSED = 2  # every one-line error before anything ran (`fail`)


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
            raise typer.Exit(130) from None
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


def model_params(depth: int | None, width: int | None, items: list[str] | None) -> dict[str, Any]:
    """--model-param k=v, with --depth/--width as shorthands."""
    params = parse_params(items, "--model-param")
    params.update({k: v for k, v in (("depth", depth), ("width", width)) if v is not None})
    return params


def resolve_storage(storage: str | None) -> str:
    """--storage beats TMAFBENCH_STORAGE beats the default SQLite file in the current folder."""
    return storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def is_tty() -> bool:
    return sys.stderr.isatty()
