"""`tmafbench report build|benchmark`: parse options, then call tmafbench.reports.render."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tmafbench.cli.common import App, resolve_storage

report_app = App(help="Reports from the results database: tables, statistics across seeds, figures.")


@report_app.command("build")
def build(
    studies: list[str] = typer.Argument(..., help="Study names (several are reported together)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Database URL (default: TMAFBENCH_STORAGE or sqlite:///tmafbench.db)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: reports/<study names joined by +>)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Activation label to compare against (default: relu when present)."),
    formats: Optional[str] = typer.Option(
        None, "--format", help="Comma list of md,html,tex,csv,png,svg,pdf (default: md,html,tex,csv,png)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Final metric to report (default: the task's primary metric)."),
    notes: Optional[Path] = typer.Option(None, "--notes", help=(
        "A Markdown file of your own notes (say, how the numbers compare with a paper), shown under the header.")),
    self_contained: bool = typer.Option(False, "--self-contained", help=(
        "Embed the figures in index.html (one file to mail) instead of linking the PNG files beside it.")),
) -> None:
    """Write a report folder for STUDY... from the database; never trains."""
    from tmafbench.reports.render import build_report, parse_formats

    report = build_report(resolve_storage(storage), studies, out=out, baseline=baseline,
                          formats=parse_formats(formats), metric=metric, notes=notes, self_contained=self_contained)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"wrote {len(report.files)} files to {report.folder} in {report.seconds:.1f} s: {report.summary()}")


@report_app.command("benchmark")
def benchmark(
    activations: int = typer.Option(5, help="Activations in the synthetic study."),
    ns: int = typer.Option(5, help="Values of the sweep axis n."),
    seeds: int = typer.Option(20, help="Seeds per group."),
    epochs: int = typer.Option(20, help="Epochs per run."),
    formats: Optional[str] = typer.Option(None, "--format", help="Formats to render (default: all defaults)."),
) -> None:
    """Time the rendering of a synthetic study (default 5 x 5 x 20 = 500 runs) in a temporary SQLite file."""
    from tmafbench.bench.reports import time_synthetic_report
    from tmafbench.reports.render import parse_formats

    timing = time_synthetic_report(activations, ns, seeds, epochs, parse_formats(formats))
    typer.echo(f"runs: {timing.runs}  epochs/run: {timing.epochs}  (database written in {timing.write_s:.1f} s)")
    typer.echo(f"report: {timing.files} files: {timing.summary}")
    typer.echo(f"render time: {timing.render_s:.2f} s")


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
