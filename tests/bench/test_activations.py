"""The benchmark library: rows, ratios and memory figures on a tiny shape."""

from __future__ import annotations

import pytest
import torch

from tmafbench.bench import activations as benchmark
from tmafbench.bench.activations import bench_activations, configurations, parse_shape


@pytest.mark.slow  # the profiler pass per row costs about half a second
def test_rows_ratios_and_memory():
    rows = bench_activations(["tmaf", "prelu", "tanh"], shapes=[(64, 8), (4, 8, 3, 3)], intervals=[10, 100], repeats=2, warmup=0)
    keys = [(r.name, r.grid, r.shape) for r in rows]
    assert keys == [(n, g, s) for s in ("64x8", "4x8x3x3")
                    for n, g in [("tmaf", "[-5,5]/10"), ("tmaf", "[-5,5]/100"), ("prelu", None), ("tanh", None)]]
    for r in rows:
        assert r.q1_ms <= r.median_ms <= r.q3_ms and r.vs_relu > 0
        assert r.saved_bytes >= 64 * 8 * 4 or r.shape != "64x8"
        assert r.peak_bytes > 0
    assert all(r.vs_prelu == 1.0 for r in rows if r.name == "prelu")


def test_peak_bytes_counts_what_forward_and_backward_allocate():
    x = torch.randn(256, 64)
    relu = torch.nn.ReLU()
    # relu allocates its output and the input gradient: 2 x 64 KiB.
    assert benchmark.peak_bytes(relu, x, torch.randn_like(x)) == 2 * x.numel() * 4
    assert benchmark.saved_bytes(relu, x) == x.numel() * 4  # relu keeps its output


def test_configurations_and_shapes():
    assert configurations(["relu", "tmaf-tridiag"], [10, 100]) == [
        ("relu", {}), ("tmaf-tridiag", {"intervals": 10}), ("tmaf-tridiag", {"intervals": 100})]
    assert parse_shape("128x64x32x32") == (128, 64, 32, 32) and parse_shape("20000,20") == (20000, 20)
    for bad in ("8", "ax3", "0x4"):
        with pytest.raises(ValueError, match="bad shape"):
            parse_shape(bad)
    with pytest.raises(ValueError, match="unknown activation"):
        configurations(["nope"], [10])
    with pytest.raises(ValueError, match="repeats >= 1"):
        bench_activations(["relu"], shapes=[(4, 2)], repeats=0)
