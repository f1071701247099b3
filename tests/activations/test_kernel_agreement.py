"""One semantics on both kernels (issue H): the same bits at every breakpoint, shifted breakpoint and
their float neighbours, no neighbour taken from outside the band, and no dependence on threads."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kernel_choice import native_expected
import torch

from tmafbench import activations
from tmafbench.activations.kernels import banded_tmaf, grid_tensors, native

from conftest import randomize

# Native wherever a compiler exists: a kernel that does not build there fails (see
# test_the_kernel_builds_wherever_a_compiler_exists), its tests are not skipped.
NATIVE = native_expected()
if NATIVE:
    native.load()  # at import, as the tests below expect
needs_native = pytest.mark.skipif(not NATIVE, reason="no C++ compiler here")

CASES = [
    ("tmaf", {}),
    ("tmaf", {"intervals": 100}),
    ("tmaf", {"share": "layer", "lo": -2, "hi": 6, "intervals": 8}),
    ("tmaf-tridiag", {}),
    ("tmaf-tridiag", {"breakpoints": [-2, 0, 0.3, 4]}),
    ("tmaf-tridiag", {"share": "layer", "intervals": 100}),
    ("tmaf-banded", {"bandwidth": 2}),
    ("tmaf-banded", {"bandwidth": 3, "intervals": 4}),
    ("tmaf", {"train_breakpoints": True}),
    ("tmaf-tridiag", {"train_breakpoints": True, "share": "layer"}),
    ("tmaf-banded", {"train_breakpoints": True, "bandwidth": 2}),
    # Two breakpoints 0.001 apart share a bucket of the native kernel's index (it then searches):
    # a shared row and, with trainable breakpoints, a row per feature.
    ("tmaf-tridiag", {"breakpoints": [-3, 0, 1e-3, 0.3, 4]}),
    ("tmaf", {"train_breakpoints": True, "breakpoints": [-2, 0, 1e-3, 0.3, 4]}),
]
CASE_IDS = [f"{n}-" + ("-".join(f"{k}={v}" for k, v in p.items()) or "default") for n, p in CASES]


def make(name: str, params: dict, channels: int, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    act = activations.create(name, channels, **params).to(dtype)
    randomize(act, seed)
    if act.train_breakpoints:  # move the trainable grid off the uniform one
        with torch.no_grad():
            act.breakpoint_gaps.add_(torch.rand(act.breakpoint_gaps.shape, dtype=dtype) * 0.4 - 0.2)
    return act


def special_values(act, dtype: torch.dtype) -> torch.Tensor:
    """Every breakpoint and shifted breakpoint (float64 positions), the dtype's numbers on both sides
    of each (rounded down, rounded up) and their neighbours, plus zeros, tiny and far values."""
    positions = grid_tensors(act.breakpoints(), act.spec, torch.float64).positions.reshape(-1).unique()
    below = positions.to(dtype)
    below = torch.where(below.double() > positions, torch.nextafter(below, torch.full_like(below, -math.inf)), below)
    above = torch.nextafter(below, torch.full_like(below, math.inf))
    ends = [torch.nextafter(below, torch.full_like(below, -math.inf)), below, above,
            torch.nextafter(above, torch.full_like(above, math.inf))]
    extra = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 1e4, -1e4, 7.5, -7.5], dtype=dtype)
    return torch.cat([*ends, extra])


def inputs(values: torch.Tensor, channels: int, spatial: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """[N, C, *spatial] holding every special value in every channel, in a seeded random order."""
    gen = torch.Generator().manual_seed(seed)
    per_sample = math.prod(spatial) if spatial else 1
    n = -(-values.numel() // per_sample)
    x = torch.empty(n, channels, per_sample, dtype=values.dtype)
    for c in range(channels):
        order = torch.randperm(n * per_sample, generator=gen) % values.numel()
        x[:, c] = values[order].view(n, per_sample)
    return x.view(n, channels, *spatial)


def run(act, x: torch.Tensor, grad: torch.Tensor, backend: str) -> list[torch.Tensor]:
    """Output and the gradients of x and of every parameter, through the given kernel."""
    x = x.detach().requires_grad_(True)
    y = banded_tmaf(x, act.tables(), act.breakpoints(), act.spec, backend)
    return [y.detach(), *torch.autograd.grad(y, [x, *act.parameters()], grad)]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, in x's memory layout: a gradient laid out differently would make PyTorch's own
    ops downstream (convolutions) sum in another order, so layouts must agree too."""
    assert t.is_contiguous()
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def oracle(act, x: torch.Tensor, grad: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The definition in numpy: intervals by exact float64 comparison with fl64(s + shift); output and
    grad_x in the input dtype, term by term in diagonal order; the values' gradient in float64."""
    dt = np.float32 if x.dtype == torch.float32 else np.float64
    xs, gs = x.detach().numpy(), grad.numpy()
    n, c = xs.shape[:2]
    x3, g3 = xs.reshape(n, c, -1), gs.reshape(n, c, -1)
    bp = act.breakpoints().detach().double().numpy()
    tables = torch.stack(act.tables()).detach().numpy().astype(dt)
    out, gx = np.zeros_like(x3), np.zeros_like(x3)
    gtab = np.zeros(tables.shape, dtype=np.float64)
    for d, (r, shift) in enumerate(zip(act.spec.rows, act.spec.shifts)):
        for j in range(c):
            if not 0 <= j + r < c:
                continue
            pos = bp[j if bp.shape[0] > 1 else 0] + np.float64(shift)
            q = np.searchsorted(pos, x3[:, j].astype(np.float64), side="left")  # #{k : pos_k < v}
            t = tables[d, j if tables.shape[1] > 1 else 0][q]
            if d == 0:
                y = t * x3[:, j] + dt(0)
                out[:, j] = np.where(x3[:, j] == 0, x3[:, j], y)
                gx[:, j] = t * g3[:, j]
            else:
                out[:, j + r] += t * x3[:, j]
                gx[:, j] += t * g3[:, j + r]
            np.add.at(gtab[d, j if tables.shape[1] > 1 else 0], q, g3[:, j + r].astype(np.float64) * x3[:, j])
    return out.reshape(xs.shape), gx.reshape(xs.shape), gtab


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("spatial", [(), (3, 5)], ids=["2d", "4d"])
@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_both_kernels_follow_the_definition_at_every_breakpoint(name, params, spatial, dtype):
    act = make(name, params, 5, dtype)
    x = inputs(special_values(act, dtype), 5, spatial)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    out, gx, gtab = oracle(act, x, grad)
    results = {b: run(act, x, grad, b) for b in (["torch", "native"] if NATIVE else ["torch"])}
    for backend, (y, gx_kernel, *gparams) in results.items():
        assert torch.equal(bits(y), bits(torch.from_numpy(out))), backend
        assert torch.equal(bits(gx_kernel), bits(torch.from_numpy(gx))), backend
        values_grad = torch.stack(gparams[:len(act.tables())])
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert torch.allclose(values_grad.double(), torch.from_numpy(gtab), rtol=tol, atol=tol), backend
    if NATIVE:  # and the two kernels agree on every bit of every gradient, breakpoints' included
        for a, b in zip(results["native"], results["torch"]):
            assert torch.equal(bits(a), bits(b))


@needs_native
@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("shape", [(3000, 7), (40, 300), (6, 5, 40, 37)], ids=["rows", "wide", "planes"])
def test_both_kernels_agree_bit_for_bit_on_large_random_inputs(name, params, shape):
    """Many chunks and lanes in the gradient sums (the shapes cross the chunk and parallel sizes)."""
    act = make(name, params, shape[1], torch.float32, seed=2)
    gen = torch.Generator().manual_seed(3)
    x, grad = torch.randn(shape, generator=gen) * 3, torch.randn(shape, generator=gen)
    for a, b in zip(run(act, x, grad, "native"), run(act, x, grad, "torch")):
        assert torch.equal(bits(a), bits(b))


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("grid", [{}, {"intervals": 100}, {"lo": -2, "hi": 6, "intervals": 8},
                                  {"lo": 0.1, "hi": 0.7, "intervals": 3}, {"lo": 100, "hi": 101, "intervals": 10}])
def test_the_arithmetic_index_is_exact_next_to_every_breakpoint(grid, dtype):
    """The native kernel computes uniform grids' intervals as ceil((v - lo) / h) where rounding cannot
    matter: 40 representable numbers on each side of every (shifted) breakpoint land as the
    thresholds say."""
    act = make("tmaf-tridiag", {**grid, "init": "random"}, 3, dtype)
    near = [special_values(act, dtype)]
    for direction in (math.inf, -math.inf):
        value = near[0]
        for _ in range(40):
            value = torch.nextafter(value, torch.full_like(value, direction))
            near.append(value)
    x = inputs(torch.cat(near), 3, ())
    grad = torch.ones_like(x)
    for a, b in zip(run(act, x, grad, "native"), run(act, x, grad, "torch")):
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("name, params", [("tmaf-tridiag", {}), ("tmaf-banded", {"bandwidth": 2}),
                                          ("tmaf-tridiag", {"train_breakpoints": True, "share": "layer"})])
@pytest.mark.parametrize("spatial", [(), (2, 3)], ids=["2d", "4d"])
def test_the_ends_of_the_band_take_no_neighbour_from_outside(backend, name, params, spatial):
    act = make(name, params, 6, torch.float64)
    n, c, s, b = 3, 6, math.prod(spatial), act.bandwidth
    x = (torch.randn(n, c, *spatial, dtype=torch.float64) * 3).requires_grad_(True)
    jac = torch.autograd.functional.jacobian(act, x).reshape(n, c, s, n, c, s)  # d out[a, i, p] / d x[a2, k, p2]
    a, i, p, a2, k, p2 = torch.meshgrid(*(torch.arange(size) for size in jac.shape), indexing="ij")
    coupled = (a == a2) & (p == p2) & ((i - k).abs() <= b)
    assert torch.count_nonzero(jac[~coupled]) == 0  # nothing across samples, positions or the band's ends
    assert torch.count_nonzero(jac[coupled & (i != k)]) > 0  # (the band itself is there)
    # The coefficients of columns that feed no row get no gradient and change nothing.
    act(x).square().sum().backward()
    if act.share == "feature":
        for dist in range(1, b + 1):
            suffix = "" if dist == 1 else f"_{dist}"
            upper, lower = getattr(act, f"values_upper{suffix}"), getattr(act, f"values_lower{suffix}")
            assert torch.count_nonzero(upper.grad[:dist]) == 0 and torch.count_nonzero(lower.grad[c - dist:]) == 0
            before = act(x)
            with torch.no_grad():
                upper[:dist] += 5.0
                lower[c - dist:] -= 5.0
            assert torch.equal(act(x), before)


@pytest.mark.parametrize("backend_name", ["native", "torch"])
@pytest.mark.parametrize("name, params", [("tmaf", {}), ("tmaf-tridiag", {"share": "layer"}), ("tmaf-banded", {}),
                                          ("tmaf-tridiag", {"train_breakpoints": True})])
@pytest.mark.parametrize("shape", [(20000, 20), (300, 512), (64, 8, 16, 16)], ids=["narrow", "wide", "planes"])
def test_gradients_do_not_depend_on_the_thread_count(backend_name, name, params, shape):
    if backend_name == "native" and not NATIVE:
        pytest.skip("native kernel unavailable")
    act = make(name, params, shape[1], torch.float32, seed=4)
    gen = torch.Generator().manual_seed(5)
    x, grad = torch.randn(shape, generator=gen) * 3, torch.randn(shape, generator=gen)
    previous = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            runs.append(run(act, x, grad, backend_name))
    finally:
        torch.set_num_threads(previous)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(bits(a), bits(b))


def test_index_add_adds_in_index_order():
    """The reference's fixed summation order relies on a CPU 1-D index_add_ adding in index order."""
    n = 1 << 17  # past PyTorch's parallel grain size
    values = torch.tensor([1e16, 1.0, -1e16, 3.0, 0.5], dtype=torch.float64).repeat(n // 5 + 1)[:n]
    index = (torch.arange(n) >= n // 3).long()
    sums = torch.zeros(2, dtype=torch.float64).index_add_(0, index, values)
    expected = []
    for part in (values[: n // 3].tolist(), values[n // 3:].tolist()):
        acc = 0.0
        for v in part:
            acc += v
        expected.append(acc)
    assert sums.tolist() == expected
    assert values[: n // 3].sum().item() != expected[0]  # (a different order gives a different sum)


def test_nan_and_infinities_land_in_the_same_interval_on_both_kernels():
    if not NATIVE:
        pytest.skip("native kernel unavailable")
    act = make("tmaf-tridiag", {}, 4, torch.float32)
    x = torch.tensor([[math.nan, math.inf, -math.inf, 1.0]] * 3)
    grad = torch.ones_like(x)
    a, b = run(act, x, grad, "native"), run(act, x, grad, "torch")
    for u, v in zip(a, b):
        assert torch.equal(u.isnan(), v.isnan()) and torch.equal(u.nan_to_num(), v.nan_to_num())
