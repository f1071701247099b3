"""The trainable-activation family (PAU, APL, PWLU, KAN-style spline, trainable Swish): each against
a direct formula in float64, its gradients, its initial shape, and its options through the trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tmafbench import activations
from tmafbench.activations import rational
from tmafbench.training import TrainingConfig, TrialConfig, train_trial

FAMILY = ["pau", "apl", "pwlu", "kan-spline", "swish"]
GRID = torch.linspace(-7.0, 7.0, 561, dtype=torch.float64)  # step 0.025, past every range


def randomised(name: str, features: int = 3, seed: int = 0, **params) -> torch.nn.Module:
    """The activation in float64 with every parameter moved off its initial value, deterministically."""
    act = activations.create(name, features, **params).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in act.named_parameters():
            if key in ("left", "right"):  # keep the range ordered: shift and stretch it
                p.add_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 0.6 - 0.3)
            else:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return act


def on_grid(act: torch.nn.Module, features: int = 3) -> torch.Tensor:
    """Every feature sees the whole grid: input [G, C]."""
    return act(GRID[:, None].expand(-1, features).contiguous())


# -- direct formulas, feature by feature (loops and NumPy, nothing shared with the modules) --

def pau_direct(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    p = sum(a[j] * x**j for j in range(len(a)))
    q = 1 + np.abs(sum(b[k] * x ** (k + 1) for k in range(len(b))))
    return p / q


def apl_direct(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + sum(a[s] * np.maximum(0, -x + b[s]) for s in range(len(a)))


def pwlu_direct(x, left, right, values, k_left, k_right) -> np.ndarray:
    bp = np.linspace(left, right, len(values))
    inside = np.interp(x, bp, values)
    return np.where(x < left, values[0] + k_left * (x - left), np.where(x >= right, values[-1] + k_right * (x - right), inside))


def bspline_bases(x: np.ndarray, knots: np.ndarray, order: int) -> np.ndarray:
    """Cox-de Boor recursion: [len(x), len(knots) - order - 1] B-spline values."""
    bases = ((x[:, None] >= knots[None, :-1]) & (x[:, None] < knots[None, 1:])).astype(float)
    for k in range(1, order + 1):
        left = (x[:, None] - knots[None, : -(k + 1)]) / (knots[k:-1] - knots[: -(k + 1)]) * bases[:, :-1]
        right = (knots[None, k + 1:] - x[:, None]) / (knots[k + 1:] - knots[1:-k]) * bases[:, 1:]
        bases = left + right
    return bases


def spline_direct(x, coefficients, w_base, w_spline, grid_size, lo, hi) -> np.ndarray:
    h = (hi - lo) / grid_size
    knots = lo + h * np.arange(-3, grid_size + 4)
    silu = x / (1 + np.exp(-x))
    return w_base * silu + w_spline * bspline_bases(x, knots, 3) @ coefficients


def direct(name: str, act: torch.nn.Module, x: np.ndarray, c: int) -> np.ndarray:
    p = {k: v.detach().numpy() for k, v in act.named_parameters()}
    r = 0 if next(iter(p.values())).shape[0] == 1 else c  # shared: row 0
    if name == "pau":
        return pau_direct(x, p["numerator"][r], p["denominator"][r])
    if name == "apl":
        return apl_direct(x, p["slopes"][r], p["hinges"][r])
    if name == "pwlu":
        return pwlu_direct(x, p["left"][r], p["right"][r], p["values"][r], p["slope_left"][r], p["slope_right"][r])
    if name == "kan-spline":
        return spline_direct(x, p["coefficients"][r], p["base_weight"][r], p["spline_weight"][r], act.grid_size,
                             act.left, act.right)
    return x / (1 + np.exp(-p["beta"][r] * x))


@pytest.mark.parametrize("share", ["feature", "layer"])
@pytest.mark.parametrize("name", FAMILY)
def test_forward_matches_the_direct_formula(name, share):
    act = randomised(name, share=share)
    out = on_grid(act).detach().numpy()
    for c in range(3):
        np.testing.assert_allclose(out[:, c], direct(name, act, GRID.numpy(), c), rtol=1e-12, atol=1e-12)
    # 4-D input: the feature axis is dimension 1.
    x4 = GRID[:72].reshape(2, 3, 3, 4)
    y4 = act(x4).detach().numpy()
    for c in range(3):
        np.testing.assert_allclose(y4[:, c].ravel(), direct(name, act, x4[:, c].numpy().ravel(), c), rtol=1e-12, atol=1e-12)


def kink_free(name: str, act: torch.nn.Module) -> torch.Tensor:
    """Grid points at least 1e-3 away from every kink (APL hinges, PWLU breakpoints, PAU's |.|)."""
    x = GRID.clone()
    keep = torch.ones_like(x, dtype=torch.bool)
    kinks = []
    if name == "apl":
        kinks = [act.hinges.detach().flatten(), torch.zeros(1, dtype=x.dtype)]
    elif name == "pwlu":
        kinks = [act.breakpoints(torch.float64).flatten()]
    for k in kinks:
        keep &= (x[:, None] - k[None, :]).abs().min(dim=1).values > 1e-3
    return x[keep]


@pytest.mark.parametrize("share", ["feature", "layer"])
@pytest.mark.parametrize("name", FAMILY)
def test_gradcheck_in_float64(name, share):
    act = randomised(name, seed=1, share=share)
    x = kink_free(name, act)[::7]
    x = x[: (x.numel() // 3) * 3].reshape(-1, 3).clone().requires_grad_(True)
    if name == "pau":  # stay clear of the zeros of b_1 x + ... + b_n x^n, where |.| has a kink
        with torch.no_grad():
            q = rational.horner(act.denominator[None, :, :], x) * x
        x = x[(q.abs() > 1e-3).all(dim=1)].detach().requires_grad_(True)
    names = [n for n, _ in act.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for _, p in act.named_parameters()]

    def fn(x, *params):
        return functional_call(act, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *values), eps=1e-6, atol=1e-6)


# -- initial shapes --

def tiny_and_exact_points(dtype: torch.dtype) -> torch.Tensor:
    """The grid, the default PWLU breakpoints and their float neighbours, and tiny values of both signs."""
    bp = torch.linspace(-3, 3, 17, dtype=dtype)
    special = torch.cat([bp, torch.nextafter(bp, bp + 1), torch.nextafter(bp, bp - 1),
                         torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 1e-45, -1e-45, 1e4, -1e4], dtype=dtype)])
    return torch.cat([GRID.to(dtype), special])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, params", [("pwlu", {}), ("pwlu", {"share": "layer"}), ("apl", {"init": "relu"})])
