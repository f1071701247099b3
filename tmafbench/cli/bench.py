"""`tmafbench bench ...`: micro-benchmarks. Other modules may add commands to `bench_app`."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tmafbench.cli.common import App

bench_app = App(help="Micro-benchmarks (activations: forward+backward time and memory).")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _table(rows: list, title: str) -> Table:
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
    names: Optional[list[str]] = typer.Argument(None, help="Activations to time (default: all); NAME:key=value,... sets parameters of its own."),
    intervals: Optional[list[int]] = typer.Option(None, "--intervals", help="Interval counts for grid activations (default 10 and 100); repeatable."),
    shapes: Optional[list[str]] = typer.Option(None, "--shape", help="Input shape like 4096x1024 (default: the three standard shapes); repeatable."),
    repeats: int = typer.Option(10, "--repeats", help="Timed forward+backward calls per row."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed calls before timing."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: torch's setting)."),
    under_load: int = typer.Option(0, "--under-load", help="Also time every row beside N busy processes started for the run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the machine's record and the rows) instead of a table."),
) -> None:
    """Time forward+backward of activations; memory saved for backward and peak; ratios to relu and prelu."""
    import torch

    from tmafbench.activations.benchmark import (DEFAULT_INTERVALS, DEFAULT_SHAPES, bench_activations, machine_record,
                                                 parse_shape)

    from tmafbench.cli.common import parse_params

    parsed = [parse_shape(s) for s in shapes] if shapes else list(DEFAULT_SHAPES)
    # NAME:key=value,... gives one activation its own parameters (e.g. tmaf:train_breakpoints=true)
    specs = [(n.partition(":")[0], parse_params([p for p in n.partition(":")[2].split(",") if p.strip()], n))
             for n in names or []]
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


def register(app: typer.Typer) -> None:
    """Attach `tmafbench bench` to the main app."""
    app.add_typer(bench_app, name="bench")
