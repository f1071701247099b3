"""`tmafbench study run|cells|worker|list|status|show|delete`: parse, then call tmafbench.study."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from tmafbench.cli.common import App, counts_detail, exit_for_outcome, progress_bar, resolve_storage

study_app = App(help="Run studies (a grid of cells from a TOML file) and inspect them.")

StorageOpt = typer.Option(None, "--storage", help="Database URL (default: $TMAFBENCH_STORAGE, else sqlite:///tmafbench.db).")
SetOpt = typer.Option(None, "--set", help="Override a study-file key: --set defaults.training.epochs=3 (repeatable).")
HeartbeatOpt = typer.Option(10.0, "--heartbeat", help="Seconds between a running worker's heartbeats.")
GraceOpt = typer.Option(60.0, "--grace", help="A run without heartbeat for this many seconds is taken as dead and its cell retried (at least twice --heartbeat).")

console = Console(stderr=True)


def _cells_table(cells: list[Any], limit: int) -> Table:
    table = Table(title=f"{len(cells)} cells")
    for col in ("#", "hash", "task", "activation", "grid", "depth", "width", "other axes", "seed"):
        table.add_column(col)
    common = {"task", "activation", "grid", "intervals", "depth", "width", "seed"}
    for i, c in enumerate(cells[:limit]):
        other = " ".join(f"{k}={v}" for k, v in c.axes.items() if k not in common)
        table.add_row(str(i), c.config_hash, c.axes["task"], c.activation, c.grid or "-",
                      str(c.axes.get("depth", "-")), str(c.axes.get("width", "-")), other, str(c.axes["seed"]))
    if len(cells) > limit:
        table.caption = f"... and {len(cells) - limit} more (--limit)"
    return table


def _load(spec_path: str, overrides: list[str] | None):
    """(TunedStudy, cells): a file with [tune] is accepted too (tmafbench/study/tune_spec.py)."""
    from tmafbench.study.cells import expand
    from tmafbench.study.tune_spec import load_tuned_spec

    tuned = load_tuned_spec(spec_path, overrides or [])
    return tuned, expand(tuned.spec)


def _show_cells(tuned: Any, cells: list[Any], limit: int) -> None:
    Console(width=160).print(_cells_table(cells, limit))
    if tuned.tune is not None:
        from tmafbench.cli import tuning

        console.print(tuning.describe(tuned))


def cells_cmd(spec_path: str = typer.Argument(..., help="Study file (TOML)."), set_: Optional[list[str]] = SetOpt,
              limit: int = typer.Option(200, help="Show at most this many rows.")) -> None:
    """Validate a study file and show its expanded cells; runs and writes nothing."""
    tuned, cells = _load(spec_path, set_)
    _show_cells(tuned, cells, limit)


class ProgressView:
    """Cells done / running / failed / pending with an ETA, drawn by rich."""

    def __init__(self, total: int):
        self.progress = progress_bar(console)
        self.task = self.progress.add_task("cells", total=total, detail="")

    def __call__(self, counts: Any, eta_s: float | None) -> None:
        eta = "ETA --" if eta_s is None else f"ETA {eta_s / 60:.1f} min" if eta_s >= 60 else f"ETA {eta_s:.0f} s"
        detail = f"{counts_detail(counts)}  {eta}"
        self.progress.update(self.task, completed=counts.completed + counts.failed, detail=detail)


def _run_with_progress(info: Any, url: str, devices: list[str], options: Any) -> Any:
    from tmafbench.store.database import Database
    from tmafbench.store.repository import Repository
    from tmafbench.study.scheduler import run_local

    db = Database(url)
    total = Repository(db).counts(info.id, info.max_retries).total
    db.dispose()
    view = ProgressView(total)
    with view.progress:
        return run_local(info, url, devices, options, progress=view)


def _report(outcome: Any, name: str) -> None:
    c = outcome.counts
    console.print(f"study {name!r}: {c.completed}/{c.total} cells done ({c.diverged} diverged), "
                  f"{c.failed} failed, {c.pending + c.running} left; {outcome.wall_s:.1f} s")
    exit_for_outcome(console, outcome.exit_codes, outcome.interrupted, c.done)


def run_cmd(
    spec_path: str = typer.Argument(..., help="Study file (TOML)."),
    set_: Optional[list[str]] = SetOpt,
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Local worker processes (default: 1, or one per GPU)."),
    devices: str = typer.Option("auto", "--devices", help="auto | cpu | cuda:0,cuda:1,... (one worker per GPU)."),
    storage: Optional[str] = StorageOpt,
    new_name: Optional[str] = typer.Option(None, "--new-name", help="Run the file as a new study of this name."),
    force: bool = typer.Option(False, "--force", help=(
        "When the study exists with other cells: keep the results of the cells that are in both designs, "
        "DELETE the cells (and their runs) that are no longer in the file, add the new cells, and record "
        "the new spec.")),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and show the cells; write nothing."),
    heartbeat: float = HeartbeatOpt,
    grace: float = GraceOpt,
) -> None:
    """Create (or resume) a study from a TOML file and run every cell with local workers."""
    from tmafbench.store.database import redact
    from tmafbench.study.scheduler import WorkerOptions, prepare_study, resolve_devices

    tuned, cells = _load(spec_path, set_)
    spec = tuned.spec
    if dry_run:
        _show_cells(tuned, cells, 200)
        return
    options = WorkerOptions(heartbeat_s=heartbeat, grace_s=grace)  # checked before anything is written
    device_list = resolve_devices(devices, workers)
    url = resolve_storage(storage)
    if tuned.tune is not None:  # tune every group with the same budget, then evaluate on fresh seeds
        from tmafbench.cli import tuning

        tuning.run(tuned, url, device_list, options, new_name=new_name, force=force)
        return
    info = prepare_study(spec, url, new_name=new_name, force=force)
    console.print(f"{info.message} in {redact(url)}; {len(device_list)} worker(s) on {', '.join(sorted(set(device_list)))}")
    outcome = _run_with_progress(info, url, device_list, options)
    _report(outcome, info.name)


def worker_cmd(
    name: str = typer.Argument(..., help="Study name (as in `tmafbench study list`)."),
    storage: Optional[str] = StorageOpt,
    workers: int = typer.Option(1, "--workers", "-w", help="Worker processes on this machine."),
    devices: str = typer.Option("auto", "--devices", help="auto | cpu | cuda:0,cuda:1,..."),
    heartbeat: float = HeartbeatOpt,
    grace: float = GraceOpt,
) -> None:
    """Join a running study (e.g. from another machine, against one PostgreSQL URL)."""
    from tmafbench.store.database import Database
    from tmafbench.store.repository import Repository
    from tmafbench.study.scheduler import StudyInfo, WorkerOptions, resolve_devices

    options = WorkerOptions(heartbeat_s=heartbeat, grace_s=grace)
    url = resolve_storage(storage)
    db = Database(url, must_exist=True)
    try:
        db.check_schema()
        study = Repository(db).require_study(name)
    finally:
        db.dispose()
    device_list = resolve_devices(devices, workers)
    if study.kind == "eval":  # a tuned study: both phases
        from tmafbench.cli import tuning

        tuning.worker(name, url, device_list, options)
        return
    info = StudyInfo(study.id, study.name, int(study.spec.get("max_retries", 2)), created=False)
    outcome = _run_with_progress(info, url, device_list, options)
    _report(outcome, name)


def _repo(storage: str | None):
    from tmafbench.store.database import Database
    from tmafbench.store.repository import Repository

    db = Database(resolve_storage(storage), must_exist=True)
    db.check_schema()
    return db, Repository(db)


def list_cmd(storage: Optional[str] = StorageOpt) -> None:
    """List the studies in the database with their progress."""
    db, repo = _repo(storage)
    table = Table(title=f"studies in {db.safe_url}")
    names = repo.study_names()
    for col in ("name", "kind", "cells", "done", "running", "failed", "pending", "created"):
        table.add_column(col, no_wrap=True)
    for name in names:
        study = repo.get_study(name)
        c = repo.counts(study.id, int(study.spec.get("max_retries", 2)))
        table.add_row(name, study.kind, str(c.total), str(c.completed), str(c.running), str(c.failed),
                      str(c.pending), f"{study.created_at:%Y-%m-%d %H:%M}")
    db.dispose()
    # Whole names are what the other commands take: widen past a narrow terminal rather than cut them.
    console = Console()
    natural = Measurement.get(console, console.options.update(width=10_000), table).maximum
    Console(width=max(console.width, natural)).print(table)


def status_cmd(name: str = typer.Argument(...), storage: Optional[str] = StorageOpt,
               as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON.")) -> None:
    """Cells done / running / failed / pending of one study (and its tuning slots, for a tuned study)."""
    db, repo = _repo(storage)
    try:
        data = repo.study_status(name)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(data))
        return
    tuning = data.pop("tuning", None)
    typer.echo("  ".join(f"{k}={v}" for k, v in data.items()))
    if tuning is not None:
        typer.echo("tuning slots: " + "  ".join(f"{k}={v}" for k, v in tuning.items()))


def show_cmd(name: str = typer.Argument(...), storage: Optional[str] = StorageOpt) -> None:
    """The study's provenance and spec, and a summary per group."""
    db, repo = _repo(storage)
    study = repo.require_study(name)
    out = Console()
    out.print(f"[bold]{study.name}[/bold] ({study.kind}) {study.description}")
    out.print(f"spec hash {study.spec_hash}  tmafbench {study.tmafbench_version}  commit {study.git_commit or '-'}  "
              f"created {study.created_at:%Y-%m-%d %H:%M} UTC")
    rows = repo.group_summary(study.id)
    db.dispose()
    table = Table()
    for col in ("group", "cells", "completed runs", "metric", "mean"):
        table.add_column(col)
    for label, cells, runs, metric_name, mean in rows:
        table.add_row(label, str(cells), str(runs), metric_name or "-", "-" if mean is None else f"{mean:.4g}")
    out.print(table)


