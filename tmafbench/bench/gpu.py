"""`tmafbench bench gpu`: prove the GPU path in one run of at most a few minutes, into one JSON.

Sections, in order (each records its status, its seconds and its figures; a section that fails
records the error and the next one runs; the JSON is rewritten after every section, so a run that
is cut short still leaves what it measured):
- machine: the machine record (bench.activations.machine_record), the GPUs, CUDA and Triton;
- cuda_tests: the test suite's `gpu`-marked tests (pytest -m gpu), where the tests are present;
- kernel_agreement: the TMAF kernel this device uses (Triton on CUDA) against the PyTorch reference
  on the CPU, in float32 and float64: outputs and input gradients bit for bit, the values' gradient
  to the order of its float64 sum; also PyTorch's reference on the device (atomic adds), and on the
  CPU the Triton kernel under TRITON_INTERPRET=1 when that is set;
- packed: packed cells against the same cells trained one at a time on the device, final metrics;
- bench_activations: `bench activations` on the device (forward+backward, ratios to ReLU/PReLU);
- bench_pack: `bench pack` on the device (one process), with the vmap ensemble column;
- cifar_epoch: one CIFAR-10 ResNet18 epoch, TMAF against ReLU (real CIFAR-10 where TMAFBENCH_DATA
  or torchvision's download finds it; otherwise 391 steps on random batches of the same shape: the
  same arithmetic, without data loading);
- two_gpu_study: a small study over `--devices cuda:0,cuda:1` when two GPUs are present.

`budget_s` caps the whole run: a section that would start with less than its expected time left
is skipped, and says so. `device="cpu"` runs every section that can run without a GPU on the CPU
(the test suite does so with `quick=True`: small sizes), which is how this module is tested
without a GPU; there the two-GPU study becomes a two-worker study on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tmafbench.errors import InputError
from tmafbench.activations.tmaf import BandedTMAFBase

#: Seconds each section needs at least (a section is skipped when less than this is left).
NEEDS_S = {"machine": 1, "cuda_tests": 60, "kernel_agreement": 20, "packed": 20, "bench_activations": 40,
           "bench_pack": 60, "cifar_epoch": 60, "two_gpu_study": 40}
KERNEL_CASES: list[tuple[str, dict[str, Any]]] = [
    ("tmaf", {}), ("tmaf", {"intervals": 100}), ("tmaf", {"share": "layer"}), ("tmaf-tridiag", {}),
    ("tmaf-tridiag", {"breakpoints": [-2, 0, 0.3, 4]}), ("tmaf-banded", {"bandwidth": 2})]


def repo_tests() -> Path | None:
    """The checkout's tests/ folder, when this package runs from one."""
    path = Path(__file__).resolve().parents[2] / "tests"
    return path if (path / "conftest.py").is_file() else None


