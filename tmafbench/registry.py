"""A tiny name -> factory registry shared by activations, tasks and models.

It is the one place where a name from a study file or the CLI becomes an object
(DESIGN.md section 1). Parameters are validated against the factory's signature,
so an unknown name or an unknown parameter fails early with the valid choices.

A registry also reads what its package registers straight from the source (`catalog`), so that
listing names and parameters does not import the package, and with it torch.
"""

from __future__ import annotations

import ast
import collections.abc
import inspect
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Literal, TypeVar

from tmafbench.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class ParamInfo:
    """One keyword parameter of a registered factory."""

    name: str
    default: Any  # inspect.Parameter.empty when required
    annotation: str
    #: Every value the parameter can take, when its type says so: (False, True) for a bool,
    #: the values of a `Literal[...]`; None otherwise.
    choices: tuple[Any, ...] | None = None
    #: The evaluated annotation (None when there is none, or it cannot be evaluated): values are checked against it.
    hint: Any = None

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

    def __init__(self, kind: str, reserved: tuple[str, ...] = (), package: str | None = None):
        self.kind = kind
        # Arguments supplied by the caller, not by the user (e.g. num_features).
        self.reserved = reserved
        # The tmafbench subpackage whose modules register into this registry (for `catalog`).
        self.package = package
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
        hints = _type_hints(target)
        params = []
        for p in inspect.signature(target).parameters.values():
            if p.name in ("self",) + self.reserved or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
            params.append(ParamInfo(p.name, p.default, str(annotation) if annotation is not inspect.Parameter.empty else "",
                                    _choices(hints.get(p.name)), hints.get(p.name)))
        return tuple(params)

    def available(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise InputError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.available())}"
            ) from None

    def check_params(self, name: str, params: dict[str, Any]) -> None:
        """Raise ValueError if `params` has a key the factory does not take, or misses a required one."""
        entry = self.entry(name)
        known = {p.name for p in entry.params}
        unknown = sorted(set(params) - known)
        if unknown:
            valid = ", ".join(p.describe() for p in entry.params) or "(none)"
            raise InputError(
                f"{self.kind} {name!r} takes no parameter {', '.join(map(repr, unknown))}; valid: {valid}"
            )
        missing = [p.name for p in entry.params if p.required and p.name not in params]
        if missing:
            raise InputError(f"{self.kind} {name!r} needs parameter(s): {', '.join(missing)}")
        for info in entry.params:
            if info.name in params and info.hint is not None and not fits(params[info.name], info.hint):
                value = params[info.name]
                raise InputError(f"{self.kind} {name!r}: {info.name} must be {type_text(info.hint)}, got "
                                 f"{type(value).__name__} {value!r}")

    def create(self, name: str, *args: Any, **params: Any) -> T:
        """Build the object registered as `name`; positional args are the caller's (reserved) ones.

        A ValueError of the factory is about the values it was given (say, lo >= hi): an InputError.
        """
        self.check_params(name, params)
        try:
            return self._entries[name].factory(*args, **params)
        except ValueError as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{self.kind} {name!r}: {exc}") from exc

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, summary, parameters) rows for `tmafbench activations|tasks|models`."""
        return [
            (e.name, e.summary, ", ".join(p.describe() for p in e.params))
            for e in (self._entries[n] for n in self.available())
        ]

    def catalog(self) -> list[tuple[str, str, str]]:
        """`describe()`'s rows, read from the package's source without importing it (no torch).

        Finds each `@<registry>.register("name")` in the package's modules and takes the parameters
        of the decorated function, or of the `__init__` the decorated class defines or inherits
        (bases looked up by name in the same package). tests/test_registries.py checks that it
        agrees with `describe()`.
        """
        if self.package is None:
            raise ValueError(f"the {self.kind} registry names no package to read")
        defs: dict[str, tuple[ast.AST, dict[str, ast.expr]]] = {}
        registered: list[tuple[str, str | None, ast.AST]] = []
        for path in sorted((Path(__file__).parent / self.package).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            constants = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                         for t in node.targets if isinstance(t, ast.Name)}
            for node in tree.body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    defs[node.name] = (node, constants)
                    registered += [(name, summary, node) for name, summary in map(_registration, node.decorator_list)
                                   if name is not None]
        rows = {}
        for name, summary, node in registered:
            params = [p for p in _source_params(node, defs) if p.name not in ("self",) + self.reserved]
            rows[name] = (name, summary or _source_doc(node, defs), ", ".join(p.describe() for p in params))
        return [rows[n] for n in sorted(rows)]


def _registration(decorator: ast.expr) -> tuple[str | None, str | None]:
    """("name", summary) for a decorator `<anything>.register("name"[, summary])`, else (None, None)."""
    if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "register" and decorator.args
            and isinstance(decorator.args[0], ast.Constant) and isinstance(decorator.args[0].value, str)):
        given = decorator.args[1:2] + [k.value for k in decorator.keywords if k.arg == "summary"]
        return decorator.args[0].value, (ast.literal_eval(given[0]) if given else None)
    return None, None


def _chain(node: ast.AST, defs: dict[str, tuple[ast.AST, dict]]):
    """The class and its bases found in the package, nearest first (as the MRO of single inheritance)."""
    while node is not None:
        yield node, defs.get(getattr(node, "name", ""), (None, {}))[1]
        bases = [b.id for b in getattr(node, "bases", []) if isinstance(b, ast.Name)]
        node = defs[bases[0]][0] if bases and bases[0] in defs else None


def _source_params(node: ast.AST, defs: dict[str, tuple[ast.AST, dict]]) -> list[ParamInfo]:
    """A function's keyword parameters, or those of the first `__init__` along a class's bases."""
    if isinstance(node, ast.FunctionDef):
        return _arguments(node.args, defs[node.name][1])
    for cls, constants in _chain(node, defs):
        init = next((b for b in cls.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
        if init is not None:
            return _arguments(init.args, constants)
    return []  # object's or torch's own __init__: no keyword parameters of ours


def _arguments(args: ast.arguments, constants: dict[str, ast.expr]) -> list[ParamInfo]:
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
    return [ParamInfo(a.arg, inspect.Parameter.empty if d is None else _value(d, constants),
                      ast.unparse(a.annotation) if a.annotation is not None else "") for a, d in pairs]


class _Source(str):
    """A default that is not a literal: shown as written in the source."""

    def __repr__(self) -> str:
        return str(self)


def _value(node: ast.expr, constants: dict[str, ast.expr]) -> Any:
    """A default's value: a literal, a module constant holding one, or its source text."""
    if isinstance(node, ast.Name) and node.id in constants:
        node = constants[node.id]
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _Source(ast.unparse(node))


