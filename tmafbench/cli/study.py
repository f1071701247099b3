"""`tmafbench study run|cells|worker|list|status|show|delete`: parse, call tmafbench.study.api, print."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from tmafbench.cli.common import EXIT_REFUSED, App, resolve_storage
from tmafbench.core import Ending

if TYPE_CHECKING:
    from rich.progress import TaskID

    from tmafbench.study.cells import CellPlan
    from tmafbench.study.design import StudyDesign
    from tmafbench.study.lifecycle import StudyInfo
    from tmafbench.study.local import PhaseCounts, StudyOutcome
    from tmafbench.study.worker import WorkerOptions

# The exit status of `study run` and `study worker` for each way a run ends, and what it means (shown
# in their --help; README.md's "exit status" table says the same).
EXIT_STATUSES: tuple[tuple[int, Ending | None, str], ...] = (
    (0, Ending.DONE, "every cell done (completed or diverged)"),
    (EXIT_REFUSED, None, "refused before anything ran (bad input, missing data, devices this machine lacks, a "
                         "database that cannot be reached or written)"),
    (3, Ending.CELLS_FAILED, "every cell is final but some failed for good (max_retries failures or max_crashes "
                             "lost workers)"),
    (4, Ending.STOPPED, "stopped early with cells left (database away longer than --db-patience, disk full, a "
                        "worker died): run the same command again to resume"),
    (130, Ending.INTERRUPTED, "interrupted (Ctrl-C, SIGTERM)"),
)
EXIT_CODES = {ending: code for code, ending, _meaning in EXIT_STATUSES if ending is not None}
EXIT_STATUS_HELP = "Exit status: " + "; ".join(f"{code} {meaning}" for code, _e, meaning in EXIT_STATUSES) + "."

study_app = App(help="Run studies (a grid of cells from a TOML file, optionally tuned first) and inspect them.")

StorageOpt = typer.Option(None, "--storage", help="Database URL (default: $TMAFBENCH_STORAGE, else sqlite:///tmafbench.db).")
SetOpt = typer.Option(None, "--set", help="Override a study-file key: --set defaults.training.epochs=3 (repeatable).")
HeartbeatOpt = typer.Option(10.0, "--heartbeat", help="Seconds between a running worker's heartbeats.")
GraceOpt = typer.Option(60.0, "--grace", help=(
    "A run without heartbeat for this many seconds is taken as dead and its cell retried (at least twice --heartbeat)."))
DevicesOpt = typer.Option("auto", "--devices", help="auto | cpu | cuda:0,cuda:1,... (one worker per GPU).")
PackOpt = typer.Option("1", "--pack", help=(
    "Cells a worker trains together as one packed model (small MLPs: several times the cells per hour): "
    "K, or auto (16 on a CPU, 64 on a GPU). Cells that cannot pack train alone."))
PatienceOpt = typer.Option(300.0, "--db-patience", help=(
    "Seconds a worker waits for a database that stopped answering (a restart, a failover, a network blink) "
    "before it stops; training goes on meanwhile and finished results are written once it is back."))

console = Console(stderr=True, soft_wrap=True)  # whole lines when the output is not a terminal


@contextlib.contextmanager
def phases_progress(console: Console) -> Iterator[Callable[[PhaseCounts, float | None], None]]:
    """A rich progress display with one bar per phase of a study (cells; or tuning slots, then
    evaluation cells); yields the `progress(phases, eta_s)` callback the study runner calls. The
    display starts with the first update, so an error before any work prints its line alone."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console)
    tasks: dict[str, TaskID] = {}

    def update(phases: PhaseCounts, eta_s: float | None) -> None:
        if not tasks:
            bars.start()
        for phase, counts in phases:
            if phase.label not in tasks:
                tasks[phase.label] = bars.add_task(phase.label, total=None, detail="")
            crashed = f"  crashed {counts.crashed}" if counts.crashed else ""
            detail = (f"done {counts.completed}  running {counts.running}  failed {counts.failed}{crashed}  "
                      f"pending {counts.pending}")
            if not counts.done and eta_s is not None:
                detail += f"  ETA {eta_s / 60:.1f} min" if eta_s >= 60 else f"  ETA {eta_s:.0f} s"
            bars.update(tasks[phase.label], total=counts.total, completed=counts.finished, detail=detail)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()


