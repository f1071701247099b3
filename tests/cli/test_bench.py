"""Smoke test of `tmafbench bench activations` through the real CLI app."""

from __future__ import annotations

import json

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
    rows = json.loads(result.output)
    assert [(r["name"], r["grid"], r["shape"]) for r in rows] == [("relu", None, "32x4"), ("tmaf", "[-5,5]/4", "32x4")]
    assert rows[0]["vs_relu"] == 1.0 and rows[1]["median_ms"] > 0 and rows[1]["saved_bytes"] >= 32 * 4 * 4


def test_bench_activations_bad_input_is_one_line():
    result = runner.invoke(app, ["bench", "activations", "relu7", "--shape", "8x2", "--repeats", "1"])
    assert result.exit_code == 2
    assert "error: unknown activation 'relu7'; choose one of:" in result.output
    result = runner.invoke(app, ["bench", "activations", "relu", "--shape", "8"])
    assert result.exit_code == 2 and "error: bad shape '8'" in result.output
