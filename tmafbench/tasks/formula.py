"""A safe formula language for the `expression` task: Python's `ast`, whitelisted, never `eval`.

`compile_formula("exp(sin(pi*x1) + x2**2)")` returns a `Formula` whose `__call__` maps
x [N, n] to f(x) [N] with torch operations. Only numbers, the variables x1..xn, the constants
below, + - * / ** % and the functions below are accepted; anything else is a one-line ValueError.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from typing import Callable

import torch

from tmafbench.errors import InputError

FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan,
    "asin": torch.asin, "acos": torch.acos, "atan": torch.atan,
    "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh,
    "exp": torch.exp, "log": torch.log, "log2": torch.log2, "log10": torch.log10,
    "sqrt": torch.sqrt, "abs": torch.abs, "sign": torch.sign,
    "floor": torch.floor, "ceil": torch.ceil,
}
CONSTANTS = {"pi": math.pi, "e": math.e}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.Pow: operator.pow, ast.Mod: operator.mod}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
VARIABLE = re.compile(r"^x([1-9][0-9]*)$")

Node = Callable[[torch.Tensor], "torch.Tensor | float"]


@dataclass(frozen=True)
class Formula:
    """A parsed formula: `num_vars` is the largest variable index used (x3 -> 3)."""

    text: str
    num_vars: int
    _fn: Node

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, n] with n >= num_vars -> f(x) [N] (constants broadcast)."""
        try:
            out = self._fn(x)
        except (OverflowError, ZeroDivisionError) as exc:  # only constant sub-expressions raise
            raise InputError(f"formula {self.text!r}: {exc}") from None
        if not torch.is_tensor(out):
            out = torch.full((x.shape[0],), float(out), dtype=x.dtype)
        return out.expand(x.shape[0]) if out.dim() == 0 else out


def compile_formula(text: str) -> Formula:
    """Parse `text` into a Formula; ValueError with a one-line reason on anything not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("formula is empty; write e.g. formula='sin(pi*x1)'")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise InputError(f"formula {text!r}: syntax error at column {exc.offset}: {exc.msg}") from None
    used: set[int] = set()
    fn = _compile(tree.body, text, used)
    if not used:
        raise InputError(f"formula {text!r} uses no variable; use x1, x2, ...")
    return Formula(text, max(used), fn)


def _compile(node: ast.AST, text: str, used: set[int]) -> Node:
    """Recursively turn one whitelisted node into a closure over x [N, n]."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = float(node.value)
        return lambda x: value
    if isinstance(node, ast.Name):
        return _name(node.id, text, used)
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        op, left, right = BINARY[type(node.op)], _compile(node.left, text, used), _compile(node.right, text, used)
        return lambda x: op(left(x), right(x))
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        op, operand = UNARY[type(node.op)], _compile(node.operand, text, used)
        return lambda x: op(operand(x))
    if isinstance(node, ast.Call):
        return _call(node, text, used)
    what = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
    raise InputError(
        f"formula {text!r}: {type(node).__name__} {what!r} is not allowed; "
        "use numbers, x1..xn, pi, e, + - * / ** % and functions"
    )


def _name(name: str, text: str, used: set[int]) -> Node:
    match = VARIABLE.match(name)
    if match:
        index = int(match.group(1))
        used.add(index)
        return lambda x: x[:, index - 1]
    if name in CONSTANTS:
        value = CONSTANTS[name]
        return lambda x: value
    raise InputError(f"formula {text!r}: unknown name {name!r}; use x1..xn or a constant ({', '.join(CONSTANTS)})")


def _call(node: ast.Call, text: str, used: set[int]) -> Node:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        raise InputError(f"formula {text!r}: unknown function {name!r}; allowed: {', '.join(sorted(FUNCTIONS))}")
    if len(node.args) != 1 or node.keywords:
        raise InputError(f"formula {text!r}: {node.func.id}() takes exactly one argument")
    fn, arg = FUNCTIONS[node.func.id], _compile(node.args[0], text, used)

    def call(x: torch.Tensor) -> torch.Tensor:
        value = arg(x)
        return fn(value if torch.is_tensor(value) else torch.tensor(value, dtype=x.dtype))

    return call