def test_relu_at_init_bit_for_bit(name, params, dtype):
    x = tiny_and_exact_points(dtype)[:, None].expand(-1, 4).contiguous()
    act = activations.create(name, 4, **params).to(dtype)
    y = act(x)
    assert torch.equal(y, torch.relu(x))
    assert not torch.signbit(y).any()  # no -0.0 where relu gives +0.0


def test_apl_paper_init_is_random_and_not_relu():
    torch.manual_seed(0)
    act = activations.create("apl", 200)
    assert act.slopes.abs().max() <= 0.2 and act.slopes.std() > 0.05
    assert act.hinges.std().item() == pytest.approx(0.5, rel=0.1)
    assert not torch.equal(act(torch.randn(8, 200)), torch.relu(torch.randn(8, 200)))


def test_pau_fit_reproduces_the_published_reference():
    a, b = rational.leaky_relu_fit(5, 4, 0.01)
    ref_a, ref_b = (np.array(c) for c in rational.REFERENCE_LEAKY_RELU_5_4)
    x = np.linspace(-3, 3, 60001)
    ours, published = rational.safe_rational(x, np.array(a), np.array(b)), rational.safe_rational(x, ref_a, ref_b)
    assert np.abs(ours - published).max() < 1e-4
    np.testing.assert_allclose(a, ref_a, atol=5e-3)
    np.testing.assert_allclose(b, ref_b, atol=5e-3)
    # The fit itself: leaky ReLU within 0.034 (the reference's own maximum error) on [-3, 3].
    assert np.abs(ours - np.where(x > 0, x, 0.01 * x)).max() < 0.034


def test_pau_starts_as_the_fit_in_every_feature():
    act = activations.create("pau", 4, slope=0.1)
    a, b = rational.leaky_relu_fit(5, 4, 0.1)
    assert torch.equal(act.numerator, torch.tensor(a, dtype=torch.float32).expand(4, 6))
    assert torch.equal(act.denominator, torch.tensor(b, dtype=torch.float32).expand(4, 4))
    x = torch.linspace(-3, 3, 601)[:, None].expand(-1, 4)
    assert (act(x) - F.leaky_relu(x, 0.1)).abs().max() < 0.05
    small = activations.create("pau", 2, numerator_degree=3, denominator_degree=2)
    assert small.numerator.shape == (2, 4) and small.denominator.shape == (2, 2)