def delete_cmd(name: str = typer.Argument(...), storage: Optional[str] = StorageOpt,
               yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete a study: its cells, runs and metrics, and its Optuna study."""
    from tmafbench.store.database import redact
    from tmafbench.study.scheduler import delete_study

    url = resolve_storage(storage)
    if not yes and not typer.confirm(f"delete study {name!r} and all its results from {redact(url)}?"):
        typer.echo("not deleted")
        raise typer.Exit(1)
    delete_study(name, url)
    from tmafbench.cli.tuning import delete_optuna_groups

    delete_optuna_groups(name, url)  # a tuned study's per-group Optuna studies (none otherwise)
    typer.echo(f"deleted study {name!r}")


def register(app: Any) -> None:
    study_app.command("run")(run_cmd)
    study_app.command("cells")(cells_cmd)
    study_app.command("worker")(worker_cmd)
    study_app.command("list")(list_cmd)
    study_app.command("status")(status_cmd)
    study_app.command("show")(show_cmd)
    study_app.command("delete")(delete_cmd)
    app.add_typer(study_app, name="study")
    try:
        from tmafbench.cli.bench import bench_app
    except ImportError:  # the bench commands are optional
        return
    _register_bench(bench_app)


def _register_bench(bench_app: Any) -> None:
    """`tmafbench bench scheduler`; the heavy imports happen only when it runs."""

    @bench_app.command("scheduler")
    def scheduler_cmd(
        storage: str = typer.Option("sqlite", "--storage", help="'sqlite' (a temporary file) or a PostgreSQL server URL; a fresh database is made and dropped per run."),
        workers: int = typer.Option(4, "--workers", help="Workers for the throughput run."),
        trials: int = typer.Option(200, "--trials", help="Near-instant trials for the throughput run."),
        what: Optional[list[str]] = typer.Option(None, "--run", help="throughput | kill | speedup (repeatable; default all)."),
    ) -> None:
        """Scheduler figures: lock errors, duplicates, overhead; SIGKILL recovery; 2-vs-1 worker speed-up."""
        from tmafbench.study.benchmark import run_benchmarks

        typer.echo(json.dumps(run_benchmarks(storage, workers, trials, what or ["throughput", "kill", "speedup"]),
                              indent=2, default=str))
