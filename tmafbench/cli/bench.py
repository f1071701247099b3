"""`tmafbench bench activations|epoch|step|pack|gpu|scheduler`: benchmarks that print figures (tmafbench/bench/).

Every command parses its options and calls one function of `tmafbench.bench`; the heavy imports
(torch) happen only when a command runs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from tmafbench.cli.common import App, model_params, parse_params

if TYPE_CHECKING:
    from tmafbench.bench.activations import BenchRow as ActivationRow
    from tmafbench.bench.training import BenchRow

bench_app = App(help="Benchmarks that print figures: activations, a training epoch or step, packing, the scheduler, the GPU path.")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _table(rows: list[ActivationRow], title: str) -> Table:
    table = Table(title=title)
    loaded = any(r.load for r in rows)
    columns = ["activation", "grid", "shape", "kernel", *(["load"] if loaded else []), "median ms", "IQR ms", "cpu ms",
               "saved MiB", "peak MiB", "/relu", "/prelu", "cpu /relu", *(["/unloaded"] if loaded else [])]
    for column in columns:
        table.add_column(column, justify="left" if column in ("activation", "grid", "shape", "kernel") else "right")
    for r in rows:
        table.add_row(
            r.name + "".join(f" {k}={v}" for k, v in r.params.items()), r.grid or "-", r.shape, r.backend,
            *([str(r.load)] if loaded else []), f"{r.median_ms:.2f}", f"{r.q1_ms:.2f}-{r.q3_ms:.2f}",
            f"{r.cpu_ms:.2f}" if r.cpu_ms is not None else "-", _mib(r.saved_bytes), _mib(r.peak_bytes),
            f"{r.vs_relu:.2f}", f"{r.vs_prelu:.2f}", f"{r.cpu_vs_relu:.2f}" if r.cpu_vs_relu else "-",
            *([f"{r.vs_unloaded:.2f}" if r.vs_unloaded else "-"] if loaded else []),
        )
    return table


@bench_app.command("activations")
def activations_cmd(
    names: Optional[list[str]] = typer.Argument(
        None, help="Activations to time (default: all); NAME:key=value,... sets parameters of its own."),
    intervals: Optional[list[int]] = typer.Option(
        None, "--intervals", help="Interval counts for grid activations (default 10 and 100); repeatable."),
    shapes: Optional[list[str]] = typer.Option(
        None, "--shape", help="Input shape like 4096x1024 (default: the three standard shapes); repeatable."),
    repeats: int = typer.Option(10, "--repeats", help="Timed forward+backward calls per row."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed calls before timing."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: torch's setting)."),
    under_load: int = typer.Option(0, "--under-load", help="Also time every row beside N busy processes started for the run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the machine's record and the rows) instead of a table."),
) -> None:
    """Time forward+backward of activations; memory saved for backward and peak; ratios to relu and prelu."""
    import torch

    from tmafbench.bench.activations import (DEFAULT_INTERVALS, DEFAULT_SHAPES, bench_activations, machine_record,
                                             parse_shape)

    parsed = [parse_shape(s) for s in shapes] if shapes else list(DEFAULT_SHAPES)
    # NAME:key=value,... gives one activation its own parameters (e.g. tmaf:train_breakpoints=true)
    specs = [activation_spec(n, "activation")[1:] for n in names or []]
    rows = bench_activations(specs or None, parsed, intervals or DEFAULT_INTERVALS, repeats, warmup, threads, under_load)
    if as_json:
        settings = {"repeats": repeats, "warmup": warmup, "under_load": under_load, "dtype": "float32"}
        typer.echo(json.dumps({"machine": machine_record(threads), "settings": settings, "rows": [r.to_dict() for r in rows]},
                              indent=2))
        return
    title = f"forward+backward, float32, {threads or torch.get_num_threads()} threads, median of {repeats} after {warmup} warm-up"
    if under_load:
        title += f"; then beside {under_load} busy processes"
    Console(width=200).print(_table(rows, title))


def activation_spec(text: str, label: str = "--activation") -> tuple[str, str, dict[str, Any]]:
    """'tmaf:intervals=100,train_breakpoints=true' -> (the text, 'tmaf', {'intervals': 100, 'train_breakpoints': True})."""
    name, _, rest = text.partition(":")
    return text, name.strip(), parse_params([p for p in rest.split(",") if p.strip()], f"{label} {text!r}")


@bench_app.command("epoch")
def bench_epoch(
    task: str = typer.Option("mnist", "--task"),
    model: str = typer.Option("mlp", "--model"),
    activation: Optional[list[str]] = typer.Option(None, "--activation", "-a", help="repeatable; first is the baseline; "
                                                   "NAME:key=value,... gives one its own parameters"),
    depth: Optional[int] = typer.Option(None), width: Optional[int] = typer.Option(None),
    act_param: Optional[list[str]] = typer.Option(None, "--act-param"),
    task_param: Optional[list[str]] = typer.Option(None, "--task-param"),
    model_param: Optional[list[str]] = typer.Option(None, "--model-param"),
    batch_size: int = typer.Option(64, "--batch-size", "-b"),
    repeats: int = typer.Option(3, help="epochs timed per activation; the median is shown"),
    threads: Optional[list[int]] = typer.Option(None, help="torch CPU threads; repeat it to time several counts"),
    warmup: int = typer.Option(1, "--warmup", help="untimed epochs per activation first"),
    under_load: int = typer.Option(0, "--under-load", help="run beside N busy processes started for the run"),
    device: str = typer.Option("cpu"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the machine's record and the rows) instead of a table."),
) -> None:
    """Time one training epoch per activation (median of --repeats, interleaved) and the ratio to the first."""
    from tmafbench.bench.training import bench_epochs

    task_params = parse_params(task_param, "--task-param")
    act_params = parse_params(act_param, "--act-param")
    models = model_params(depth, width, model_param)
    rows = bench_epochs(task, model, [activation_spec(a) for a in activation or ["relu", "tmaf"]], task_params=task_params,
                        model_params=models, act_params=act_params, batch_size=batch_size, repeats=repeats,
                        threads=threads, device=device, warmup=warmup, under_load=under_load)
    if as_json:
        from tmafbench.bench.activations import machine_record

        settings = {"task": task, "model": model, "task_params": task_params, "model_params": models, "act_params": act_params,
                    "batch_size": batch_size, "repeats": repeats, "warmup": warmup, "under_load": under_load, "device": device}
        typer.echo(json.dumps({"machine": machine_record(), "settings": settings, "rows": [r.to_dict() for r in rows]}, indent=2))
        return
    load = f", beside {under_load} busy processes" if under_load else ""
    print_bench(f"one epoch: {task} / {model}, batch {batch_size}{load}", rows)


@bench_app.command("step")
def bench_step(
    task: str = typer.Option("cifar10", "--task"),
    model: str = typer.Option("resnet18-cifar", "--model"),
    activation: Optional[list[str]] = typer.Option(None, "--activation", "-a", help="repeatable; first is the baseline"),
    act_param: Optional[list[str]] = typer.Option(None, "--act-param"),
    model_param: Optional[list[str]] = typer.Option(None, "--model-param"),
    batch_size: int = typer.Option(128, "--batch-size", "-b"),
    repeats: int = typer.Option(5, help="steps timed per activation after one warm-up; the median is shown"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    device: str = typer.Option("cpu"),
) -> None:
    """Time one forward+backward+SGD step on a random batch per activation, and the ratio to the first."""
    from tmafbench.bench.training import bench_steps

    rows = bench_steps(task, model, activation or ["relu", "tmaf"], model_params=parse_params(model_param, "--model-param"),
                       act_params=parse_params(act_param, "--act-param"), batch_size=batch_size, repeats=repeats,
                       threads=threads, device=device)
    print_bench(f"one step: {task} / {model}, batch {batch_size}", rows)


def print_bench(title: str, rows: list[BenchRow]) -> None:
    table = Table(title=title)
    for column in ("activation", "threads", "median s", "min s", "max s", "samples/s", "ratio", "params"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.activation, str(row.threads or "-"), f"{row.median_s:.4f}", f"{min(row.times_s):.4f}",
                      f"{max(row.times_s):.4f}", f"{row.samples_per_s:,.0f}", f"{row.ratio:.2f}x", f"{row.num_params:,}")
    Console(width=120).print(table)


@bench_app.command("pack")
def bench_pack(
    setting: Optional[list[str]] = typer.Option(None, "--setting", help="table-3-2 | sine-sum | mnist (repeatable; default all)."),
    activation: Optional[list[str]] = typer.Option(None, "--activation", "-a", help="repeatable (default: relu and tmaf)."),
    pack: int = typer.Option(16, "--pack", help="Cells per pack."),
    epochs: int = typer.Option(1, "--epochs", help="Epochs every cell trains."),
    processes: Optional[int] = typer.Option(None, "--processes", help="Worker processes, one thread each (default: one per core)."),
    vmap: bool = typer.Option(True, "--vmap/--no-vmap", help="Also time torch.func (vmap) ensembles of K."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (one process per GPU then: pass --processes)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Cells per hour: packs of K cells against one at a time and against vmap ensembles, on the same cores (MNIST needs its data)."""
    from tmafbench.bench.packing import bench_pack as run

    figures = run(setting or ["table-3-2", "sine-sum", "mnist"], activation or ["relu", "tmaf"], pack, epochs, processes,
                  device, vmap)
    if as_json:
        typer.echo(json.dumps([f.to_dict() for f in figures], indent=2))
        return
    table = Table(title=f"cells per hour on {figures[0].processes} process(es), one thread each, {epochs} epoch(s) a cell")
    for column in ("setting", "activation", "cells", "one at a time", f"packs of {pack}", "speed-up", f"vmap of {pack}",
                   "packed / vmap"):
        table.add_column(column, justify="left" if column in ("setting", "activation") else "right", overflow="fold")
    for f in figures:
        ensemble = (f"{f.vmap_per_hour:,.0f}", f"{f.packed_vs_vmap:.1f}x") if f.vmap_s else (f.vmap_error or "-", "-")
        table.add_row(f.setting, f.activation, str(f.cells), f"{f.alone_per_hour:,.0f}", f"{f.packed_per_hour:,.0f}",
                      f"{f.speedup:.1f}x", *ensemble)
    Console(width=140).print(table)


