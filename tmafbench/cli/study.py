"""`tmafbench study run|create|cells|worker|submit|list|status|show|delete|verify`: parse, call tmafbench.study.api, print."""

from __future__ import annotations

import contextlib
import functools
import json
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from tmafbench.cli.common import EXIT_REFUSED, App, resolve_storage
from tmafbench.core import Ending
from tmafbench.study.signals import signals_held

if TYPE_CHECKING:
    from rich.progress import TaskID

    from tmafbench.study.cells import CellPlan
    from tmafbench.study.design import StudyDesign
    from tmafbench.study.lifecycle import StudyInfo
    from tmafbench.study.verify import Verification
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
                        "worker died): run the same command again to resume; or the study was deleted while it ran"),
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
OversubscribeOpt = typer.Option(False, "--oversubscribe", help="Start more CPU workers than this machine has cores.")
PatienceOpt = typer.Option(300.0, "--db-patience", help=(
    "Seconds a worker waits for a database that stopped answering (a restart, a failover, a network blink) "
    "before it stops; training goes on meanwhile and finished results are written once it is back."))

ThreadsOpt = typer.Option(None, "--threads", help=(
    "Torch threads per CPU worker (default: the CPUs this process may use, from its CPU affinity and "
    "SLURM_CPUS_PER_TASK, divided among the workers)."))

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


RESUME_HINT = "run the same command again to resume"


def stop_gives_resume_line(command: Callable[..., None]) -> Callable[..., None]:
    """`study run` and `study worker`: a Ctrl-C or SIGTERM before the workers started (loading,
    preparing the study) or after they ended gives the line and the exit status of an interrupted run."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            console.print(f"interrupted: {RESUME_HINT}")
            raise typer.Exit(EXIT_CODES[Ending.INTERRUPTED]) from None

    return wrapper


def exit_for_outcome(console: Console, outcome: StudyOutcome, resume_hint: str = RESUME_HINT) -> None:
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


def _options(heartbeat: float, grace: float, pack: str, patience: float, threads: int | None = None) -> WorkerOptions:
    from tmafbench.study.worker import WorkerOptions

    size: int | str = int(pack) if pack.strip().isdigit() else pack.strip()
    return WorkerOptions(heartbeat_s=heartbeat, grace_s=grace, pack=size, db_patience_s=patience,
                         threads=threads)  # checked before anything is written


def _event(line: str) -> None:
    """A worker's log line (a database outage, an abandoned cell), printed above the progress bars."""
    console.print(line, markup=False, highlight=False)


def _announcer(url: str, threads: int | None = None) -> Callable[[StudyInfo, list[str]], None]:
    """Prints what the study is and who works on it, once it is ready (CPU workers: their threads, and why)."""
    from tmafbench.store.database import redact
    from tmafbench.study.threads import thread_plan

    def announce(info: StudyInfo, devices: list[str]) -> None:
        if not devices:  # nothing to run
            console.print(info.message, markup=False)
            return
        console.print(f"{info.message} in {redact(url)}", markup=False)
        line = f"{len(devices)} worker(s) on {', '.join(sorted(set(devices)))}"
        if "cpu" in devices:
            line += f", {thread_plan(devices.count('cpu'), threads).describe()}"
        console.print(line, markup=False)

    return announce


def _report(outcome: StudyOutcome) -> None:
    if outcome.deleted:  # its counts are gone with it: the one line says it all
        console.print(outcome.stopped, markup=False, highlight=False)
        raise typer.Exit(EXIT_CODES[outcome.ending])
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


