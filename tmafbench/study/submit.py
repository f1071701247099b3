"""`tmafbench study submit`: N `study worker` jobs as one job array, through submitit.

submitit (an optional extra: `pip install -e ".[slurm]"`) writes the sbatch script, submits the
array and runs a pickled callable in each task. Ours, `WorkerJob`, runs `tmafbench study worker
STUDY` in a child process, so a job does exactly what a worker started by hand does (same exit
statuses, same log lines). The executor "slurm" submits to Slurm; "local" runs the jobs as
processes on this machine (for laptops and tests).

The storage URL's password never lands in a file: submitit pickles the callable into its folder,
so the callable holds the URL with its password masked, and the job takes the full URL from
`TMAFBENCH_STORAGE` in its environment, which `submit` sets for sbatch (Slurm passes the
submitting environment to the job). A URL without a password (a PostgreSQL service or pgpass
file, a SQLite file) works the same way and also without that variable.

Time limits: 60 s before the limit (`--signal=USR2@60`, submitit's mechanism) submitit calls
`WorkerJob.checkpoint`: the worker gets SIGTERM, marks its running cells interrupted and exits, and
submitit requeues the array task, which resumes the study (up to `max_requeues` times). A job
stopped any other way (`scancel`, a time limit without requeue) also leaves no cell running:
submit again to resume.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sqlalchemy.engine import make_url

from tmafbench.errors import TmafbenchError
from tmafbench.store.database import redact

EXECUTORS = ("slurm", "local")
STORAGE_ENV = "TMAFBENCH_STORAGE"  # the variable `tmafbench` reads its storage URL from (cli/common.py)
SIGNAL_BEFORE_LIMIT_S = 60  # the time-limit warning: enough for a worker to mark its cells and exit
STOP_WAIT_S = 45.0  # how long checkpoint waits for the worker to exit after SIGTERM


class WorkerJobError(TmafbenchError):
    """A job's `study worker` ended with a non-zero exit status, or could not start."""