@bench_app.command("gpu")
def bench_gpu(
    out: str = typer.Option("gpu-check.json", "--out", help="Where to write the JSON (rewritten after every section)."),
    device: str = typer.Option("cuda", "--device", help="cuda, or cpu for the CPU stand-in of every section that has one."),
    budget: float = typer.Option(480.0, "--budget", help="Seconds for the whole run; sections that do not fit are skipped."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes: checks the code paths in seconds (the tests use it)."),
    section: Optional[list[str]] = typer.Option(None, "--section", help="Run only these sections (repeatable)."),
) -> None:
    """Prove the GPU path: CUDA tests, kernel agreement, packed vs unpacked, bench activations and pack, a ResNet18 epoch, a 2-GPU study."""
    from pathlib import Path

    from tmafbench.bench.gpu import run_gpu_check

    report = run_gpu_check(Path(out), device=device, budget_s=budget, quick=quick, sections=section or None)
    for name, result in report["sections"].items():
        typer.echo(f"{name:18s} {result['status']}" + (f"  ({result['seconds']} s)" if "seconds" in result else ""))
    typer.echo(f"wrote {out} ({report['wall_s']} s)")


@bench_app.command("scheduler")
def scheduler_cmd(
    storage: str = typer.Option("sqlite", "--storage", help=(
        "'sqlite' (a temporary file) or a PostgreSQL server URL; a fresh database is made and dropped per run.")),
    workers: int = typer.Option(4, "--workers", help="Workers for the throughput run."),
    trials: int = typer.Option(200, "--trials", help="Near-instant trials for the throughput run."),
    what: Optional[list[str]] = typer.Option(None, "--run", help="throughput | kill | speedup (repeatable; default all)."),
) -> None:
    """Scheduler figures: lock errors, duplicates, overhead; SIGKILL recovery; 2-vs-1 worker speed-up."""
    from tmafbench.bench.scheduler import run_benchmarks

    typer.echo(json.dumps(run_benchmarks(storage, workers, trials, what or ["throughput", "kill", "speedup"]),
                          indent=2, default=str))


def register(app: typer.Typer) -> None:
    """Attach `tmafbench bench` to the main app."""
    app.add_typer(bench_app, name="bench")
