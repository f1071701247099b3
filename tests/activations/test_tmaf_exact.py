"""Exact semantics of the TMAF family (docs/design.md section 3), on every kernel backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tmafbench import activations
from tmafbench.bench.activations import peak_bytes, saved_bytes
from tmafbench.activations.tmaf_banded import banded_shifts

from conftest import randomize


def inputs_with_breakpoints(breakpoints, shape=(128, 4), dtype=torch.float32, seed=0) -> torch.Tensor:
    """Random inputs whose first entries are the breakpoints, their float neighbours, and tiny values."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=dtype) * 4
    bp = torch.tensor(breakpoints, dtype=dtype)
    up = torch.nextafter(bp, torch.full_like(bp, math.inf))
    down = torch.nextafter(bp, torch.full_like(bp, -math.inf))
    special = torch.cat([bp, up, down, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 1e4, -1e4], dtype=dtype)])
    flat = x.view(-1)
    flat[: special.numel()] = special
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("params", [{}, {"intervals": 100}, {"lo": -2, "hi": 6, "intervals": 8}, {"breakpoints": [-3, -0.5, 0, 0.25, 7]}])
@pytest.mark.parametrize("shape", [(128, 4), (8, 4, 4, 5)])
def test_relu_init_is_relu_bit_for_bit(backend, dtype, params, shape):
    act = activations.create("tmaf", 4, **params).to(dtype)
    x = inputs_with_breakpoints(act.grid.breakpoints, shape, dtype)
    y = act(x)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(y.view(bits), F.relu(x).view(bits))


@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_leaky_init_is_leaky_relu(backend, slope):
    act = activations.create("tmaf", 4, init="leaky", slope=slope, intervals=100)
    x = inputs_with_breakpoints(act.grid.breakpoints)
    assert torch.equal(act(x), F.leaky_relu(x, slope))


def test_identity_init_is_identity(backend):
    act = activations.create("tmaf", 3, init="identity", breakpoints=[-1, 2])
    x = torch.randn(10, 3) * 5
    assert torch.equal(act(x), x)


@pytest.mark.parametrize("params", [{"breakpoints": [-1, 0, 0.5, 2]}, {"intervals": 100}, {"lo": -1, "hi": 1, "intervals": 3}])
def test_input_on_a_breakpoint_takes_the_interval_on_its_left(backend, params):
    act = activations.create("tmaf", 1, init="identity", **params).double()
    k = act.grid.num_values
    with torch.no_grad():
        act.values.copy_(torch.arange(1, k + 1, dtype=torch.float64).view(1, k))  # t_q = q + 1
    bp = torch.tensor(act.grid.breakpoints, dtype=torch.float64)
    above = torch.nextafter(bp, torch.full_like(bp, math.inf))
    q = torch.arange(len(bp), dtype=torch.float64)
    # (s_{q-1}, s_q] -> t_q = q + 1, so y = (q + 1) * s_q at s_q and (q + 2) * x just above it.
    assert torch.equal(act(bp.view(-1, 1)).view(-1), (q + 1) * bp)
    assert torch.equal(act(above.view(-1, 1)).view(-1), (q + 2) * above)
    far = torch.tensor([[-1e6], [1e6]], dtype=torch.float64)
    assert torch.equal(act(far), far * torch.tensor([[1.0], [float(k)]], dtype=torch.float64))


def bucket(v: float, breakpoints) -> int:
    """Reference interval index: the number of breakpoints strictly below v."""
    return sum(1 for s in breakpoints if s < v)


def dense_output(act, y: np.ndarray) -> np.ndarray:
    """out = T(y) @ y per sample, with T built entry by entry from the parameters (numpy, no kernel)."""
    names = ["values"] + [f"values_{side}{'' if k == 1 else f'_{k}'}" for k in range(1, act.bandwidth + 1) for side in ("upper", "lower")]
    rows = [0] + [r for k in range(1, act.bandwidth + 1) for r in (-k, k)]
    tables = [getattr(act, n).detach().double().numpy() for n in names]
    base = np.array(act.grid.breakpoints)
    c = y.shape[1]
    out = np.zeros_like(y)
    for n in range(y.shape[0]):
        t_mat = np.zeros((c, c))
        for table, row, shift in zip(tables, rows, act.shifts):
            for j in range(c):
                if 0 <= j + row < c:
                    t_mat[j + row, j] = table[j, bucket(y[n, j], base + shift)]
        out[n] = t_mat @ y[n]
    return out