def exit_for_outcome(console: Console, outcome: StudyOutcome, resume_hint: str = "run the same command again to resume") -> None:
    """After local workers: say why the run ended unless every cell is done, and exit with its code."""
    crashed = [code for code in outcome.exit_codes if code not in (0, None)]
    if crashed and not outcome.interrupted:
        console.print(f"{len(crashed)} worker process(es) exited with an error (codes {crashed}); see the messages above")
    ending = outcome.ending
    if ending is Ending.INTERRUPTED:
        console.print(f"interrupted: {resume_hint}")
    elif ending is Ending.STOPPED:
        console.print(f"stopped early: {outcome.stopped or 'cells are left'}; {resume_hint}", markup=False)
    elif ending is Ending.CELLS_FAILED:
        console.print(f"some cells failed for good; `tmafbench study status {outcome.name}` counts them and "
                      "`tmafbench results export` gives their errors", markup=False)
    if EXIT_CODES[ending]:
        raise typer.Exit(EXIT_CODES[ending])


def _cells_table(cells: list[CellPlan], limit: int) -> Table:
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


def _show_cells(design: StudyDesign, limit: int) -> None:
    from tmafbench.study.api import describe_tuning

    Console(width=160).print(_cells_table(design.cells, limit))
    if design.tuned:
        console.print(describe_tuning(design))


def cells_cmd(spec_path: str = typer.Argument(..., metavar="STUDY_FILE", help="Study file (TOML)."),
              set_: Optional[list[str]] = SetOpt,
              limit: int = typer.Option(200, help="Show at most this many rows.")) -> None:
    """Validate a study file and show its expanded cells; runs and writes nothing."""
    from tmafbench.study.api import cells

    _show_cells(cells(spec_path, set_), limit)


def _options(heartbeat: float, grace: float, pack: str, patience: float) -> WorkerOptions:
    from tmafbench.study.worker import WorkerOptions

    size: int | str = int(pack) if pack.strip().isdigit() else pack.strip()
    return WorkerOptions(heartbeat_s=heartbeat, grace_s=grace, pack=size,
                         db_patience_s=patience)  # checked before anything is written


def _event(line: str) -> None:
    """A worker's log line (a database outage, an abandoned cell), printed above the progress bars."""
    console.print(line, markup=False, highlight=False)


def _announcer(url: str) -> Callable[[StudyInfo, list[str]], None]:
    """Prints what the study is and who works on it, once it is ready."""
    from tmafbench.store.database import redact

    def announce(info: StudyInfo, devices: list[str]) -> None:
        if not devices:  # nothing to run
            console.print(info.message)
            return
        console.print(f"{info.message} in {redact(url)}")
        console.print(f"{len(devices)} worker(s) on {', '.join(sorted(set(devices)))}")

    return announce


def _report(outcome: StudyOutcome) -> None:
    parts = []
    for phase, c in outcome.phases:
        crashed = f", {c.crashed} crashed" if c.crashed else ""
        parts.append(f"{c.completed}/{c.total} {phase.label} done ({c.diverged} diverged), {c.failed} failed{crashed}")
    left = sum(c.pending + c.running for _p, c in outcome.phases)
    console.print(f"study {outcome.name!r}: {'; '.join(parts)}, {left} left; {outcome.wall_s:.1f} s{_faults(outcome)}")
    exit_for_outcome(console, outcome)


def _faults(outcome: StudyOutcome) -> str:
    """What the workers rode out, when they had to: database outages, abandoned cells, late results."""
    workers = outcome.workers
    waited, reconnects = max((w.db_wait_s for w in workers), default=0.0), sum(w.reconnects for w in workers)
    notes = [f"waited {waited:.1f} s for the database ({reconnects} calls retried)"] if reconnects else []
    if abandoned := sum(w.abandoned for w in workers):
        notes.append(f"{abandoned} cell(s) abandoned after their run was taken for dead")
    if redundant := sum(w.redundant for w in workers):
        notes.append(f"{redundant} late result(s) recorded as redundant")
    return "; " + "; ".join(notes) if notes else ""


def run_cmd(
    spec_path: str = typer.Argument(..., metavar="STUDY_FILE", help="Study file (TOML)."),
    set_: Optional[list[str]] = SetOpt,
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Local worker processes (default: 1, or one per GPU)."),
    devices: str = DevicesOpt,
    storage: Optional[str] = StorageOpt,
    new_name: Optional[str] = typer.Option(None, "--new-name", help="Run the file as a new study of this name."),
    force: bool = typer.Option(False, "--force", help=(
        "When the study exists with other cells: keep the results of the cells that are in both designs, "
        "DELETE the cells (and their runs) that are no longer in the file, add the new cells, and record "
        "the new spec.")),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and show the cells; write nothing."),
    heartbeat: float = HeartbeatOpt,
    grace: float = GraceOpt,
    pack: str = PackOpt,
    db_patience: float = PatienceOpt,
) -> None:
    """Create (or resume) a study from a TOML file and run every cell with local workers."""
    from tmafbench.study import api

    if dry_run:
        _show_cells(api.cells(spec_path, set_), 200)
        return
    url = resolve_storage(storage)
    with phases_progress(console) as progress:
        outcome = api.run(spec_path, set_, url=url, devices=devices, workers=workers, new_name=new_name, force=force,
                          options=_options(heartbeat, grace, pack, db_patience), on_ready=_announcer(url),
                          progress=progress, on_event=_event)
    _report(outcome)


