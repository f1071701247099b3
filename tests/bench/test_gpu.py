"""`tmafbench bench gpu` (bench/gpu.py) on the CPU: every section runs its CPU stand-in
(small sizes), through the real CLI, and the JSON holds every section's figures. No GPU was ever
lent to this project; on a CUDA machine the same command runs the GPU sections."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tmafbench.cli import app


@pytest.mark.slow
def test_every_section_runs_on_the_cpu_and_the_json_holds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the Triton kernel joins the agreement section
    out = tmp_path / "gpu.json"
    # The 480 s default budget is for a GPU run; on shared CPUs the stand-ins alone can use it up
    # (seen at load 12), and a skipped section is not what this test checks.
    result = CliRunner().invoke(app, ["bench", "gpu", "--device", "cpu", "--quick", "--budget", "7200", "--out", str(out)])
    assert result.exit_code == 0, result.output
    sections = json.loads(out.read_text())["sections"]
    assert list(sections) == ["machine", "cuda_tests", "kernel_agreement", "packed", "bench_activations", "bench_pack",
                              "cifar_epoch", "two_gpu_study"]
    assert all(s["status"] == "ok" for s in sections.values()), {k: s["status"] for k, s in sections.items()}
    assert sections["machine"]["cpu"] and sections["machine"]["device"] == "cpu"
    assert sections["cuda_tests"]["exit_code"] == 0 and sections["cuda_tests"]["failures"] == 0
    agreement = sections["kernel_agreement"]
    assert agreement["all_outputs_and_input_gradients_exact"]
    assert {r["backend"] for r in agreement["rows"]} >= {"native", "torch", "triton"} and agreement["triton"] == "interpreted"
    assert all(r["all_completed"] and r["final_metrics_max_rel_diff"] < 1e-4 for r in sections["packed"]["rows"])
    names = {r["name"] for r in sections["bench_activations"]["rows"]}
    assert {"tmaf", "tmaf-tridiag", "pau", "apl", "kan-spline"} <= names
    assert [r["activation"] for r in sections["bench_pack"]["rows"]] == ["relu", "tmaf"]
    assert [r["activation"] for r in sections["cifar_epoch"]["rows"]] == ["relu", "tmaf"]
    assert sections["two_gpu_study"]["runs"] == {"completed": 8}


def test_a_budget_too_small_skips_and_says_so(tmp_path):
    out = tmp_path / "gpu.json"
    result = CliRunner().invoke(app, ["bench", "gpu", "--device", "cpu", "--budget", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    sections = json.loads(out.read_text())["sections"]
    assert sections["machine"]["status"] == "ok"
    assert all(s["status"].startswith("skipped: ") for name, s in sections.items() if name != "machine")


def test_cuda_without_a_gpu_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(app, ["bench", "gpu", "--device", "cuda"])
    assert result.exit_code == 2 and "error: bench gpu: CUDA is not available here" in result.output