@pytest.mark.parametrize("name,params", [("tmaf-tridiag", {}), ("tmaf-tridiag", {"breakpoints": [-2, 0, 1, 3]}),
                                          ("tmaf-tridiag", {"offset_beta": 0.1, "offset_gamma": -0.4}),
                                          ("tmaf-banded", {"bandwidth": 2}), ("tmaf-banded", {"bandwidth": 3, "intervals": 4})])
def test_matrix_forms_equal_an_explicit_dense_matrix(backend, name, params):
    act = randomize(activations.create(name, 7, **params)).double()
    y = torch.randn(6, 7, dtype=torch.float64) * 3
    expected = dense_output(act, y.numpy())
    assert np.allclose(act(y).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_tridiag_couples_neighbouring_channels_per_pixel(backend):
    act = randomize(activations.create("tmaf-tridiag", 5)).double()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64) * 3
    out = act(x)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, 5)  # [N*H*W, C]: one sample per pixel
    expected = act(pixels).view(2, 3, 4, 5).permute(0, 3, 1, 2)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)


def test_tridiag_defaults():
    act = activations.create("tmaf-tridiag", 4, intervals=10)
    assert act.shifts == pytest.approx((0.0, 1 / 3, 2 / 3))
    assert torch.equal(act.values_upper, torch.zeros(4, 12)) and torch.equal(act.values_lower, torch.zeros(4, 12))
    x = torch.randn(9, 4) * 4
    assert torch.equal(act(x), F.relu(x))  # zero off-diagonals: starts as its (relu) diagonal
    explicit = activations.create("tmaf-tridiag", 2, breakpoints=[0, 1, 4])  # mean width 2
    assert explicit.shifts == pytest.approx((0.0, 2 / 3, 4 / 3))
    assert banded_shifts(1, 3.0) == pytest.approx([0.0, 1.0, 2.0])


def test_banded_one_is_tridiag_and_banded_zero_is_tmaf(backend):
    x = torch.randn(5, 6, 2, 3) * 3
    tri = randomize(activations.create("tmaf-tridiag", 6, intervals=20))
    band1 = activations.create("tmaf-banded", 6, bandwidth=1, intervals=20)
    band1.load_state_dict(tri.state_dict())  # same parameter names
    assert torch.equal(band1(x), tri(x))
    diag = randomize(activations.create("tmaf", 6, breakpoints=[-1, 0, 3]))
    band0 = activations.create("tmaf-banded", 6, bandwidth=0, breakpoints=[-1, 0, 3])
    band0.load_state_dict(diag.state_dict())
    assert torch.equal(band0(x), diag(x))
    band3 = activations.create("tmaf-banded", 6, bandwidth=3)
    assert {n for n, _ in band3.named_parameters()} == {
        "values", "values_upper", "values_lower", "values_upper_2", "values_lower_2", "values_upper_3", "values_lower_3"}


@pytest.mark.parametrize("kwargs,message", [
    ({"breakpoints": [0, 1, 1]}, "strictly increasing"),
    ({"breakpoints": [2, 1]}, "strictly increasing"),
    ({"breakpoints": []}, "at least 1 interval"),
    ({"intervals": 0}, "at least 1 interval"),
    ({"intervals": 2.5}, "integer"),
    ({"lo": 3, "hi": 3}, "lo < hi"),
    ({"lo": 4, "hi": -4}, "lo < hi"),
    ({"breakpoints": [0, 1], "intervals": 4}, "either breakpoints or lo/hi/intervals"),
    ({"intervals": 3}, "0 must be a breakpoint for an exact relu/leaky init"),
    ({"breakpoints": [-1, 1], "init": "leaky"}, "0 must be a breakpoint"),
    # Checked against the constructor's annotation (Literal) before it runs: registries.Registry.check_params.
    ({"init": "zero"}, "init must be one of 'relu', 'leaky', 'identity', 'random', got str 'zero'"),
    ({"share": "channel"}, "share must be one of 'feature', 'layer', got str 'channel'"),
])
@pytest.mark.parametrize("name", ["tmaf", "tmaf-tridiag", "tmaf-banded"])
def test_bad_parameters_raise_clear_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        activations.create(name, 3, **kwargs)


