"""The Triton kernel (kernels/triton_kernel.py) against the PyTorch reference, on the CPU under
Triton's interpreter: outputs and input gradients bit for bit, the values' gradient up to the order of
its float64 sum, for the diagonal, tri-diagonal and banded forms, shared and per-feature tables,
uniform and explicit grids, 2-d and 4-d inputs, float32 and float64, zeros, NaN and infinities."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize

from tmafbench import activations
from tmafbench.activations.kernels import backend_for, banded_tmaf, triton_kernel

pytestmark = [pytest.mark.skipif(not triton_kernel.available(), reason="triton is not installed"),
              # the interpreter computes inf * 0 with NumPy, which warns (the result, NaN, is the reference's)
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

CASES = [
    ("tmaf", {}),
    ("tmaf", {"share": "layer", "intervals": 100}),
    ("tmaf-tridiag", {}),
    ("tmaf-tridiag", {"breakpoints": [-2, 0, 0.3, 4]}),
    ("tmaf-banded", {"bandwidth": 2, "intervals": 4}),
]


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def run(act, x: torch.Tensor, grad: torch.Tensor, backend: str) -> list[torch.Tensor]:
    x = x.detach().requires_grad_(True)
    y = banded_tmaf(x, act.tables(), act.breakpoints(), act.spec, backend)
    return [y.detach(), *torch.autograd.grad(y, [x, *act.parameters()], grad)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(37, 5), (3, 5, 2, 4)], ids=["2d", "4d"])
@pytest.mark.parametrize("name, params", CASES, ids=[f"{n}-{'-'.join(map(str, p.values())) or 'default'}" for n, p in CASES])
def test_the_triton_kernel_follows_the_reference(interpreter, name, params, shape, dtype):
    act = activations.create(name, 5, **params).to(dtype)
    randomize(act, 0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3
    # every breakpoint itself, its float neighbours, zeros of both signs and the non-finite values
    bp = torch.tensor(act.grid.breakpoints, dtype=torch.float64).to(dtype)
    special = torch.cat([bp, torch.nextafter(bp, torch.full_like(bp, math.inf)), torch.nextafter(bp, torch.full_like(bp, -math.inf)),
                         torch.tensor([0.0, -0.0, math.inf, -math.inf, 1e-30], dtype=dtype)])
    flat = x.view(-1)
    flat[: min(flat.numel(), special.numel())] = special[: flat.numel()]
    grad = torch.randn(shape, generator=gen, dtype=dtype)
    ours, reference = run(act, x, grad, "triton"), run(act, x, grad, "torch")
    for a, b in zip(ours[:2], reference[:2]):  # output and grad_x: the same bits
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(bits(a.nan_to_num()), bits(b.nan_to_num()))
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for a, b in zip(ours[2:], reference[2:]):  # the values' gradient: one float64 sum in another order
        assert torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max().item(), equal_nan=True)


def test_a_nan_input_lands_in_the_last_interval(interpreter):
    act = activations.create("tmaf", 1, init="identity")
    with torch.no_grad():
        act.values[0, -1] = 2.0
    x = torch.tensor([[math.nan], [6.0]])
    out = run(act, x, torch.ones_like(x), "triton")
    assert out[0][0].isnan() and out[0][1].item() == 12.0 and out[1][0].item() == 2.0


def test_selection_and_what_stays_on_the_reference(interpreter):
    fixed = activations.create("tmaf-tridiag", 4)
    trainable = activations.create("tmaf", 4, train_breakpoints=True)
    x = torch.randn(3, 4)
    assert triton_kernel.supports(x, fixed.spec) and not triton_kernel.supports(x, trainable.spec)
    assert backend_for(x, fixed.spec) != "triton"  # CPU tensors: the native kernel (or the reference)
    with pytest.raises(ValueError, match="fixed breakpoints"):
        banded_tmaf(x, trainable.tables(), trainable.breakpoints(), trainable.spec, "triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name, params", CASES, ids=[f"{n}-{'-'.join(map(str, p.values())) or 'default'}" for n, p in CASES])
def test_on_cuda_the_triton_kernel_gives_the_reference_bits(name, params):
    """Compiled for the GPU (no fused multiply-add), against the reference on the CPU."""
    act = activations.create(name, 64, **params)
    randomize(act, 0)
    gen = torch.Generator().manual_seed(1)
    x, grad = torch.randn(512, 64, 3, generator=gen) * 3, torch.randn(512, 64, 3, generator=gen)
    reference = run(act, x, grad, "torch")
    on_gpu = act.to("cuda")
    assert backend_for(x.cuda(), on_gpu.spec) == "triton"
    ours = [t.cpu() for t in run(on_gpu, x.cuda(), grad.cuda(), "triton")]
    for a, b in zip(ours[:2], reference[:2]):
        assert torch.equal(bits(a), bits(b))
    for a, b in zip(ours[2:], reference[2:]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6 * b.abs().max().item())
