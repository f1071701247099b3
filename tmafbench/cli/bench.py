"""`tmafbench bench activations|epoch|step|pack|scheduler`: benchmarks that print figures (tmafbench/bench/).

Every command parses its options and calls one function of `tmafbench.bench`; the heavy imports
(torch) happen only when a command runs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table

from tmafbench.cli.common import App, model_params, parse_params

if TYPE_CHECKING:
    from tmafbench.bench.activations import BenchRow as ActivationRow
    from tmafbench.bench.training import BenchRow

bench_app = App(help="Benchmarks that print figures: activations, a training epoch or step, packing, the scheduler.")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _table(rows: list[ActivationRow], title: str) -> Table:
    table = Table(title=title)
    for column in ("activation", "grid", "shape", "kernel", "median ms", "IQR ms", "saved MiB", "peak MiB", "/relu", "/prelu"):
        table.add_column(column, justify="left" if column in ("activation", "grid", "shape", "kernel") else "right")
    for r in rows:
        table.add_row(
            r.name, r.grid or "-", r.shape, r.backend, f"{r.median_ms:.2f}", f"{r.q1_ms:.2f}-{r.q3_ms:.2f}",
            _mib(r.saved_bytes), _mib(r.peak_bytes), f"{r.vs_relu:.2f}", f"{r.vs_prelu:.2f}",
        )
    return table


@bench_app.command("activations")
def activations_cmd(
    names: Optional[list[str]] = typer.Argument(None, help="Activations to time (default: all)."),
    intervals: Optional[list[int]] = typer.Option(
        None, "--intervals", help="Interval counts for grid activations (default 10 and 100); repeatable."),
    shapes: Optional[list[str]] = typer.Option(
        None, "--shape", help="Input shape like 4096x1024 (default: the three standard shapes); repeatable."),
    repeats: int = typer.Option(10, "--repeats", help="Timed forward+backward calls per row."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed calls before timing."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: torch's setting)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
) -> None:
    """Time forward+backward of activations; memory saved for backward and peak; ratios to relu and prelu."""
    import torch

    from tmafbench.bench.activations import DEFAULT_INTERVALS, DEFAULT_SHAPES, bench_activations, parse_shape

    parsed = [parse_shape(s) for s in shapes] if shapes else list(DEFAULT_SHAPES)
    rows = bench_activations(names or None, parsed, intervals or DEFAULT_INTERVALS, repeats, warmup, threads)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    title = f"forward+backward, float32, {threads or torch.get_num_threads()} threads, median of {repeats} after {warmup} warm-up"
    Console(width=160).print(_table(rows, title))


@bench_app.command("epoch")
def bench_epoch(
    task: str = typer.Option("mnist", "--task"),
    model: str = typer.Option("mlp", "--model"),
    activation: Optional[list[str]] = typer.Option(None, "--activation", "-a", help="repeatable; first is the baseline"),
    depth: Optional[int] = typer.Option(None), width: Optional[int] = typer.Option(None),
    act_param: Optional[list[str]] = typer.Option(None, "--act-param"),
    task_param: Optional[list[str]] = typer.Option(None, "--task-param"),
    model_param: Optional[list[str]] = typer.Option(None, "--model-param"),
    batch_size: int = typer.Option(64, "--batch-size", "-b"),
    repeats: int = typer.Option(3, help="epochs timed per activation; the median is shown"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    device: str = typer.Option("cpu"),
) -> None:
    """Time one training epoch per activation (median of --repeats) and the ratio to the first."""
    from tmafbench.bench.training import bench_epochs

    rows = bench_epochs(task, model, activation or ["relu", "tmaf"], task_params=parse_params(task_param, "--task-param"),
                        model_params=model_params(depth, width, model_param),
                        act_params=parse_params(act_param, "--act-param"), batch_size=batch_size,
                        repeats=repeats, threads=threads, device=device)
    print_bench(f"one epoch: {task} / {model}, batch {batch_size}", rows)


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
    for column in ("activation", "median s", "min s", "max s", "samples/s", "ratio", "params"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.activation, f"{row.median_s:.4f}", f"{min(row.times_s):.4f}", f"{max(row.times_s):.4f}",
                      f"{row.samples_per_s:,.0f}", f"{row.ratio:.2f}x", f"{row.num_params:,}")
    Console(width=120).print(table)


@bench_app.command("pack")
def bench_pack(
    setting: Optional[list[str]] = typer.Option(None, "--setting", help="table-3-2 | sine-sum | mnist (repeatable; default all)."),
    activation: Optional[list[str]] = typer.Option(None, "--activation", "-a", help="repeatable (default: relu and tmaf)."),
    pack: int = typer.Option(16, "--pack", help="Cells per pack."),
    epochs: int = typer.Option(1, "--epochs", help="Epochs every cell trains."),
    processes: Optional[int] = typer.Option(None, "--processes", help="Worker processes, one thread each (default: one per core)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Cells per hour: packs of K cells against one cell at a time, on the same cores (MNIST needs its data)."""
    from tmafbench.bench.packing import bench_pack as run

    figures = run(setting or ["table-3-2", "sine-sum", "mnist"], activation or ["relu", "tmaf"], pack, epochs, processes)
    if as_json:
        typer.echo(json.dumps([{**f.__dict__, "alone_per_hour": f.alone_per_hour, "packed_per_hour": f.packed_per_hour,
                                "speedup": f.speedup} for f in figures], indent=2))
        return
    table = Table(title=f"cells per hour on {figures[0].processes} process(es), one thread each, {epochs} epoch(s) a cell")
    for column in ("setting", "activation", "cells", "one at a time", f"packs of {pack}", "speed-up"):
        table.add_column(column, justify="left" if column in ("setting", "activation") else "right")
    for f in figures:
        table.add_row(f.setting, f.activation, str(f.cells), f"{f.alone_per_hour:,.0f}", f"{f.packed_per_hour:,.0f}",
                      f"{f.speedup:.1f}x")
    Console(width=120).print(table)


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
