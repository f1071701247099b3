"""The contract every registered activation keeps (docs/design.md section 6: one suite, all implementations)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from tmafbench import activations
from tmafbench.activations.base import Activation

from conftest import randomize
from kernel_choice import select, with_kernels

ALL = activations.available()
TRAINABLE = [n for n in ALL if activations.create(n, 2).trainable]


def away_from_kinks(*shape: int, seed: int = 0) -> torch.Tensor:
    """float64 points k + 0.5 +- 0.05 in [-6.5, 6.5]: never near 0, +-1, the integer grid of
    [-5,5]/10 or its shifted copies at +h/3, +2h/3 (tri-diagonal) and +h/5 ... +4h/5 (banded, b=2)."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(-7, 7, shape, generator=gen).double()
    return k + 0.5 + (torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5) * 0.1


def test_the_documented_names_are_registered():
    expected = {"relu", "leaky_relu", "elu", "selu", "gelu", "softplus", "silu", "mish", "tanh", "plu",
                "prelu", "scaled", "tmaf", "tmaf-tridiag", "tmaf-banded"}
    assert expected <= set(ALL)
    assert all(isinstance(activations.create(n, 3), Activation) for n in ALL)


@pytest.mark.parametrize("name, kernel", with_kernels(ALL))
@pytest.mark.parametrize("shape", [(5, 6), (3, 6, 4, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_finite(name, kernel, shape, dtype, monkeypatch):
    select(monkeypatch, kernel)
    act = randomize(activations.create(name, 6)).to(dtype)
    x = torch.randn(*shape, dtype=dtype) * 4
    x.view(-1)[:4] = torch.tensor([0.0, 5.0, -5.0, 1.0], dtype=dtype)  # exact breakpoints, too
    x.view(-1)[4] = 1e4
    y = act(x.requires_grad_(True))
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    for p in act.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name, kernel", with_kernels(ALL))
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_gradcheck_float64(name, kernel, shape, monkeypatch):
    select(monkeypatch, kernel)
    act = randomize(activations.create(name, 3)).double()
    names = [n for n, _ in act.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for _, p in act.named_parameters()]
    x = away_from_kinks(*shape).requires_grad_(True)

    def fn(x, *params):
        return functional_call(act, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *values), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name, kernel", with_kernels(ALL))
def test_state_dict_round_trip(name, kernel, monkeypatch):
    select(monkeypatch, kernel)
    source = randomize(activations.create(name, 5), seed=3)
    target = activations.create(name, 5)
    target.load_state_dict(source.state_dict())
    x = torch.randn(7, 5, 2, 2) * 3
    assert torch.equal(source(x), target(x))


@pytest.mark.parametrize("name", TRAINABLE)
def test_feature_count_mismatch_is_a_clear_error(name):
    act = activations.create(name, 4)
    with pytest.raises(ValueError, match="built for 4 features but the input has 3"):
        act(torch.randn(2, 3))


@pytest.mark.parametrize("name, kernel", with_kernels(TRAINABLE))
def test_share_layer_keeps_one_set_for_the_layer(name, kernel, monkeypatch):
    select(monkeypatch, kernel)
    act = activations.create(name, 6, share="layer")
    assert all(p.shape[0] == 1 for p in act.parameters())
    per_feature = activations.create(name, 6)
    assert all(p.shape[0] == 6 for p in per_feature.parameters())
    for shape in [(4, 6), (2, 6, 3, 3), (2, 9)]:  # a shared set fits any feature count
        assert act(torch.randn(*shape)).shape == shape


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown activation 'relu6'; choose one of: .*tmaf-tridiag"):
        activations.create("relu6", 3)


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match="takes no parameter 'bins'; valid: .*intervals=None"):
        activations.create("tmaf", 3, bins=5)
    with pytest.raises(ValueError, match="takes no parameter 'intervals'"):
        activations.factory("relu", intervals=10)


def test_factory_validates_now_and_builds_later():
    with pytest.raises(ValueError, match="lo < hi"):
        activations.factory("tmaf", lo=1, hi=1)
    make = activations.factory("tmaf-tridiag", intervals=4)
    act = make(8)
    assert act.values.shape == (8, 6) and act.values_upper.shape == (8, 6)


def test_describe_and_grid_info():
    rows = {name: (summary, params) for name, summary, params in activations.describe()}
    assert set(rows) == set(ALL)
    assert "bandwidth=2" in rows["tmaf-banded"][1] and rows["relu"][0]
    assert activations.grid_info("tmaf", {}) == ("[-5,5]/10", 10)
    assert activations.grid_info("tmaf-tridiag", {"intervals": 100}) == ("[-5,5]/100", 100)
    assert activations.grid_info("tmaf", {"breakpoints": [-1, 0, 2]}) == ("bp(-1,0,2)", 2)
    assert activations.grid_info("relu", {}) == (None, None)
    with pytest.raises(ValueError, match="unknown activation"):
        activations.grid_info("nope", {})


def test_fixed_formulas():
    x = torch.linspace(-4, 4, 81)
    plu = activations.create("plu", 1)(x.view(-1, 1)).view(-1)
    expected = torch.maximum(0.1 * (x + 1) - 1, torch.minimum(0.1 * (x - 1) + 1, x))
    assert torch.allclose(plu, expected)
    assert torch.equal(plu[x.abs() <= 1], x[x.abs() <= 1])  # identity between -c and c
    scaled = activations.create("scaled", 2, sigma="tanh")
    with torch.no_grad():
        scaled.omega.copy_(torch.tensor([2.0, 0.5]))
    z = torch.randn(5, 2)
    assert torch.allclose(scaled(z), torch.tanh(z * torch.tensor([2.0, 0.5])))
    with pytest.raises(ValueError, match="unknown sigma 'swish'; choose one of"):
        activations.create("scaled", 2, sigma="swish")
    prelu = activations.create("prelu", 3)
    assert torch.equal(prelu(z.new_ones(2, 3) * -2), torch.full((2, 3), -0.5))


def test_literal_choices_are_the_implemented_ones():
    """The registry's choices (Literal annotations) match what the activations accept."""
    from tmafbench.activations import tmaf, trainable
    from tmafbench.registries import ACTIVATIONS

    params = {p.name: p.choices for p in ACTIVATIONS.entry("scaled").params}
    assert params["sigma"] == tuple(trainable.SIGMAS) and params["share"] == tmaf.SHARES
    params = {p.name: p.choices for p in ACTIVATIONS.entry("tmaf").params}
    assert params["init"] == tmaf.INITS and params["train_breakpoints"] == (False, True)
    assert params["slope"] is None and params["intervals"] is None
