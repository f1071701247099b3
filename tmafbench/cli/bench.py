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
    intervals: Optional[list[int]] = typer.Option(None, "--intervals", help="Interval counts for grid activations (default 10 and 100); repeatable."),
    shapes: Optional[list[str]] = typer.Option(None, "--shape", help="Input shape like 4096x1024 (default: the three standard shapes); repeatable."),
    repeats: int = typer.Option(10, "--repeats", help="Timed forward+backward calls per row."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed calls before timing."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: torch's setting)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
) -> None:
    """Time forward+backward of activations; memory saved for backward and peak; ratios to relu and prelu."""
    import torch

    from tmafbench.activations.benchmark import DEFAULT_INTERVALS, DEFAULT_SHAPES, bench_activations, parse_shape

    parsed = [parse_shape(s) for s in shapes] if shapes else list(DEFAULT_SHAPES)
    rows = bench_activations(names or None, parsed, intervals or DEFAULT_INTERVALS, repeats, warmup, threads)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    title = f"forward+backward, float32, {threads or torch.get_num_threads()} threads, median of {repeats} after {warmup} warm-up"
    Console(width=160).print(_table(rows, title))


def register(app: typer.Typer) -> None:
    """Attach `tmafbench bench` to the main app."""
    app.add_typer(bench_app, name="bench")