def _source_doc(node: ast.AST, defs: dict[str, tuple[ast.AST, dict]]) -> str:
    """First line of the docstring, inherited from a base when the class has none (as inspect.getdoc)."""
    for cls, _ in _chain(node, defs) if isinstance(node, ast.ClassDef) else [(node, {})]:
        doc = ast.get_docstring(cls)
        if doc:
            return doc.split("\n")[0]
    return ""

def _type_hints(target: Callable[..., Any]) -> dict[str, Any]:
    """Evaluated annotations of `target` ({} when they cannot be evaluated)."""
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation naming something unimportable only loses its choices
        return {}


def fits(value: Any, hint: Any) -> bool:
    """Whether a parameter value (from TOML, JSON or the command line) has the annotated type.

    An int is a float; a bool is not a number; a float must be finite; a list or tuple is a
    `list[...]`, `tuple[...]` or `Sequence[...]` whose items fit. Types this cannot judge (a class,
    a callable) pass: the factory checks them.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arm) for arm in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return not args or all(fits(v, args[0]) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


_TYPE_WORDS = {float: ("a finite number", "finite numbers"), int: ("an integer", "integers"),
               str: ("a string", "strings"), bool: ("true or false", "booleans")}


def type_text(hint: Any, plural: bool = False) -> str:
    """A readable type: 'a finite number', 'an integer or None', "one of 'feature', 'layer'",
    'a list of finite numbers'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(arm, plural) for arm in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint in _TYPE_WORDS:
        return _TYPE_WORDS[hint][plural]
    if origin in (list, tuple, collections.abc.Sequence):
        return ("lists" if plural else "a list") + (f" of {type_text(args[0], plural=True)}" if args else "")
    return getattr(hint, "__name__", str(hint))


def _choices(hint: Any) -> tuple[Any, ...] | None:
    """(False, True) for bool, the values of Literal[...]; None for any other type."""
    if hint is bool:
        return (False, True)
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    return None
