"""Smoke test of `tmafbench bench activations` through the real CLI app."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tmafbench.cli import app

runner = CliRunner()


def test_bench_activations_table_and_json():
    args = ["bench", "activations", "relu", "tmaf", "--shape", "32x4", "--threads", "1", "--intervals", "4",
            "--repeats", "2", "--warmup", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tmaf" in result.output and "[-5,5]/4" in result.output and "/prelu" in result.output

    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["machine"]["threads"] == 1 and report["machine"]["cpu"] and "torch" in report["machine"]
    rows = report["rows"]
    assert [(r["name"], r["grid"], r["shape"]) for r in rows] == [("relu", None, "32x4"), ("tmaf", "[-5,5]/4", "32x4")]
    assert rows[0]["vs_relu"] == 1.0 and rows[1]["median_ms"] > 0 and rows[1]["saved_bytes"] >= 32 * 4 * 4


def test_bench_activations_bad_input_is_one_line():
    result = runner.invoke(app, ["bench", "activations", "relu7", "--shape", "8x2", "--repeats", "1"])
    assert result.exit_code == 2
    assert "error: unknown activation 'relu7'; choose one of:" in result.output
    result = runner.invoke(app, ["bench", "activations", "relu", "--shape", "8"])
    assert result.exit_code == 2 and "error: bad shape '8'" in result.output


def _machine_of_a_run(env_extra: dict[str, str]) -> dict:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_extra, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-m", "tmafbench", "bench", "activations", "relu", "--shape", "8x2",  # noqa: PLW1510
                           "--repeats", "1", "--warmup", "0", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["machine"]


@pytest.mark.slow  # two benchmark processes (14 s)
def test_the_command_makes_waiting_threads_sleep_unless_the_user_chose():
    """OMP_WAIT_POLICY=PASSIVE (set before torch loads libgomp) keeps thread pools from collapsing on
    busy cores; the record names the policy the run had."""
    assert _machine_of_a_run({})["omp_wait_policy"] == "PASSIVE"
    assert _machine_of_a_run({"OMP_WAIT_POLICY": "ACTIVE"})["omp_wait_policy"] == "ACTIVE"


def test_under_load_times_every_row_twice():
    args = ["bench", "activations", "tmaf", "--shape", "64x4", "--threads", "1", "--intervals", "4", "--repeats", "2",
            "--warmup", "0", "--under-load", "1", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert [(r["name"], r["load"]) for r in rows] == [("tmaf", 0), ("tmaf", 1)]
    assert rows[0]["vs_unloaded"] is None and rows[1]["vs_unloaded"] > 0
    result = runner.invoke(app, ["bench", "activations", "relu", "--shape", "8x2", "--under-load", "-1"])
    assert result.exit_code == 2 and "--under-load must be >= 0" in result.output


def test_an_activation_with_parameters_of_its_own():
    """NAME:key=value,... times one setting of an activation beside another (fixed and trainable grids)."""
    args = ["bench", "activations", "tmaf", "tmaf:train_breakpoints=true", "--shape", "32x4", "--threads", "1",
            "--intervals", "4", "--repeats", "2", "--warmup", "1", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert [(r["name"], r["params"], r["grid"]) for r in rows] == [
        ("tmaf", {}, "[-5,5]/4"), ("tmaf", {"train_breakpoints": True}, "[-5,5]/4")]
    assert all(r["first_ms"] > 0 for r in rows)
    result = runner.invoke(app, ["bench", "activations", "tmaf:bogus=1", "--shape", "8x2", "--repeats", "1"])
    assert result.exit_code == 2 and "bogus" in result.output

    result = runner.invoke(app, ["bench", "epoch", "--task", "sine-sum", "--task-param", "train_size=128", "--width", "4",
                                 "-a", "tmaf:intervals=4", "-a", "tmaf:intervals=4,train_breakpoints=true", "--repeats", "1",
                                 "--threads", "1", "--threads", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [(r["activation"], r["threads"]) for r in report["rows"]] == [
        ("tmaf:intervals=4", 1), ("tmaf:intervals=4,train_breakpoints=true", 1),
        ("tmaf:intervals=4", 2), ("tmaf:intervals=4,train_breakpoints=true", 2)]
    assert report["rows"][0]["ratio"] == 1.0 and report["machine"]["cpu"]