def worker_cmd(
    name: str = typer.Argument(..., help="Study name (as in `tmafbench study list`)."),
    storage: Optional[str] = StorageOpt,
    workers: int = typer.Option(1, "--workers", "-w", help="Worker processes on this machine."),
    devices: str = typer.Option("auto", "--devices", help="auto | cpu | cuda:0,cuda:1,..."),
    heartbeat: float = HeartbeatOpt,
    grace: float = GraceOpt,
    pack: str = PackOpt,
    db_patience: float = PatienceOpt,
) -> None:
    """Join a study (e.g. from another machine, against one PostgreSQL URL) and work until it is done."""
    from tmafbench.study import api

    options = _options(heartbeat, grace, pack, db_patience)
    url = resolve_storage(storage)
    with phases_progress(console) as progress:
        outcome = api.join(name, url=url, devices=devices, workers=workers, options=options, on_ready=_announcer(url),
                           progress=progress, on_event=_event)
    _report(outcome)


def list_cmd(storage: Optional[str] = StorageOpt) -> None:
    """List the studies in the database with their progress (a tuned study: its evaluation cells)."""
    from tmafbench.store.database import redact
    from tmafbench.study import api

    url = resolve_storage(storage)
    table = Table(title=f"studies in {redact(url)}")
    for col in ("name", "kind", "cells", "done", "running", "failed", "pending", "created"):
        table.add_column(col, no_wrap=True)
    for s in api.summaries(url):
        c = s.counts
        kind = "tuned" if s.tuning is not None else s.kind
        table.add_row(s.name, kind, str(c.total), str(c.completed), str(c.running), str(c.failed + c.crashed),
                      str(c.pending), f"{s.created_at:%Y-%m-%d %H:%M}")
    # Whole names are what the other commands take: widen past a narrow terminal rather than cut them.
    out = Console()
    natural = Measurement.get(out, out.options.update(width=10_000), table).maximum
    Console(width=max(out.width, natural)).print(table)


def status_cmd(name: str = typer.Argument(...), storage: Optional[str] = StorageOpt,
               as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON.")) -> None:
    """Cells done / running / failed / crashed / pending of one study (and its tuning slots, for a tuned study)."""
    from tmafbench.study import api

    data = api.status(name, resolve_storage(storage))
    if as_json:
        typer.echo(json.dumps(data))
        return
    tuning = data.pop("tuning", None)
    typer.echo("  ".join(f"{k}={v}" for k, v in data.items()))
    if tuning is not None:
        typer.echo("tuning slots: " + "  ".join(f"{k}={v}" for k, v in tuning.items()))


def show_cmd(name: str = typer.Argument(...), storage: Optional[str] = StorageOpt) -> None:
    """The study's provenance and spec, and a summary per group."""
    from tmafbench.study import api

    study, rows = api.show(name, resolve_storage(storage))
    out = Console()
    out.print(f"[bold]{study.name}[/bold] ({study.kind}) {study.description}")
    out.print(f"spec hash {study.spec_hash}  tmafbench {study.tmafbench_version}  commit {study.git_commit or '-'}  "
              f"created {study.created_at:%Y-%m-%d %H:%M} UTC")
    table = Table()
    for col in ("group", "cells", "completed runs", "metric", "mean"):
        table.add_column(col)
    for label, cells, runs, metric_name, mean in rows:
        table.add_row(label, str(cells), str(runs), metric_name or "-", "-" if mean is None else f"{mean:.4g}")
    out.print(table)


def delete_cmd(name: str = typer.Argument(...), storage: Optional[str] = StorageOpt,
               yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete a study: its cells, runs and metrics, its tuning slots and its Optuna studies."""
    from tmafbench.store.database import redact
    from tmafbench.study import api

    url = resolve_storage(storage)
    if not yes and not typer.confirm(f"delete study {name!r} and all its results from {redact(url)}?"):
        typer.echo("not deleted")
        raise typer.Exit(1)
    api.delete_study(name, url)
    typer.echo(f"deleted study {name!r}")


def register(app: typer.Typer) -> None:
    study_app.command("run", epilog=EXIT_STATUS_HELP)(run_cmd)
    study_app.command("cells")(cells_cmd)
    study_app.command("worker", epilog=EXIT_STATUS_HELP)(worker_cmd)
    study_app.command("list")(list_cmd)
    study_app.command("status")(status_cmd)
    study_app.command("show")(show_cmd)
    study_app.command("delete")(delete_cmd)
    app.add_typer(study_app, name="study")
