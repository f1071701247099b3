"""Ctrl-C and SIGTERM in a study's processes: remembered, held back while the database is written,
and a test hook that pauses a worker at a named point so that a test can send a signal there.

- `stop_guard()`: while a `study run`/`study worker` parent or a worker loop runs, SIGINT and
  SIGTERM raise KeyboardInterrupt and set a flag (`stop_requested`). Python raises the exception
  wherever the main thread happens to be; where that is a weakref or GC callback, it is printed and
  dropped ("Exception ignored in ...") and training goes on as if nothing happened. The flag
  survives that, and the worker checks it.
- `signals_held()`: a signal that lands inside is held until the block ends, then raised. Each
  database write (a claim, a trial's creation with its run's link, a result) is one such block, so a
  stop never lands between the statement that changed the database and the one that records it:
  the worker then marks what it holds interrupted (loop.py) and leaves nothing `running`.
- `pause_point(name)`: with TMAFBENCH_TEST_PAUSE=NAME:FILE in the environment, the first time a
  process reaches point NAME it creates FILE and waits (up to PAUSE_LIMIT_S) for a stop. The points
  are "start" (the parent, before any worker), "claim", "trial", "train" and "write"
  (tests/study/test_interrupts.py sends the signal at each).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Iterator

PAUSE_ENV = "TMAFBENCH_TEST_PAUSE"
PAUSE_LIMIT_S = 120.0
PAUSE_POINTS = ("start", "claim", "trial", "train", "write")

_REASONS = {signal.SIGINT: "the user (Ctrl-C)", signal.SIGTERM: "SIGTERM (the job was stopped)"}
_stop = threading.Event()  # a signal arrived under stop_guard
_pending = threading.Event()  # ... inside signals_held: to raise when the block ends
_reason = [_REASONS[signal.SIGINT]]
_guard_depth = [0]  # nested stop_guard blocks (the parent's, then a worker loop's in the same process)
_held_depth = [0]  # nested signals_held blocks
_paused: set[str] = set()  # points this process has paused at already


def stop_requested() -> bool:
    """A Ctrl-C or SIGTERM arrived under `stop_guard` (even one whose KeyboardInterrupt was swallowed)."""
    return _stop.is_set()


def stop_reason() -> str:
    """Who stopped us: "the user (Ctrl-C)" or "SIGTERM (the job was stopped)"."""
    return _reason[0]


def stopped_by_sigterm() -> bool:
    return _reason[0] == _REASONS[signal.SIGTERM]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _reason[0] = _REASONS.get(signal.Signals(signum), f"signal {signum}")
    _stop.set()
    if _held_depth[0] > 0:
        _pending.set()  # raised when the database write ends (signals_held.__exit__)
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_guard() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt and are remembered while the block runs (main
    thread only; elsewhere it does nothing). Nested blocks share the outermost one's handlers, so a
    stop that arrived before an inner block began is not forgotten."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _guard_depth[0] == 0
    previous = {sig: signal.getsignal(sig) for sig in _REASONS}
    if outermost:
        _stop.clear()
        _pending.clear()
        for sig, handler in previous.items():
            if handler is not signal.SIG_IGN:  # started with it ignored (a background job): keep it so
                signal.signal(sig, _on_signal)
    _guard_depth[0] += 1
    try:
        yield
    finally:
        _guard_depth[0] -= 1
        if outermost:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class signals_held:  # noqa: N801 (used as a context manager, like contextlib's)
    """Hold a Ctrl-C or SIGTERM that arrives inside the block until it ends, then raise
    KeyboardInterrupt; an exception already leaving the block goes on as it is (the stop stays
    requested, and the worker checks the flag)."""

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            _held_depth[0] += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        _held_depth[0] -= 1
        if _held_depth[0] == 0 and _pending.is_set():
            _pending.clear()
            if exc_type is None:
                raise KeyboardInterrupt


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread while the block runs (a process started inside
    inherits the mask: a spawned worker must not die of a Ctrl-C with a traceback while Python
    starts it, before its own guard exists; it calls `unblock_signals` under that guard). A signal
    that arrived meanwhile is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_signals() -> None:
    """In a worker started under `signals_blocked`, once its `stop_guard` is in place: a stop that
    arrived while it started is delivered now."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def import_torch_held() -> None:
    """Import torch with signals held (under `stop_guard`). A KeyboardInterrupt raised inside torch's
    own import leaves it half-initialised, and the process then dies at exit with SIGINT or SIGABRT
    instead of its exit status: measured, SIGTERM 2.2-2.4 s into `study run` gave -2 or -6 in 3 of 18
    tries. Held, the stop is raised once the import is done."""
    with signals_held():
        import torch  # noqa: F401


def pause_point(name: str) -> None:
    """The test hook (module docstring): does nothing unless TMAFBENCH_TEST_PAUSE names this point."""
    wanted = os.environ.get(PAUSE_ENV, "")
    point, _, flag = wanted.partition(":")
    if point != name or not flag or name in _paused:
        return
    _paused.add(name)
    Path(flag).write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not stop_requested() and time.monotonic() < deadline:
        time.sleep(0.02)