def test_other_inits_need_no_zero_breakpoint():
    assert activations.create("tmaf", 2, intervals=3, init="identity")(torch.ones(1, 2)).eq(1).all()
    torch.manual_seed(0)
    assert activations.create("tmaf", 2, intervals=3, init="random").values.std() > 0


@pytest.mark.parametrize("name", ["tmaf", "tmaf-tridiag", "tmaf-banded"])
@pytest.mark.parametrize("shape", [(300, 16), (6, 16, 8, 8)])
@pytest.mark.parametrize("intervals", [10, 100])
def test_saved_for_backward_is_at_most_input_plus_one_byte_per_element(backend, name, shape, intervals):
    act = randomize(activations.create(name, 16, intervals=intervals))
    x = torch.randn(*shape) * 3
    params = sum(p.numel() * p.element_size() for p in act.parameters())
    bound = x.numel() * x.element_size() + x.numel() + params + 4096
    assert saved_bytes(act, x) <= bound


@pytest.mark.parametrize("name", ["tmaf", "tmaf-tridiag"])
def test_no_elements_times_intervals_temporaries(backend, name):
    act = activations.create(name, 16, intervals=100)
    x = torch.randn(64, 16, 16, 16) * 3
    grad = torch.randn_like(x)
    # A one-hot or (elements x intervals) tensor would be about 100x the input; native needs out + grad_x.
    # The reference sums in float64 with int64 slot indices: a few such temporaries per element.
    limit = (2.2 if backend == "native" else 25) * x.numel() * x.element_size()
    assert peak_bytes(act, x, grad) <= limit


@pytest.mark.parametrize("share", ["feature", "layer"])
@pytest.mark.parametrize("name", ["tmaf", "tmaf-tridiag"])
def test_train_breakpoints_stay_increasing_and_get_gradients(backend, name, share):
    torch.manual_seed(0)
    act = activations.create(name, 3, intervals=6, train_breakpoints=True, share=share, init="random")
    names = {n for n, _ in act.named_parameters()}
    assert {"breakpoint_first", "breakpoint_gaps"} <= names
    assert torch.allclose(act.breakpoints().detach(), torch.tensor(act.grid.breakpoints).float().expand_as(act.breakpoints()), atol=1e-5)
    x = torch.rand(128, 3) * 10 - 5
    target = torch.sin(2 * x) * x
    opt = torch.optim.Adam(act.parameters(), lr=0.3)
    first_loss = None
    for step in range(15):
        opt.zero_grad()
        loss = (act(x) - target).square().mean()
        first_loss = first_loss if first_loss is not None else loss.item()
        loss.backward()
        if step == 0:
            assert act.breakpoint_gaps.grad.abs().sum() > 0 and act.breakpoint_first.grad.abs().sum() > 0
        opt.step()
        bp = act.breakpoints().detach()
        assert (bp[:, 1:] > bp[:, :-1]).all()
    assert loss.item() < first_loss


def test_breakpoint_gradient_points_the_right_way(backend):
    """Relaxed d loss / d s: moving s_1 right shrinks the jump region, so its sign must follow the jump."""
    act = activations.create("tmaf", 1, breakpoints=[0.0], train_breakpoints=True, init="identity")
    with torch.no_grad():
        act.values.copy_(torch.tensor([[0.0, 1.0]]))  # relu with a trainable kink at s_1
    x = torch.tensor([[0.05], [0.1], [-0.05]])
    act(x).sum().backward()  # raising s_1 would turn the positive inputs off: d sum / d s_1 < 0
    assert act.breakpoint_first.grad.item() < 0


@pytest.mark.parametrize("name", ["tmaf", "tmaf-tridiag"])
@pytest.mark.parametrize("train_breakpoints", [False, True])
def test_tables_first_built_under_inference_mode_do_not_break_training(name, train_breakpoints):
    # An evaluation (torch.inference_mode) before or between training steps builds the threshold tables;
    # a later training step must not save those inference tensors for its backward.
    act = activations.create(name, 3, intervals=4, train_breakpoints=train_breakpoints)
    x = torch.randn(16, 3)
    with torch.inference_mode():
        act(x)
    act(x).square().sum().backward()  # train after an evaluation
    with torch.inference_mode():
        act(x)
    act.zero_grad()
    act(x).square().sum().backward()  # and again, with unchanged breakpoints
    assert all(p.grad is not None for p in act.parameters() if p.requires_grad)