@stop_gives_resume_line
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
    oversubscribe: bool = OversubscribeOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Create (or resume) a study from a TOML file and run every cell with local workers."""
    with signals_held():  # a stop waits for the import (an import cut in half breaks its module)
        from tmafbench.study import api

    if dry_run:
        _show_cells(api.cells(spec_path, set_), 200)
        return
    url = resolve_storage(storage)
    with phases_progress(console) as progress:
        outcome = api.run(spec_path, set_, url=url, devices=devices, workers=workers, new_name=new_name, force=force,
                          options=_options(heartbeat, grace, pack, db_patience, threads), oversubscribe=oversubscribe,
                          on_ready=_announcer(url, threads), progress=progress, on_event=_event)
    _report(outcome)


@stop_gives_resume_line
def worker_cmd(
    name: str = typer.Argument(..., help="Study name (as in `tmafbench study list`)."),
    storage: Optional[str] = StorageOpt,
    workers: int = typer.Option(1, "--workers", "-w", help="Worker processes on this machine."),
    devices: str = typer.Option("auto", "--devices", help="auto | cpu | cuda:0,cuda:1,..."),
    heartbeat: float = HeartbeatOpt,
    grace: float = GraceOpt,
    pack: str = PackOpt,
    db_patience: float = PatienceOpt,
    oversubscribe: bool = OversubscribeOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Join a study (e.g. from another machine, against one PostgreSQL URL) and work until it is done."""
    with signals_held():
        from tmafbench.study import api

    options = _options(heartbeat, grace, pack, db_patience, threads)
    url = resolve_storage(storage)
    with phases_progress(console) as progress:
        outcome = api.join(name, url=url, devices=devices, workers=workers, options=options, oversubscribe=oversubscribe,
                           on_ready=_announcer(url, threads), progress=progress, on_event=_event)
    _report(outcome)


def create_cmd(
    spec_path: str = typer.Argument(..., metavar="STUDY_FILE", help="Study file (TOML)."),
    set_: Optional[list[str]] = SetOpt,
    storage: Optional[str] = StorageOpt,
    new_name: Optional[str] = typer.Option(None, "--new-name", help="Create the file as a new study of this name."),
    force: bool = typer.Option(False, "--force", help=(
        "When the study exists with other cells: keep the results of the cells in both designs, DELETE the "
        "cells (and their runs) no longer in the file, add the new cells.")),
) -> None:
    """Create a study (its cells; a tuned study's tuning slots) and run nothing; prints the command workers run.

    The same file again changes nothing. Any number of `study create` and `study run` of one file may
    start at the same moment (every task of a job array): one creates, the others find the study.
    """
    from tmafbench.store.database import redact
    from tmafbench.study import api

    url = resolve_storage(storage)
    info, phases = api.create(spec_path, set_, url=url, new_name=new_name, force=force)
    if info.created or not info.message.startswith("resuming"):
        typer.echo(f"{info.message} in {redact(url)}")
    else:
        counts = ", ".join(f"{c.finished}/{c.total} {phase.label} final" for phase, c in phases)
        updated = info.message.partition("; ")[2]
        typer.echo(f"study {info.name!r} is already in {redact(url)} with this design ({counts}); nothing to "
                   f"create" + (f"; {updated}" if updated else ""))
    target = f" --storage '{redact(url)}'" if storage else ""
    typer.echo("workers join it with (one per machine, GPU or job):")
    typer.echo(f"  tmafbench study worker {info.name}{target}")
    typer.echo(f"  tmafbench study submit {info.name}{target} --executor slurm --jobs N   # a Slurm job array "
               "(pip install 'tmafbench[slurm]')")
    if storage and make_url_password(url):
        typer.echo("  (the password is not shown: give it to the workers in TMAFBENCH_STORAGE, or use a "
                   "PostgreSQL service or pgpass file and a URL without it)")


def make_url_password(url: str) -> bool:
    """Whether the URL carries a password."""
    from sqlalchemy.engine import make_url

    return make_url(url).password is not None


