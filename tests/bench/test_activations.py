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


def _gone(pid: int, within_s: float) -> bool:
    import os
    import time

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it if it is our zombie child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


def test_busy_processes_run_for_the_block_and_outlive_no_one():
    import os
    import subprocess
    import sys
    from pathlib import Path

    with benchmark.busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    # A benchmark killed with SIGKILL cannot stop them: they notice their parent is gone.
    code = ("import time, sys\nfrom tmafbench.bench.activations import busy_processes\n"
            "with busy_processes(2) as procs:\n    print(*[p.pid for p in procs], flush=True)\n    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.kill()
    parent.wait()
    assert all(_gone(pid, 10.0) for pid in pids)
    with pytest.raises(ValueError, match=">= 0"), benchmark.busy_processes(-1):
        pass
