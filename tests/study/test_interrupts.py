"""A stop at any moment of `study run` leaves the study clean: no run `running`, no Optuna trial
RUNNING, nothing counted as a crash, and the same command finishes the study.

The worker is paused at each point by the test hook of tmafbench/study/signals.py
(TMAFBENCH_TEST_PAUSE=POINT:FILE): it creates FILE there and waits for a signal. The signal is
SIGTERM to `study run` alone (a batch scheduler's stop; the parent passes it on), or SIGINT to the
whole process group (Ctrl-C in a terminal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import run, spawn

from tiny_specs import study_toml
from tmafbench.study.signals import PAUSE_ENV

pytestmark = [pytest.mark.slow]

# Two cells of under a second; a crash would end the study at once (max_crashes = 1).
CRASH_ONCE = ("[defaults]", "max_crashes = 1\n[defaults]")
GRID = study_toml("stops", train_size=128, epochs=3, seeds=2, activations=("relu",)).replace(*CRASH_ONCE, 1)
TUNED = study_toml("stops", train_size=128, epochs=3, seeds=None, activations=("relu",), tail="""\
[tune]
trials = 2
seeds = 1
eval_seeds = 1
sampler_seed = 3
[tune.space]
"training.lr" = { low = 1e-3, high = 3e-2, log = true }
""").replace(*CRASH_ONCE, 1)
RESUME_LINE = "interrupted: run the same command again to resume"


def start_paused(tmp_path: Path, spec: str, point: str) -> tuple[subprocess.Popen, list[str]]:
    """`study run` with its worker (or, for "start", the parent) paused at `point`; returns the
    process once the pause began, and the command."""
    (tmp_path / "study.toml").write_text(spec)
    flag = tmp_path / f"paused-{point}"
    command = [sys.executable, "-m", "tmafbench", "study", "run", str(tmp_path / "study.toml"),
               "--storage", f"sqlite:///{tmp_path / 'stops.db'}", "--workers", "1", "--heartbeat", "0.5"]
    env = {**os.environ, PAUSE_ENV: f"{point}:{flag}"}
    # A shell's background job ignores SIGINT, and Python then installs no handler: restore the default.
    proc = spawn(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 180
    while not flag.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"never paused at {point!r}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    return proc, command


def stored_state(url: str, study: str) -> tuple[list[str], list[str], int]:
    """(statuses of every run, states of every Optuna trial of the study's Optuna studies, trials)."""
    import optuna
    from sqlalchemy import select

    from tmafbench.store.database import Database
    from tmafbench.store.schema import Run

    db = Database(url)
    if not db.has_tables():  # stopped before the study was written
        db.dispose()
        return [], [], 0
    with db.session() as s:
        runs = sorted(s.scalars(select(Run.status)))
    db.dispose()
    storage = optuna.storages.RDBStorage(url)
    states = [t.state.name for summary in storage.get_all_studies() if summary.study_name.startswith(study)
              for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials]
    storage.engine.dispose()
    return runs, sorted(states), len(states)


def stop(proc: subprocess.Popen, how: str) -> tuple[int, str]:
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)  # the parent alone: it stops its workers
    else:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
@pytest.mark.parametrize("point", ["claim", "trial", "train", "write"])
def test_a_stop_at_each_point_leaves_nothing_running_and_the_study_resumes(tmp_path, point, how):
    proc, command = start_paused(tmp_path, GRID, point)
    code, err = stop(proc, how)
    assert code == 130 and RESUME_LINE in err and "Traceback" not in err, err[-3000:]
    url = f"sqlite:///{tmp_path / 'stops.db'}"
    runs, trials, _ = stored_state(url, "stops")
    assert "running" not in runs and "lost" not in runs and "RUNNING" not in trials, (runs, trials)
    # the run the stop caught: interrupted; a result already written when it came stays written
    assert runs == (["completed"] if point == "write" else ["interrupted"]), runs
    again = run(command, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    runs, trials, _ = stored_state(url, "stops")
    assert runs.count("completed") == 2 and "lost" not in runs and set(trials) <= {"COMPLETE", "FAIL"}, (runs, trials)
    assert trials.count("COMPLETE") == 2


@pytest.mark.parametrize("point", ["trial", "write"])
def test_a_stop_while_a_tuning_slot_is_asked_or_told(tmp_path, point):
    """A tuning slot's trial is the sampler's: a stop leaves it FAIL (or told), never RUNNING."""
    proc, command = start_paused(tmp_path, TUNED, point)
    code, err = stop(proc, "sigterm")
    assert code == 130 and RESUME_LINE in err and "Traceback" not in err, err[-3000:]
    url = f"sqlite:///{tmp_path / 'stops.db'}"
    runs, trials, count = stored_state(url, "stops")
    assert "running" not in runs and "lost" not in runs and "RUNNING" not in trials and count >= 1, (runs, trials)
    again = run(command, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    runs, trials, _ = stored_state(url, "stops")
    assert "lost" not in runs and "RUNNING" not in trials, (runs, trials)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_a_stop_before_the_workers_start_is_the_usual_line_and_exit_130(tmp_path, how):
    proc, command = start_paused(tmp_path, GRID, "start")
    code, err = stop(proc, how)
    assert code == 130 and err.strip().splitlines()[-1] == RESUME_LINE and "Traceback" not in err, err[-3000:]
    runs, trials, _ = stored_state(f"sqlite:///{tmp_path / 'stops.db'}", "stops")
    assert runs == [] and trials == []
    again = run(command, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]


# Many cells of a few seconds: a stop that was swallowed would show as a run that goes on.
LONG = study_toml("stops", train_size=1024, epochs=20, seeds=40, activations=("relu",))


MOMENTS_S = [0.5 * k for k in range(1, 13)]  # 0.5 .. 6 s: loading, torch's import, preparing, the worker starting


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_a_stop_at_any_early_moment_stops_the_run(tmp_path, how):
    """Without a pause: the stop lands wherever `study run` happens to be (imports, torch's own
    import, preparing the study, its worker starting and importing torch, the first claims), every
    half second from 0.5 to 6 s. Each must stop promptly with exit 130, no traceback, and leave
    nothing running. Only in the interpreter's own start-up, before tmafbench's handler exists, may
    the default action end it (SIGTERM: -15; Ctrl-C: -2): allowed before 1 s, nothing written then."""
    (tmp_path / "study.toml").write_text(LONG)
    for after_s in MOMENTS_S:
        db = tmp_path / f"stops-{after_s}.db"
        url = f"sqlite:///{db}"
        proc = spawn([sys.executable, "-m", "tmafbench", "study", "run", str(tmp_path / "study.toml"), "--storage",
                      url, "--workers", "1", "--heartbeat", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(after_s)
        started = time.time()
        code, err = stop(proc, how)
        moment = f"{how} after {after_s} s: exit {code}"
        assert time.time() - started < 60, f"{moment}: the stop was not acted on"
        if after_s >= 1.0 or code == 130:
            assert code == 130 and "Traceback" not in err and "Fatal" not in err, (moment, err[-3000:])
            assert err.strip().splitlines()[-1] == RESUME_LINE, (moment, err[-3000:])
        else:
            assert code in (-signal.SIGTERM, -signal.SIGINT), (moment, err[-3000:])
        if db.exists():
            runs, trials, _ = stored_state(url, "stops")
            assert "running" not in runs and "RUNNING" not in trials, (moment, runs, trials)
            assert runs.count("completed") < 40, moment