def submit_cmd(
    name: str = typer.Argument(..., help="Study name (create it first: `tmafbench study create FILE`)."),
    executor: str = typer.Option("slurm", "--executor", help="slurm (a job array) | local (processes here: laptops, tests)."),
    jobs: int = typer.Option(1, "--jobs", "-n", help="Array tasks, each one `study worker`."),
    storage: Optional[str] = StorageOpt,
    partition: Optional[str] = typer.Option(None, "--partition", "-p", help="Slurm partition."),
    time_limit: str = typer.Option("1:00:00", "--time", "-t", help=(
        "Time limit per task, in Slurm's formats (MM, HH:MM:SS, D-HH:MM). Before it, the worker stops cleanly "
        "and the task is requeued (--max-requeues).")),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", "-c", help="CPUs per task (Slurm)."),
    mem: Optional[str] = typer.Option(None, "--mem", help="Memory per task (Slurm), e.g. 8G."),
    gres: Optional[str] = typer.Option(None, "--gres", help="Generic resources per task, e.g. gpu:1 (Slurm sets CUDA_VISIBLE_DEVICES)."),
    sbatch: Optional[list[str]] = typer.Option(None, "--sbatch", help="An extra sbatch option, e.g. --sbatch=--account=abc (repeatable)."),
    max_requeues: int = typer.Option(3, "--max-requeues", help="Requeues of a task after its time limit."),
    folder: Optional[str] = typer.Option(None, "--folder", help="Where submitit keeps scripts and logs (default ./tmafbench-jobs/STUDY)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the jobs to end, show progress, and exit with the study's status."),
    workers: int = typer.Option(1, "--workers", "-w", help="Worker processes per task."),
    devices: str = typer.Option("auto", "--devices", help="auto | cpu | cuda:0,... in each task."),
    threads: Optional[int] = ThreadsOpt,
    heartbeat: float = HeartbeatOpt,
    grace: float = GraceOpt,
    pack: str = PackOpt,
    db_patience: float = PatienceOpt,
) -> None:
    """Submit `study worker` jobs for a stored study as one job array (Slurm through submitit, or local).

    The storage URL's password never lands in a file: the jobs take the URL from TMAFBENCH_STORAGE in
    their environment, which Slurm passes on from this command's.
    """
    from tmafbench.study import api
    from tmafbench.study.submit import JobResources, parse_time
    from tmafbench.study.threads import thread_plan

    _options(heartbeat, grace, pack, db_patience, threads)  # refuse bad values before submitting
    if executor == "local" and threads is None:  # the jobs share this machine: split its CPUs
        threads = thread_plan(jobs * workers).threads
    worker_args = ["--workers", str(workers), "--devices", devices, "--heartbeat", f"{heartbeat:g}", "--grace",
                   f"{grace:g}", "--pack", pack, "--db-patience", f"{db_patience:g}"]
    if threads is not None:
        worker_args += ["--threads", str(threads)]
    resources = JobResources(time_min=parse_time(time_limit), partition=partition, cpus_per_task=cpus_per_task,
                             mem=mem, gres=gres, sbatch=tuple(sbatch or ()), max_requeues=max_requeues)
    url = resolve_storage(storage)
    info, submitted = api.submit_workers(name, url=url, executor=executor, jobs=jobs, worker_args=worker_args,
                                         resources=resources, folder=folder)
    where = f"job array {submitted.array_id}" if executor == "slurm" else f"local jobs {', '.join(submitted.job_ids)}"
    typer.echo(f"submitted {jobs} worker job(s) for study {name!r} to {executor}: {where}; logs in {submitted.folder}")
    if not wait:
        cancel = f"scancel {submitted.array_id}" if executor == "slurm" else "kill the jobs' processes"
        typer.echo(f"watch: tmafbench study status {name}; stop: {cancel}; resume: submit again")
        return
    with phases_progress(console) as progress:
        outcome = api.wait_for_jobs(info, url, submitted, progress)
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


