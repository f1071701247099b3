"""The registries: the one place each kind of name (from a study file or the command line) becomes an
object, through its `create`.

`ACTIVATIONS`, `TASKS` and `MODELS` are declared here, apart from the packages that fill them (each
registration is a decorator in a module of its package), so that `tmafbench activations`, `tasks`
and `models` can list names and parameters without importing the packages, and with them torch.

A registry knows a factory's parameters one way: from the source of the module that defines it
(`_SourceIndex`), both for the listing (`catalog`, which imports nothing) and for `create` (which
checks the parameters against them). The names, defaults, choices (a `bool`, a `Literal[...]`) and
summaries (the docstring's first paragraph) shown are therefore exactly those `create` enforces.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
Row = tuple[str, str, str]  # (name, summary, parameters) as `tmafbench activations` prints them


@dataclass(frozen=True)
class ParamInfo:
    """One keyword parameter of a registered factory, as its source writes it."""

    name: str
    default: Any  # inspect.Parameter.empty when required
    annotation: str
    #: Every value the parameter can take, when its type says so: (False, True) for a bool,
    #: the values of a `Literal[...]`; None otherwise.
    choices: tuple[Any, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def describe(self) -> str:
        return self.name if self.required else f"{self.name}={self.default!r}"


@dataclass(frozen=True)
class Described:
    """What the source says of one registered name: its summary and its parameters."""

    name: str
    summary: str
    params: tuple[ParamInfo, ...]

    def row(self) -> Row:
        return self.name, self.summary, ", ".join(p.describe() for p in self.params)


@dataclass(frozen=True)
class Entry(Described, Generic[T]):
    """A registered factory, described by its source."""

    factory: Callable[..., T]


def registry_of(module: object) -> Registry[Any] | None:
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
        self._factories: dict[str, Callable[..., T]] = {}
        self._entries: dict[str, Entry[T]] | None = None  # built from the source on first use

    def register(self, name: str, summary: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register a class or function under `name`. Its summary is `summary`, else its
        docstring's first paragraph; both are read from the source (a literal `summary`)."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            self._entries = None
            return factory

        return wrap

    def available(self) -> list[str]:
        return sorted(self._factories)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._described()[name]
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
        return self._factories[name](*args, **params)

    def describe(self) -> list[Row]:
        """(name, summary, parameters) rows of the registered factories."""
        return [self.entry(name).row() for name in self.available()]

    def catalog(self) -> list[Row]:
        """`describe()`'s rows, read from the package's source without importing it (no torch).

        Finds each `@<registry>.register("name")` in the package's modules; tests/test_registries.py
        checks that it agrees with `describe()`.
        """
        if self.package is None:
            raise ValueError(f"the {self.kind} registry names no package to read")
        index = _SourceIndex(self._package_files())
        return [described.row() for described in sorted(index.registered(self.reserved), key=lambda d: d.name)]

    def _package_files(self) -> list[Path]:
        """The modules of the package that fills this registry (none when it names no package)."""
        return sorted((Path(__file__).parent / self.package).glob("*.py")) if self.package else []

    def _described(self) -> dict[str, Entry[T]]:
        """Each registered factory with the parameters and summary its source gives."""
        if self._entries is None:
            files = sorted(set(self._package_files()) | {Path(inspect.getfile(f)) for f in self._factories.values()})
            found = {e.name: e for e in _SourceIndex(files).registered(self.reserved)}
            entries: dict[str, Entry[T]] = {}
            for name, factory in self._factories.items():
                if name not in found:
                    raise ValueError(f"{self.kind} {name!r}: no @...register({name!r}) decorator in "
                                     f"{inspect.getfile(factory)}")
                entries[name] = Entry(name, found[name].summary, found[name].params, factory)
            self._entries = entries
        return self._entries


# --- reading factories from their source ----------------------------------------------------------------


class _Module:
    """One parsed module: its classes and functions, its module-level constants, what it imports by name."""

    def __init__(self, path: Path):
        self.tree = ast.parse(path.read_text(encoding="utf-8"))
        self.defs = [n for n in self.tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
        self.constants: dict[str, ast.expr] = {}
        self.imports: dict[str, tuple[str, str]] = {}  # local name -> (module's last component, name there)
        for node in self.tree.body:
            if isinstance(node, ast.Assign):
                self.constants.update({t.id: node.value for t in node.targets if isinstance(t, ast.Name)})
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.constants[node.target.id] = node.value
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (node.module.rsplit(".", 1)[-1], alias.name)


class _SourceIndex:
    """The classes and functions of some modules (one package, in practice), looked up by name."""

    def __init__(self, paths: list[Path]):
        self.modules = {path.stem: _Module(path) for path in paths}
        self.defs = {node.name: (node, module) for module in self.modules.values() for node in module.defs}

    def registered(self, reserved: tuple[str, ...]) -> Iterator[Described]:
        """Every `@<anything>.register("name"[, summary])` definition, described (its factory is not loaded)."""
        for module in self.modules.values():
            for node in module.defs:
                for decorator in node.decorator_list:
                    name, summary = _registration(decorator)
                    if name is None:
                        continue
                    params = tuple(p for p in self._params(node, module) if p.name not in ("self",) + reserved)
                    yield Described(name, summary or self._summary(node), params)

    def _chain(self, node: ast.ClassDef | ast.FunctionDef, module: _Module) -> Iterator[tuple[ast.AST, _Module]]:
        """The definition and, for a class, its bases found here, nearest first (single inheritance's MRO)."""
        current: tuple[ast.AST, _Module] | None = (node, module)
        while current is not None:
            yield current
            bases = [b.id for b in getattr(current[0], "bases", []) if isinstance(b, ast.Name)]
            current = self.defs[bases[0]] if bases and bases[0] in self.defs else None

    def _params(self, node: ast.ClassDef | ast.FunctionDef, module: _Module) -> list[ParamInfo]:
        """A function's keyword parameters, or those of the first `__init__` along a class's bases."""
        if isinstance(node, ast.FunctionDef):
            return self._arguments(node.args, module)
        for cls, owner in self._chain(node, module):
            body = cls.body if isinstance(cls, ast.ClassDef) else []
            init = next((b for b in body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
            if init is not None:
                return self._arguments(init.args, owner)
        return []  # object's or torch's own __init__: no keyword parameters of ours

    def _summary(self, node: ast.ClassDef | ast.FunctionDef) -> str:
        """The docstring's first paragraph on one line, inherited from a base when the class has none
        (as `inspect.getdoc`)."""
        chain = self._chain(node, self.defs[node.name][1]) if isinstance(node, ast.ClassDef) else [(node, None)]
        for cls, _owner in chain:
            doc = ast.get_docstring(cls) if isinstance(cls, (ast.ClassDef, ast.FunctionDef)) else None
            if doc:
                return " ".join(doc.split("\n\n", 1)[0].split())
        return ""

    def _arguments(self, args: ast.arguments, module: _Module) -> list[ParamInfo]:
        positional = args.posonlyargs + args.args
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
        return [ParamInfo(a.arg, inspect.Parameter.empty if d is None else self._value(d, module),
                          ast.unparse(a.annotation) if a.annotation is not None else "",
                          self._choices(a.annotation, module)) for a, d in pairs]

    def _resolve(self, node: ast.expr, module: _Module) -> tuple[ast.expr, _Module]:
        """A name's value: a constant of its module, or of the module of the package it was imported from."""
        seen = 0
        while isinstance(node, ast.Name) and seen < 8:
            seen += 1
            if node.id in module.constants:
                node = module.constants[node.id]
            elif node.id in module.imports and module.imports[node.id][0] in self.modules:
                source, name = module.imports[node.id]
                module = self.modules[source]
                if name not in module.constants:
                    break
                node = module.constants[name]
            else:
                break
        return node, module

    def _value(self, node: ast.expr, module: _Module) -> Any:
        """A default's value: a literal, a constant holding one, or its source text."""
        resolved, _module = self._resolve(node, module)
        try:
            return ast.literal_eval(resolved)
        except ValueError:
            return _Source(ast.unparse(node))

    def _choices(self, annotation: ast.expr | None, module: _Module) -> tuple[Any, ...] | None:
        """(False, True) for `bool`, the values of `Literal[...]`; None for any other type."""
        if annotation is None:
            return None
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # a quoted annotation
            annotation = ast.parse(annotation.value, mode="eval").body
        if isinstance(annotation, ast.Name) and annotation.id == "bool":
            return (False, True)
        annotation, module = self._resolve(annotation, module)
        if isinstance(annotation, ast.Subscript) and _dotted(annotation.value) in ("Literal", "typing.Literal"):
            items = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
            return tuple(ast.literal_eval(item) for item in items)
        return None


class _Source(str):
    """A default that is not a literal: shown as written in the source."""

    def __repr__(self) -> str:
        return str(self)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _registration(decorator: ast.expr) -> tuple[str | None, str | None]:
    """("name", summary) for a decorator `<anything>.register("name"[, summary])`, else (None, None)."""
    if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "register" and decorator.args
            and isinstance(decorator.args[0], ast.Constant) and isinstance(decorator.args[0].value, str)):
        given = decorator.args[1:2] + [k.value for k in decorator.keywords if k.arg == "summary"]
        return decorator.args[0].value, (ast.literal_eval(given[0]) if given else None)
    return None, None


#: name -> Activation class; `num_features` is supplied by the model, never by the user.
ACTIVATIONS: Registry[Any] = Registry("activation", reserved=("num_features",), package="activations")
#: name -> Task class.
TASKS: Registry[Any] = Registry("task", package="tasks")
#: name -> model function; the activation factory and the task are supplied by the trainer.
MODELS: Registry[Any] = Registry("model", reserved=("activation", "task"), package="models")
