"""Smooth-function regression tasks of the paper: sine-sum, oscillatory (eq. 3.1), expression.

Training inputs are drawn uniformly from the domain with the trial seed; the test set is a fixed
fresh sample (the same for every seed), so seeds vary only the training.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from tmafbench.registries import TASKS
from tmafbench.tasks.base import STREAM_TRAIN, TEST_SEED, Task, TaskData, check_size, rng
from tmafbench.tasks.formula import compile_formula
from tmafbench.errors import InputError

GRID_POINTS = 4001  # fine enough for sin(100 pi x) on [-1, 1]: 40 points per period


class FunctionTask(Task):
    """Regression of f: domain (a box) -> R from uniform samples (float32 tensors)."""

    kind = "regression"
    output_size = 1

    def __init__(self, domain: list[tuple[float, float]], target: Callable[[torch.Tensor], torch.Tensor],
                 train_size: int, test_size: int):
        self.domain = [_interval(lo_hi) for lo_hi in domain]
        self.input_shape = (len(self.domain),)
        self.target = target  # x [N, n] float64 -> f(x) [N]
        self.train_size = check_size("train_size", train_size)
        self.test_size = check_size("test_size", test_size)

    def sample(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """size uniform points x [size, n] in the box and f(x) [size], both float32."""
        lo = torch.tensor([a for a, _ in self.domain], dtype=torch.float64)
        hi = torch.tensor([b for _, b in self.domain], dtype=torch.float64)
        x = lo + (hi - lo) * torch.rand(size, len(self.domain), generator=generator, dtype=torch.float64)
        x = x.float()  # round the inputs first, so the target is exact for the x the model sees
        return x, self.target(x.double()).float()

    def load(self, seed: int) -> TaskData:
        x_train, y_train = self.sample(self.train_size, rng(seed, STREAM_TRAIN))
        x_test, y_test = self.sample(self.test_size, rng(TEST_SEED, 0))
        return TaskData(x_train, y_train, x_test, y_test)

    def prediction_grid(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if len(self.domain) != 1:
            return None
        lo, hi = self.domain[0]
        x = torch.linspace(lo, hi, GRID_POINTS, dtype=torch.float64)[:, None].float()  # [G, 1]
        return x, self.target(x.double()).float()


def _interval(value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"a domain interval must be [lo, hi], got {value!r}") from None
    if not lo < hi:
        raise InputError(f"a domain interval needs lo < hi, got [{lo}, {hi}]")
    return lo, hi


@TASKS.register("sine-sum")
class SineSum(FunctionTask):
    """f(x) = sin(pi (x1 + ... + xn)) on [-2, 2]^n (paper section 3.1)."""

    name = "sine-sum"

    def __init__(self, n: int = 1, lo: float = -2.0, hi: float = 2.0, train_size: int = 20_000,
                 test_size: int = 20_000):
        if int(n) != n or n < 1:
            raise InputError(f"sine-sum: n must be a positive integer, got {n!r}")
        self.n = int(n)
        super().__init__([(lo, hi)] * self.n, lambda x: torch.sin(math.pi * x.sum(dim=1)), train_size, test_size)


def _oscillatory(x: torch.Tensor) -> torch.Tensor:
    s = x[:, 0]
    return torch.sin(100 * math.pi * s) + torch.cos(50 * math.pi * s) + torch.sin(math.pi * s)


@TASKS.register("oscillatory")
class Oscillatory(FunctionTask):
    """f(x) = sin(100 pi x) + cos(50 pi x) + sin(pi x) on [-1, 1] (paper eq. 3.1)."""

    name = "oscillatory"

    def __init__(self, lo: float = -1.0, hi: float = 1.0, train_size: int = 20_000, test_size: int = 20_000):
        super().__init__([(lo, hi)], _oscillatory, train_size, test_size)


@TASKS.register("expression")
class Expression(FunctionTask):
    """A user formula over x1..xn, e.g. 'exp(sin(pi*x1) + x2**2)', on a box domain."""

    name = "expression"

    def __init__(self, formula: str, domain: Any = (-1.0, 1.0), n: int | None = None,
                 train_size: int = 20_000, test_size: int = 20_000):
        parsed = compile_formula(formula)
        intervals = _domains(domain)
        n = int(n) if n is not None else (len(intervals) if len(intervals) > 1 else parsed.num_vars)
        if n < parsed.num_vars:
            raise InputError(f"expression: formula uses x{parsed.num_vars} but n={n}")
        if len(intervals) == 1:
            intervals = intervals * n
        if len(intervals) != n:
            raise InputError(f"expression: {len(intervals)} domain intervals given for n={n} variables")
        self.formula = parsed.text
        super().__init__(intervals, parsed, train_size, test_size)


def _domains(domain: Any) -> list[Any]:
    """[lo, hi] (one for all variables) or [[lo1, hi1], [lo2, hi2], ...]."""
    if isinstance(domain, (list, tuple)) and domain and all(isinstance(d, (list, tuple)) for d in domain):
        return list(domain)
    return [domain]