VERIFY_EXIT_DRIFTED = 5  # not 1: a script must tell a drifted cell from a crash (EXIT_BUG)
VERIFY_HELP = ("Exit status: 0 every re-run cell matched its stored result within --tolerance; 5 some cell "
               "drifted further; 2 refused (bad input, unknown study or cell, unreadable database); 1 a bug.")


def verify_cmd(
    name: str = typer.Argument(..., help="Study name (a tuned study: its evaluation cells)."),
    storage: Optional[str] = StorageOpt,
    cells: int = typer.Option(3, "--cells", help="Completed cells to re-run, drawn at random (--seed)."),
    cell: Optional[str] = typer.Option(None, "--cell", help="Re-run this one cell instead: its id or a config-hash prefix."),
    tolerance: float = typer.Option(0.0, "--tolerance", help=(
        "Largest relative drift of a cell's primary metric that counts as a match (0: bit for bit).")),
    seed: int = typer.Option(0, "--seed", help="Seed of the random draw of --cells."),
    alone: bool = typer.Option(False, "--alone", help=(
        "Re-run each cell by itself, not in its stored pack (cheaper; not the stored arithmetic).")),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: the stored runs', when recorded)."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Re-run stored cells from their stored configs on this machine: bit-identical or not, first-epoch
    loss, final metric, relative drift, and what differs from the stored environment. Works on a live
    database and on a shipped .db.gz."""
    from tmafbench.study import api

    result = api.verify(resolve_storage(storage), name, cells=cells, cell=cell, seed=seed, tolerance=tolerance,
                        alone=alone, threads=threads)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), default=str))
    else:
        _print_verification(result)
    raise typer.Exit(0 if result.ok else VERIFY_EXIT_DRIFTED)


def _print_verification(result: Verification) -> None:
    out = Console()
    table = Table(title=f"{result.study}: {len(result.checks)} of {result.completed} completed cells re-run "
                        f"({result.threads} thread(s))")
    for col in ("cell", "group", "seed", "re-run", "bits", "epoch-1 loss stored / here", "final stored / here",
                "drift", "match"):
        table.add_column(col)
    for c in result.checks:
        drift = "0" if c.drift == 0 else f"{c.drift:.2e}"
        table.add_row(f"{c.cell_id} ({c.config_hash[:8]})", c.label, str(c.seed), c.pack,
                      "identical" if c.identical else f"differ ({c.compared} values compared)",
                      f"{_num(c.first_loss[0])} / {_num(c.first_loss[1])}",
                      f"{_num(c.final[0])} / {_num(c.final[1])} {c.metric}", drift,
                      "yes" if c.within(result.tolerance) else "NO")
    natural = Measurement.get(out, out.options.update(width=10_000), table).maximum  # whole rows, as `study list`
    Console(width=max(out.width, natural)).print(table)
    differences = list(dict.fromkeys(d for c in result.checks for d in c.differences))
    out.print("environment: " + ("the same as the stored runs' (CPU extensions, threads, kernel, torch build, pack)"
                                 if not differences else "; ".join(differences)))
    within = sum(c.within(result.tolerance) for c in result.checks)
    out.print(f"{within} of {len(result.checks)} cells matched within a relative drift of {result.tolerance:g}"
              + ("" if result.tolerance else " (bit for bit)"))


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.7g}"


def register(app: typer.Typer) -> None:
    study_app.command("run", epilog=EXIT_STATUS_HELP)(run_cmd)
    study_app.command("cells")(cells_cmd)
    study_app.command("worker", epilog=EXIT_STATUS_HELP)(worker_cmd)
    study_app.command("create")(create_cmd)
    study_app.command("submit", epilog=EXIT_STATUS_HELP + " (with --wait)")(submit_cmd)
    study_app.command("list")(list_cmd)
    study_app.command("status")(status_cmd)
    study_app.command("show")(show_cmd)
    study_app.command("delete")(delete_cmd)
    study_app.command("verify", epilog=VERIFY_HELP)(verify_cmd)
    app.add_typer(study_app, name="study")