def machine(device: str) -> dict[str, Any]:
    from tmafbench.bench.activations import machine_record
    from tmafbench.activations.kernels import backend_for

    record = machine_record()
    record["device"] = device
    record["cuda"] = torch.version.cuda
    record["gpus"] = ([{"name": torch.cuda.get_device_name(i), "capability": list(torch.cuda.get_device_capability(i)),
                        "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                       for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])
    record["tmaf_kernel_on_device"] = backend_for(torch.zeros(1, device=device))
    from importlib import metadata

    try:
        record["triton"] = metadata.version("triton")
    except metadata.PackageNotFoundError:
        record["triton"] = None
    return record


def cuda_tests(timeout_s: float) -> dict[str, Any]:
    tests = repo_tests()
    if tests is None:
        return {"status": "skipped: the tests are not beside this installation (run from a checkout)"}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        done = subprocess.run([sys.executable, "-m", "pytest", str(tests), "-m", "gpu", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={report}"], capture_output=True, text=True, timeout=timeout_s,
                              cwd=tests.parent, check=False)
        root = ET.parse(report).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        if suite is None:
            raise ValueError(f"pytest wrote no test suite into {report.name}")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [c.get("classname", "") + "::" + c.get("name", "") for c in suite.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
    return {"exit_code": done.returncode, **counts, "failed": failed, "tail": done.stdout.strip().splitlines()[-3:]}


def _run_kernel(act, x: torch.Tensor, grad: torch.Tensor, backend: str) -> list[torch.Tensor]:
    from tmafbench.activations.kernels import banded_tmaf

    x = x.detach().requires_grad_(True)
    params = [p for p in act.parameters()]
    y = banded_tmaf(x, act.tables(), act.breakpoints(), act.spec, backend)
    return [t.detach().cpu() for t in (y, *torch.autograd.grad(y, [x, *params], grad))]


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    as_int = torch.int32 if a.dtype == torch.float32 else torch.int64
    return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num().contiguous().view(as_int),
                                                                  b.nan_to_num().contiguous().view(as_int)))


def kernel_agreement(device: str, quick: bool) -> dict[str, Any]:
    from tmafbench import activations
    from tmafbench.activations.kernels import backend_for, triton_kernel

    shapes = [(300, 20), (8, 16, 9, 9)] if quick else [(20000, 20), (256, 512), (32, 64, 32, 32)]
    rows: list[dict[str, Any]] = []
    worst = 0.0
    for name, params in KERNEL_CASES:
        for dtype in (torch.float32, torch.float64):
            for shape in shapes:
                torch.manual_seed(0)
                act: BandedTMAFBase = activations.create(name, shape[1], **params).to(dtype)  # type: ignore[assignment]
                with torch.no_grad():
                    for p in act.parameters():
                        p.copy_(torch.rand_like(p) * 1.5 - 0.25)
                gen = torch.Generator().manual_seed(1)
                x, grad = torch.randn(shape, generator=gen, dtype=dtype) * 3, torch.randn(shape, generator=gen, dtype=dtype)
                reference = _run_kernel(act, x, grad, "torch")
                on_device = act.to(device)
                backends = sorted({backend_for(x.to(device), on_device.spec), "torch"}
                                  | ({"triton"} if triton_kernel.supports(x.to(device), on_device.spec) else set()))
                for backend in backends:
                    got = _run_kernel(on_device, x.to(device), grad.to(device), backend)
                    values = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                                 for a, b in zip(got[2:], reference[2:]))
                    worst = max(worst, values)
                    rows.append({"activation": name, "params": params, "dtype": str(dtype).replace("torch.", ""),
                                 "shape": "x".join(map(str, shape)), "backend": backend,
                                 "output_bits_equal": _bits_equal(got[0], reference[0]),
                                 "grad_x_bits_equal": _bits_equal(got[1], reference[1]), "values_grad_max_rel": values})
                act.to("cpu")
    exact = all(r["output_bits_equal"] and r["grad_x_bits_equal"] for r in rows)
    if not triton_kernel.available():
        triton = "not installed"
    elif device == "cpu" and not triton_kernel.interpreted():
        triton = "not run: set TRITON_INTERPRET=1 to run it under the interpreter"
    elif triton_kernel.interpreted() and not triton_kernel.interpreter_usable():
        triton = "not run: triton.language was imported before TRITON_INTERPRET=1 was set in this process"
    else:
        triton = "interpreted" if triton_kernel.interpreted() else "compiled"
    return {"all_outputs_and_input_gradients_exact": exact, "values_grad_max_rel": worst, "triton": triton, "rows": rows}


def packed(device: str, quick: bool) -> dict[str, Any]:
    from tmafbench.core import TrainingConfig, TrialConfig
    from tmafbench.training import train_trial
    from tmafbench.training.packed import train_many

    rows = []
    for activation in ("relu", "tmaf", "tmaf-tridiag"):
        act = {"intervals": 20} if activation.startswith("tmaf") else {}
        cells = [TrialConfig(task="sine-sum", model="mlp", activation=activation, seed=seed,
                             task_params={"n": 2, "train_size": 256 if quick else 4000, "test_size": 256},
                             model_params={"depth": 2, "width": 16}, act_params=act,
                             training=TrainingConfig(epochs=2, batch_size=64, device=device, lr=10 ** -(3 - seed % 2)))
                 for seed in range(4)]
        t0 = time.perf_counter()
        together = train_many(cells)
        packed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        alone = [train_trial(c) for c in cells]
        alone_s = time.perf_counter() - t0
        failed = [r for r in together if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        diffs = [abs(p.final_metrics[k] - a.final_metrics[k]) / max(abs(a.final_metrics[k]), 1e-30)
                 for p, a in zip(together, alone) if not isinstance(p, BaseException) for k in a.final_metrics]
        rows.append({"activation": activation, "cells": len(cells), "packed_s": packed_s, "alone_s": alone_s,
                     "all_completed": all(r.status == "completed" for r in (*together, *alone)),
                     "final_metrics_max_rel_diff": max(diffs)})
    return {"rows": rows}


def bench_activations_on(device: str, quick: bool) -> dict[str, Any]:
    from tmafbench.bench.activations import bench_activations

    names = ["relu", "prelu", "tmaf", "tmaf-tridiag", "pau", "apl", "kan-spline"]
    shapes = [(256, 64), (8, 16, 8, 8)] if quick else [(20000, 20), (256, 512), (4096, 1024), (128, 64, 32, 32)]
    rows = bench_activations(names, shapes, intervals=(10,), repeats=2 if quick else 20, warmup=1 if quick else 5,
                             device=device)
    return {"rows": [r.to_dict() for r in rows]}


def bench_pack_on(device: str, quick: bool) -> dict[str, Any]:
    from tmafbench.bench import packing as pack_benchmark

    if quick:  # a tiny stand-in setting, so that the code path runs in seconds
        pack_benchmark.SETTINGS.setdefault("quick", {"task": "sine-sum", "task_params": {"n": 1, "train_size": 128, "test_size": 32},
                                                     "model_params": {"depth": 1, "width": 8}, "grid": {"intervals": 4},
                                                     "batch_size": 32})
    figures = pack_benchmark.bench_pack(["quick"] if quick else ["table-3-2"], ["relu", "tmaf"], pack=2 if quick else 64,
                                        epochs=1, processes=1, device=device)
    return {"rows": [f.to_dict() for f in figures]}


def cifar_epoch(device: str, quick: bool) -> dict[str, Any]:
    from tmafbench.errors import DataNotFoundError
    from tmafbench.bench.training import bench_epochs, bench_steps

    rows, source = None, ""
    if not quick:
        try:
            rows = bench_epochs("cifar10", "resnet18-cifar", ["relu", "tmaf"], batch_size=128, repeats=1, warmup=0,
                                device=device)
            source = f"CIFAR-10 (TMAFBENCH_DATA={os.environ.get('TMAFBENCH_DATA')}, else torchvision's download)"
        except DataNotFoundError as exc:
            source = f"no CIFAR-10 ({exc}); "
    if rows is None:
        steps = 2 if quick else -(-50000 // 128)
        rows = bench_steps("cifar10", "resnet18-cifar", ["relu", "tmaf"], batch_size=8 if quick else 128, repeats=steps,
                           warmup=1 if quick else 5, device=device)
        for row in rows:  # one epoch = the sum of the steps
            row.extra["epoch_s"] = sum(row.times_s)
        source += f"{steps} steps on random batches of CIFAR-10's shape"
    return {"data": source, "rows": [{"activation": r.activation, "median_s": r.median_s, "ratio": r.ratio,
                                      "epoch_s": r.extra.get("epoch_s", sum(r.times_s)), "params": r.num_params}
                                     for r in rows]}


STUDY = """name = "gpu-check"
description = "bench gpu: relu and tmaf on sine-sum over the devices"
[defaults]
task = "sine-sum"
model = "mlp"
task_params = {{ n = 2, train_size = {n}, test_size = 256 }}
model_params = {{ depth = 1, width = 20 }}
training = {{ epochs = 2, batch_size = 64 }}
[axes]
seeds = 4
[[axes.activations]]
name = "relu"
[[axes.activations]]
name = "tmaf"
"""


def two_gpu_study(device: str, quick: bool, timeout_s: float) -> dict[str, Any]:
    if device.startswith("cuda"):
        if torch.cuda.device_count() < 2:
            return {"status": f"skipped: {torch.cuda.device_count()} GPU(s) here, the study needs two"}
        placement = ["--devices", "cuda:0,cuda:1"]
    else:  # the CPU stand-in: two workers
        placement = ["--workers", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "gpu-check.toml"
        spec.write_text(STUDY.format(n=256 if quick else 4000))
        url = f"sqlite:///{Path(tmp) / 'gpu-check.db'}"
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tmafbench", "study", "run", str(spec), "--storage", url, *placement],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        wall = time.perf_counter() - t0
        import sqlite3

        with sqlite3.connect(Path(tmp) / "gpu-check.db") as db:
            statuses = dict(db.execute("select status, count(*) from tmaf_run group by status").fetchall())
    return {"placement": " ".join(placement), "exit_code": done.returncode, "wall_s": wall, "runs": statuses,
            "tail": (done.stdout + done.stderr).strip().splitlines()[-3:]}


def run_gpu_check(out: Path, device: str = "cuda", budget_s: float = 480.0, quick: bool = False,
                  sections: list[str] | None = None) -> dict[str, Any]:
    """Run the sections (module docstring) within `budget_s` seconds and write the JSON to `out`."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("bench gpu: CUDA is not available here (use --device cpu to run the CPU stand-in)")
    deadline = time.monotonic() + budget_s
    def left() -> float:
        return deadline - time.monotonic()

    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "machine": lambda: machine(device),
        "cuda_tests": lambda: cuda_tests(max(30.0, min(left(), 240.0))),
        "kernel_agreement": lambda: kernel_agreement(device, quick),
        "packed": lambda: packed(device, quick),
        "bench_activations": lambda: bench_activations_on(device, quick),
        "bench_pack": lambda: bench_pack_on(device, quick),
        "cifar_epoch": lambda: cifar_epoch(device, quick),
        "two_gpu_study": lambda: two_gpu_study(device, quick, max(30.0, left())),
    }
    unknown = sorted(set(sections or []) - set(steps))
    if unknown:
        raise InputError(f"bench gpu: unknown section(s) {unknown}; choose from: {', '.join(steps)}")
    report: dict[str, Any] = {"device": device, "quick": quick, "budget_s": budget_s, "sections": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, step in steps.items():
        if sections and name not in sections and name != "machine":
            continue
        if name != "machine" and left() < (1 if quick else NEEDS_S[name]):  # (the machine record always)
            report["sections"][name] = {"status": f"skipped: {left():.0f} s left of the {budget_s:.0f} s budget"}
        else:
            t0 = time.perf_counter()
            try:
                result = step()
                result.setdefault("status", "ok")
            except Exception as exc:  # noqa: BLE001 (any failure is recorded; the other sections still run)
                result = {"status": f"error: {type(exc).__name__}: {exc}"[:500],
                          "traceback": traceback.format_exc().splitlines()[-6:]}
            result["seconds"] = round(time.perf_counter() - t0, 2)
            report["sections"][name] = result
        report["wall_s"] = round(budget_s - left(), 2)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        os.replace(tmp, out)
    return report
