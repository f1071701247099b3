"""tests/processes.py: what a test starts does not outlive it, children included."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from processes import reap, run, spawn

# A parent that starts a child which would run for 10 minutes, prints the child's pid, then waits.
PARENT = ("import subprocess, sys, time\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
          "print(child.pid, flush=True)\n"
          "time.sleep(600)\n")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of a dead parent is reaped by init; until then it is a zombie.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def wait_dead(pid: int) -> bool:
    deadline = time.time() + 10
    while alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_reap_kills_a_spawned_process_and_its_children():
    parent = spawn([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert alive(child)
    assert reap() == [parent.pid]
    assert wait_dead(parent.pid) and wait_dead(child)


def test_a_timeout_of_run_kills_the_command_and_its_children(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT.replace("print(child.pid, flush=True)", f"open({str(tmp_path / 'pid')!r}, 'w').write(str(child.pid))"))
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, str(script)], timeout=3)
    child = int((tmp_path / "pid").read_text())
    assert wait_dead(child)
