"""Child processes the tests start, each in a session (process group) of its own, so that a test
that fails or times out never leaves one behind: the autouse fixture in conftest.py kills every
group a test started when it ends (a `worker_loop` of the 'slow' study trains for many minutes, and
a `study run` has worker processes of its own that outlive a killed parent).
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

_started: list[subprocess.Popen] = []


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen(args, **kwargs)` in a new session, remembered for `reap`."""
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)
    _started.append(proc)
    return proc


def run(args: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run(args, capture_output=True, text=True, timeout=timeout)`, but a timeout kills
    the command's whole process group (its workers too), not only the command."""
    proc = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (its children included, even after it has exited)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is empty: nothing left
        pass


def reap() -> list[int]:
    """Kill what the processes started so far left running; the pids of the leaders still alive."""
    alive = []
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            alive.append(proc.pid)
        kill_group(proc)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()
    return alive
