"""A tiny name -> factory registry shared by activations, tasks and models.

It is the one place where a name from a study file or the CLI becomes an object
(DESIGN.md section 1). Parameters are validated against the factory's signature,
so an unknown name or an unknown parameter fails early with the valid choices.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ParamInfo:
    """One keyword parameter of a registered factory."""

    name: str
    default: Any  # inspect.Parameter.empty when required
    annotation: str

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def describe(self) -> str:
        return self.name if self.required else f"{self.name}={self.default!r}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    summary: str
    params: tuple[ParamInfo, ...]


def registry_of(module: Any) -> "Registry | None":
    """The Registry instance a package (activations, tasks, models) exposes, if any."""
    for value in vars(module).values():
        if isinstance(value, Registry):
            return value
    return None


class Registry(Generic[T]):
    """Maps names to factories; `create(name, **params)` validates and builds."""

    def __init__(self, kind: str, reserved: tuple[str, ...] = ()):
        self.kind = kind
        # Arguments supplied by the caller, not by the user (e.g. num_features).
        self.reserved = reserved
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, summary: str | None = None):
        """Decorator: register a class or function under `name`."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = summary or (inspect.getdoc(factory) or "").split("\n")[0]
            self._entries[name] = Entry(name, factory, doc, self._params_of(factory))
            return factory

        return wrap

    def _params_of(self, factory: Callable[..., T]) -> tuple[ParamInfo, ...]:
        target = factory.__init__ if inspect.isclass(factory) else factory
        params = []
        for p in inspect.signature(target).parameters.values():
            if p.name in ("self",) + self.reserved or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
            params.append(ParamInfo(p.name, p.default, str(annotation) if annotation is not inspect.Parameter.empty else ""))
        return tuple(params)

    def available(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.available())}"
            ) from None

    def check_params(self, name: str, params: dict[str, Any]) -> None:
        """Raise ValueError if `params` has a key the factory does not take, or misses a required one."""
        entry = self.entry(name)
        known = {p.name for p in entry.params}
        unknown = sorted(set(params) - known)
        if unknown:
            valid = ", ".join(p.describe() for p in entry.params) or "(none)"
            raise ValueError(
                f"{self.kind} {name!r} takes no parameter {', '.join(map(repr, unknown))}; valid: {valid}"
            )
        missing = [p.name for p in entry.params if p.required and p.name not in params]
        if missing:
            raise ValueError(f"{self.kind} {name!r} needs parameter(s): {', '.join(missing)}")

    def create(self, name: str, *args: Any, **params: Any) -> T:
        """Build the object registered as `name`; positional args are the caller's (reserved) ones."""
        self.check_params(name, params)
        return self._entries[name].factory(*args, **params)

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, summary, parameters) rows for `tmafbench activations|tasks|models`."""
        return [
            (e.name, e.summary, ", ".join(p.describe() for p in e.params))
            for e in (self._entries[n] for n in self.available())
        ]
