"""PAU, the Padé activation unit (Molina, Schramowski and Kersting, ICLR 2020).

The "safe" rational function of degrees (m, n), one set of coefficients per feature:

    F(x) = P(x) / Q(x),   P(x) = a_0 + a_1 x + ... + a_m x^m,   Q(x) = 1 + |b_1 x + ... + b_n x^n|

Q >= 1, so F has no poles. The defaults are the paper's m = 5, n = 4.

Initial coefficients: the paper starts every PAU as a fit of leaky ReLU (slope 0.01). We compute
that fit here (`leaky_relu_fit`), reproducibly, as the reference implementation's published
coefficients were made: minimise the squared error sum_i (F(x_i) - leaky_relu(x_i))^2 on
FIT_POINTS uniform points of [-3, 3], by Levenberg-Marquardt (scipy) started from the linearised
Padé least-squares solution (P(x_i) - y_i (b_1 x_i + ... + b_n x_i^n) = y_i, which ignores the
absolute value). For (5, 4) and slope 0.01 this reproduces the coefficients published with the
reference implementation (`REFERENCE_LEAKY_RELU_5_4`, from ml-research/rational_activations,
"Rational_version_B5/4", and ml-research/pau's "pade_optimized_leakyrelu"): the two fits differ by
less than 1e-4 anywhere on [-3, 3] (tests/activations/test_family.py). Other degrees and slopes
are fitted the same way, once per process.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from tmafbench.registries import ACTIVATIONS
from tmafbench.activations.base import Activation, Share, feature_view
from tmafbench.activations.compiled import Compiled
from tmafbench.activations.tmaf import check_share
from tmafbench.errors import InputError

#: Where the initial fit is made and how finely (uniform points, ends included).
FIT_RANGE = (-3.0, 3.0)
FIT_POINTS = 10001

#: The (5, 4) leaky-ReLU (slope 0.01) coefficients published with the reference implementation:
#: (a_0..a_5), (b_1..b_4). Kept to check our fit against, not used to initialise.
REFERENCE_LEAKY_RELU_5_4 = (
    (0.03355815733452378, 0.5050059186781659, 1.6534697310952233, 2.0100501552600014, 0.9319195586484518,
     0.15242646398275836),
    (4.812831860534153e-05, 3.9802479055059194, 1.5837587665720168e-05, 0.30183382839661377),
)


def safe_rational(x: np.ndarray, numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """P(x) / (1 + |b_1 x + ... + b_n x^n|) in NumPy: numerator a_0..a_m, denominator b_1..b_n."""
    p = np.polynomial.polynomial.polyval(x, numerator)
    q = 1.0 + np.abs(np.polynomial.polynomial.polyval(x, np.concatenate([[0.0], denominator])))
    return p / q


@functools.lru_cache(maxsize=None)
def leaky_relu_fit(numerator_degree: int = 5, denominator_degree: int = 4, slope: float = 0.01
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Least-squares safe-rational fit of leaky ReLU on FIT_RANGE (see the module docstring).

    Returns ((a_0..a_m), (b_1..b_n)) as Python floats; deterministic for a given NumPy/SciPy.
    """
    from scipy.optimize import least_squares  # imported here: only PAU needs SciPy at run time

    m, n = numerator_degree, denominator_degree
    x = np.linspace(*FIT_RANGE, FIT_POINTS)
    y = np.where(x > 0, x, slope * x)
    # Linearised problem: [1, x, .., x^m, -y x, .., -y x^n] @ (a, b) = y.
    design = np.concatenate([x[:, None] ** np.arange(m + 1), -y[:, None] * x[:, None] ** np.arange(1, n + 1)], axis=1)
    start = np.linalg.lstsq(design, y, rcond=None)[0]
    fit = least_squares(lambda c: safe_rational(x, c[: m + 1], c[m + 1:]) - y, start, method="lm",
                        xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return tuple(float(v) for v in fit.x[: m + 1]), tuple(float(v) for v in fit.x[m + 1:])


def horner(coefficients: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_j c_j x^j, with c [1, C, 1, .., 1, J] broadcast over x [N, C, *S] (J >= 1)."""
    out = coefficients[..., -1].expand_as(x)
    for j in range(coefficients.shape[-1] - 2, -1, -1):
        out = torch.addcmul(coefficients[..., j], out, x)
    return out


def horner_rows(coefficients: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`horner` with the coefficients degree-major, [J, Cp]: the same operations, the same values."""
    out = feature_view(coefficients[-1], x).expand_as(x)
    for j in range(coefficients.shape[0] - 2, -1, -1):
        out = torch.addcmul(feature_view(coefficients[j], x), out, x)
    return out


def pau_function(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """P(x) / (1 + |b_1 x + ... + b_n x^n|) with degree-major coefficients [m + 1, Cp] and [n, Cp].

    Degree-major, each coefficient is one feature-contiguous row, so that compiled, inductor
    vectorises across the features, the coefficients' gradient sums included ([Cp, J] made it read
    them with stride J and write scalar code, as it did for APL)."""
    p = horner_rows(numerator.to(x.dtype), x)
    q = horner_rows(denominator.to(x.dtype), x) * x  # b_1 x + ... + b_n x^n
    return p / (q.abs() + 1.0)


_PAU = Compiled(pau_function, "pau")


@ACTIVATIONS.register("pau")
class PAU(Activation):
    """Padé activation unit (Molina et al. ICLR 2020): P(x) / (1 + |b_1 x + ... + b_n x^n|), degrees (5, 4).

    Per feature (or one set per layer with share="layer"); starts as the least-squares fit of leaky
    ReLU with slope `slope` on [-3, 3] (see the module docstring for the fit).
    """

    trainable = True
    #: TMAFBENCH_COMPILE=auto compiles it (activations/compiled.py): measured to pay, README.
    compile_by_default = True

    def __init__(self, num_features: int, numerator_degree: int = 5, denominator_degree: int = 4,
                 slope: float = 0.01, share: Share = "feature"):
        super().__init__(num_features)
        self.share = check_share(share)
        m, n = int(numerator_degree), int(denominator_degree)
        if m < 1 or n < 1:
            raise InputError(f"pau degrees must be >= 1, got numerator_degree={m}, denominator_degree={n}")
        a, b = leaky_relu_fit(m, n, float(slope))
        rows = self.num_features if share == "feature" else 1
        self.numerator = nn.Parameter(torch.tensor(a).expand(rows, m + 1).clone())  # a_0..a_m
        self.denominator = nn.Parameter(torch.tensor(b).expand(rows, n).clone())  # b_1..b_n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_features(x, per_feature=self.share == "feature")
        # Degree-major copies, made outside the compiled region (inside, inductor fuses the copy away).
        return _PAU(self.compile_by_default, x, self.numerator.t().contiguous(), self.denominator.t().contiguous())

    def extra_repr(self) -> str:
        return f"degrees=({self.numerator.shape[1] - 1}, {self.denominator.shape[1]}), share={self.share!r}"