def test_spline_and_swish_start_as_silu():
    x = GRID.float()[:, None].expand(-1, 3).contiguous()
    assert torch.allclose(activations.create("kan-spline", 3, noise=0.0)(x), F.silu(x), atol=0, rtol=0)
    assert torch.allclose(activations.create("swish", 3)(x), F.silu(x), atol=1e-6)
    torch.manual_seed(0)
    noisy = activations.create("kan-spline", 3, grid_size=5)
    assert noisy.coefficients.abs().max() <= 0.1 / 5 / 2 and noisy.coefficients.abs().max() > 0
    # B-splines sum to one on [left, right]: constant coefficients add that constant there.
    with torch.no_grad():
        noisy.coefficients.fill_(0.25)
    inside = x[(x[:, 0] >= -1) & (x[:, 0] < 1)]
    assert torch.allclose(noisy(inside), F.silu(inside) + 0.25, atol=1e-6)


@pytest.mark.parametrize("name, params, message", [
    ("pau", {"numerator_degree": 0}, "pau degrees must be >= 1"),
    ("apl", {"hinges": 0}, "apl hinges must be >= 1"),
    ("apl", {"init": "zeros"}, "init must be one of 'paper', 'relu', got str 'zeros'"),
    ("pwlu", {"left": 1.0, "right": 1.0}, "pwlu needs left < right"),
    ("pwlu", {"pieces": 0}, "pwlu pieces must be >= 1"),
    ("pwlu", {"align_steps": 0}, "pwlu align_steps must be >= 1"),
    ("kan-spline", {"grid_size": 0}, "kan-spline grid_size must be >= 1"),
    ("swish", {"share": "channel"}, "share must be one of 'feature', 'layer', got str 'channel'"),
])
def test_bad_parameters_are_clear_errors(name, params, message):
    with pytest.raises(ValueError, match=message):
        activations.factory(name, **params)


def test_the_family_is_listed_with_its_source():
    rows = {name: summary for name, summary, _ in activations.describe()}
    for name, source in [("pau", "Molina"), ("apl", "Agostinelli"), ("pwlu", "Zhou"), ("kan-spline", "Liu"),
                         ("swish", "Ramachandran")]:
        assert source in rows[name]


# -- PWLU's statistics-based realignment --

def test_pwlu_realignment_tracks_the_input_then_resets_to_relu_on_mean_pm_3_std():
    torch.manual_seed(0)
    act = activations.create("pwlu", 2, align=True, align_steps=3)
    opt = torch.optim.SGD(act.parameters(), lr=0.1)
    batches = [torch.randn(4000, 2) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -1.0]) for _ in range(4)]
    for xb in batches[:3]:  # phase one: statistics only, no gradient reaches the unit
        act(xb.requires_grad_(True)).square().sum().backward()
        assert all(p.grad is None for p in act.parameters())
        opt.step()
    assert torch.equal(act.left, torch.full((2,), -3.0))
    mean, std = act.running_mean.clone(), act.running_std.clone()
    assert torch.allclose(mean, torch.tensor([1.0, -1.0]), atol=0.1)
    assert torch.allclose(std, torch.tensor([2.0, 0.5]), rtol=0.1)
    act.eval()
    act(batches[3])  # evaluation neither counts nor realigns
    assert int(act.align_step) == 3
    act.train()
    y = act(batches[3])  # the next training batch realigns, then learns
    assert torch.allclose(act.left, mean - 3 * std) and torch.allclose(act.right, mean + 3 * std)
    assert torch.equal(act.values, torch.relu(act.breakpoints(torch.float32)))
    y.square().sum().backward()
    assert all(p.grad is not None for p in act.parameters())
    assert int(act.align_step) == 4


# -- every option through the trainer, with its evaluation --

OPTIONS = [(name, {"share": "layer"}) for name in FAMILY] + [
    ("apl", {"init": "relu"}), ("pwlu", {"align": True, "align_steps": 3}), ("kan-spline", {"noise": 0.0}),
    ("pau", {"numerator_degree": 3, "denominator_degree": 2}),
]


@pytest.mark.parametrize("name, params", [(n, {}) for n in FAMILY] + OPTIONS)
def test_trains_through_the_trainer(name, params):
    config = TrialConfig(task="sine-sum", model="mlp", activation=name, seed=0,
                         task_params={"n": 1, "train_size": 256, "test_size": 64},
                         model_params={"depth": 1, "width": 8}, act_params=params,
                         training=TrainingConfig(epochs=2, batch_size=64, device="cpu", lr=1e-2, act_lr=1e-2))
    result = train_trial(config)
    assert result.status == "completed" and math.isfinite(result.final_metrics["rel_l2"])
    assert result.num_act_params > 0
    stored = result.artifacts["activation_params"]
    (module,) = stored.values()
    if params.get("align"):  # 4 batches per epoch, 3 of them in phase one: realigned in epoch 1
        assert module["align_step"] == 4 and module["left"] != [-3.0] * 8
    assert len(result.artifacts["activation_curves"]["modules"]) == 1