@dataclass(frozen=True)
class JobResources:
    """What each array task asks the scheduler for (Slurm); the local executor honours only `time_min`."""

    time_min: int = 60
    partition: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None  # per node, as sbatch takes it: "4G"
    gres: str | None = None  # "gpu:1": Slurm sets CUDA_VISIBLE_DEVICES for the task
    sbatch: tuple[str, ...] = ()  # extra sbatch options: "--account=abc", "--qos=high", "--exclusive"
    max_requeues: int = 3  # requeues after a time limit (submitit's max_num_timeout)

    def __post_init__(self) -> None:
        if self.time_min < 1:
            raise TmafbenchError(f"--time must be at least 1 minute, got {self.time_min}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise TmafbenchError(f"--cpus-per-task must be >= 1, got {self.cpus_per_task}")
        sbatch_options(self.sbatch)  # refuse a malformed line now, before anything is submitted


def parse_time(text: str) -> int:
    """Slurm's time formats (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`) in whole
    minutes, rounded up as Slurm does."""
    days, dash, rest = text.strip().rpartition("-")
    try:
        if dash and not days:  # "-5": a negative time, not a day count
            raise ValueError(text)
        parts = [int(p) for p in rest.split(":")]
        day_count = int(days) if days else 0
    except ValueError:
        raise TmafbenchError(f"--time {text!r} is not a Slurm time (MM, HH:MM:SS or D-HH:MM)") from None
    if days:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts[:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = parts[:3]
    if len(parts) > 3 or min(parts + [day_count]) < 0:
        raise TmafbenchError(f"--time {text!r} is not a Slurm time (MM, HH:MM:SS or D-HH:MM)")
    total_s = ((day_count * 24 + hours) * 60 + minutes) * 60 + seconds
    return -(-total_s // 60)


def sbatch_options(lines: Sequence[str]) -> dict[str, Any]:
    """Extra sbatch options as submitit's `additional_parameters`: "--account=abc" -> {"account": "abc"},
    "--exclusive" -> {"exclusive": True}; a leading "#SBATCH" is allowed."""
    options: dict[str, Any] = {}
    for line in lines:
        text = line.strip().removeprefix("#SBATCH").strip()
        if not text.startswith("--") or len(text) < 3:
            raise TmafbenchError(f"--sbatch expects a long sbatch option such as --account=abc, got {line!r}")
        key, sep, value = text[2:].replace(" ", "=", 1).partition("=")
        options[key] = value.strip() if sep else True
    return options


# --- what runs in each job -------------------------------------------------------------------------


def job_storage_url(masked: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The full storage URL inside a job: TMAFBENCH_STORAGE when it names the submitted database,
    else the submitted URL itself when it has no password."""
    from_env = environ.get(STORAGE_ENV)
    if from_env and redact(from_env) == masked:
        return from_env
    if make_url(masked).password is None:
        return masked
    why = "names another database" if from_env else "is not set"
    raise WorkerJobError(
        f"{STORAGE_ENV} {why} in this job, and the study was submitted for {masked}, whose password is kept out "
        "of the job files; let the job inherit the submitting environment (sbatch does unless --export says "
        "otherwise) or use a password-less URL with a PostgreSQL service or pgpass file")


def _ignore_time_limit_warning() -> None:
    """In the worker child: ignore SIGUSR2, which Slurm sends every process of the step before the time
    limit. The submitit process gets it too and stops the worker with SIGTERM (`checkpoint`)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class WorkerJob:
    """The callable each array task runs: `tmafbench study worker STUDY ARGS...` in a child process.

    It is pickled into the submitit folder, so it holds the storage URL masked (see the module doc).
    submitit treats it as checkpointable (it has `checkpoint`), so a job near its time limit stops
    its worker cleanly and is requeued.
    """

    def __init__(self, study: str, storage_masked: str, worker_args: Sequence[str] = ()):
        self.study = study
        self.storage_masked = storage_masked
        self.worker_args = tuple(worker_args)
        self._process: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_process": None}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tmafbench", "study", "worker", self.study, *self.worker_args]

    def __call__(self, task: int = 0) -> int:
        env = dict(os.environ, **{STORAGE_ENV: job_storage_url(self.storage_masked)})
        print(f"tmafbench job task {task} on {socket.gethostname()}: {' '.join(self.command()[1:])} "
              f"(storage {self.storage_masked})", flush=True)
        start = time.perf_counter()
        self._process = subprocess.Popen(self.command(), env=env, preexec_fn=_ignore_time_limit_warning)
        code = self._process.wait()
        self._process = None
        print(f"tmafbench job task {task}: the worker exited with status {code} after "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        if code != 0:
            raise WorkerJobError(f"`tmafbench study worker {self.study}` exited with status {code}")
        return code

    def checkpoint(self, task: int = 0) -> Any:
        """The time limit is near: stop the worker (SIGTERM: it marks its running cells interrupted),
        wait for it, and have submitit requeue this task with the same callable."""
        from submitit.helpers import DelayedSubmission

        process = self._process
        if process is not None and not _has_exited(process.pid):
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT_S
            while not _has_exited(process.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not _has_exited(process.pid):
                process.kill()
        return DelayedSubmission(self, task)


def _has_exited(pid: int) -> bool:
    """Whether the child has ended, without reaping it. `checkpoint` runs in a signal handler while
    `__call__` sits in `Popen.wait()`, which holds the Popen's wait lock: a `wait` or `poll` here
    would never see the exit (seen on Slurm: every stop then took the full STOP_WAIT_S)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


# --- submitting ------------------------------------------------------------------------------------


@dataclass
class Submitted:
    """A submitted array: its job ids, where submitit keeps its files, and how to ask if it still runs."""

    executor: str
    job_ids: list[str]
    folder: Path
    jobs: list[Any] = field(repr=False, default_factory=list)  # submitit Job objects

    @property
    def array_id(self) -> str:
        return self.job_ids[0].split("_", 1)[0] if self.job_ids else ""

    def running(self) -> int:
        """How many of the jobs have not ended (Slurm: `squeue`, since sacct needs accounting)."""
        if self.executor == "local":
            return sum(not job.done() for job in self.jobs)
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", self.array_id], capture_output=True, text=True)
        if out.returncode != 0:  # an id Slurm has already forgotten: ended
            return 0
        return len([line for line in out.stdout.splitlines() if line.strip()])


def load_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise TmafbenchError("`study submit` needs submitit: pip install 'tmafbench[slurm]'") from None
    return submitit


def make_executor(executor: str, folder: Path, resources: JobResources, study: str, jobs: int) -> Any:
    """A submitit executor for `executor` with the resources each array task asks for."""
    submitit = load_submitit()
    signal_delay_s = min(SIGNAL_BEFORE_LIMIT_S, resources.time_min * 60 // 2)
    if executor == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=resources.max_requeues)
        ex.update_parameters(timeout_min=resources.time_min, signal_delay_s=signal_delay_s)
        return ex
    if executor != "slurm":
        raise TmafbenchError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=resources.max_requeues)
    params: dict[str, Any] = dict(time=resources.time_min, job_name=f"tmafbench-{study}", array_parallelism=jobs,
                                  signal_delay_s=signal_delay_s)
    for key in ("partition", "cpus_per_task", "mem", "gres"):
        if getattr(resources, key) is not None:
            params[key] = getattr(resources, key)
    extra = sbatch_options(resources.sbatch)
    if extra:
        params["additional_parameters"] = extra
    ex.update_parameters(**params)
    return ex


def submit(study: str, url: str, *, executor: str = "slurm", jobs: int = 1, worker_args: Sequence[str] = (),
           resources: JobResources = JobResources(), folder: str | Path | None = None,
           make: Callable[..., Any] = make_executor) -> Submitted:
    """Submit `jobs` array tasks, each running `tmafbench study worker STUDY WORKER_ARGS`.

    The study must exist (`study create`); the caller checks. The URL travels in the environment of
    the submission only (see the module doc).
    """
    if jobs < 1:
        raise TmafbenchError(f"--jobs must be >= 1, got {jobs}")
    where = Path(folder) if folder is not None else Path("tmafbench-jobs") / study
    where = where.expanduser().resolve()
    ex = make(executor, where, resources, study, jobs)
    job = WorkerJob(study, redact(url), worker_args)
    previous = os.environ.get(STORAGE_ENV)
    os.environ[STORAGE_ENV] = url  # for sbatch (and the local executor's processes) to pass on
    try:
        submitted = ex.map_array(job, list(range(jobs)))
    finally:
        if previous is None:
            os.environ.pop(STORAGE_ENV, None)
        else:
            os.environ[STORAGE_ENV] = previous
    return Submitted(executor, [j.job_id for j in submitted], where, submitted)
