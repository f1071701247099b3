"""`tmafbench results query|export`: read the results database (read-only for queries)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from tmafbench.cli.common import App, resolve_storage

results_app = App(help="Query and export results (read-only).")

StorageOpt = typer.Option(None, "--storage", help="Database URL (default: $TMAFBENCH_STORAGE, else sqlite:///tmafbench.db).")


def _print_frame(frame: Any, fmt: str) -> None:
    if fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    elif fmt == "table":
        table = Table(show_lines=False)
        for col in frame.columns:
            table.add_column(str(col))
        for row in frame.itertuples(index=False):
            table.add_row(*("" if v is None else str(v) for v in row))
        Console(width=200).print(table)
    else:
        raise ValueError(f"--format must be table, csv or json, got {fmt!r}")


def query_cmd(sql: str = typer.Argument(..., help="One SQL statement, e.g. \"select * from tmaf_cell limit 5\"."),
              storage: Optional[str] = StorageOpt,
              fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json")) -> None:
    """Run SQL on a read-only connection (statements that write are refused)."""
    from tmafbench.store.export import query

    if fmt not in ("table", "csv", "json"):
        raise ValueError(f"--format must be table, csv or json, got {fmt!r}")
    _print_frame(query(resolve_storage(storage), sql), fmt)


def export_cmd(study: str = typer.Option(..., "--study", help="Study name."),
               fmt: str = typer.Option("csv", "--format", "-f", help="csv | json | parquet"),
               out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: stdout; parquet needs --out)."),
               storage: Optional[str] = StorageOpt) -> None:
    """One tidy row per run: config columns, run columns and final metrics."""
    from tmafbench.store.export import export_runs

    frame = export_runs(resolve_storage(storage), study, fmt, out)
    if out is None:
        _print_frame(frame, fmt)
    else:
        typer.echo(f"wrote {len(frame)} runs to {out}", err=True)


def ship_cmd(studies: list[str] = typer.Argument(..., help="Study names (those a report shows together)."),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: reports/<study names joined by +>)."),
             max_epochs: int = typer.Option(200, "--max-epochs",
                                            help="Epochs kept per run for the curves, evenly spaced (0: every epoch)."),
             storage: Optional[str] = StorageOpt) -> None:
    """Write the raw record beside a report: results.db.gz (the studies' rows a report draws) and runs.csv."""
    from tmafbench.store.ship import ship_studies

    shipment = ship_studies(resolve_storage(storage), studies, out or Path("reports") / "+".join(studies), max_epochs)
    typer.echo(f"wrote {shipment.summary()}")


def register(app: Any) -> None:
    results_app.command("query")(query_cmd)
    results_app.command("export")(export_cmd)
    results_app.command("ship")(ship_cmd)
    app.add_typer(results_app, name="results")
