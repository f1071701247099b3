"""Riding out a database that blinks: which errors are worth waiting for, and the wait itself.

A long study meets faults a unit test never does. They fall in three kinds:
- **transient**: the connection was lost (a server restart, a failover, a network blink), the
  server refused new connections for a moment, or SQLite was busy ("database is locked"). The
  same call succeeds once the database is back: `Patience.call` retries it with backoff, up to
  a time limit (`--db-patience`), past which it raises `DatabaseUnavailable`. SQLAlchemy's pool
  (pre-ping, invalidation on disconnect) opens fresh connections by itself.
- **storage faults**: the database cannot be written (SQLite on a full disk, a read-only file or
  folder, an I/O error; PostgreSQL's disk full). Waiting does not help: `StorageFault`, one line
  that says what to fix. SQLite's transactions are atomic, so the database stays intact.
- everything else (a bug, a constraint): raised as it is.

Every call a worker makes may be retried, so the store's writes are idempotent or detect their own
earlier commit (a COMMIT can succeed on the server while its answer is lost: `finish_run`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError

from tmafbench.errors import TmafbenchError

DEFAULT_PATIENCE_S = 300.0
MAX_BACKOFF_S = 2.0  # the longest sleep between tries: a blink costs at most this much beyond its length

Transient = Literal["locked", "disconnected"]
T = TypeVar("T")

# PostgreSQL SQLSTATEs worth waiting for. Class 08 (connection exception) is matched by prefix.
_PG_DISCONNECTED = {
    "57P01",  # admin_shutdown: the server is shutting down (pg_ctl restart/stop -m fast)
    "57P02",  # crash_shutdown: the server crashed
    "57P03",  # cannot_connect_now: the server is starting up
    "53300",  # too_many_connections
    "25006",  # read_only_sql_transaction: a standby, during a failover
}
_PG_LOCKED = {"40001", "40P01"}  # serialization failure, deadlock: retry the transaction
_PG_DISK_FULL = "53100"

# SQLite result codes (Python's sqlite_errorname) that stop a worker at once: the verb, what is
# wrong and what to do.
_SQLITE_FAULTS = (
    ("SQLITE_FULL", "write to", "the disk is full", "free some space"),
    ("SQLITE_READONLY", "write to", "the file or its folder is read-only", "make both writable"),
    ("SQLITE_IOERR", "write to", "the disk refused a write (full, over a file-size limit, or failing)", "check the disk"),
    ("SQLITE_CANTOPEN", "open", "the file cannot be opened", "check that it and its folder exist and are writable"),
)


class DatabaseFault(TmafbenchError):
    """The database cannot be used now: a worker stops, its results so far are safe."""


class DatabaseUnavailable(DatabaseFault):
    """The database did not answer for longer than the patience limit."""


class StorageFault(DatabaseFault):
    """The database refuses writes for a reason waiting will not fix (full disk, read-only file)."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes (Optuna wraps SQLAlchemy's errors: `raise ... from e`)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _driver_errors(exc: BaseException) -> Iterator[tuple[BaseException, DBAPIError | None]]:
    """(a DB-API driver's exception, SQLAlchemy's wrapper of it) for each found in the chain: a failed
    rollback can hide the error that caused it (a full disk) in its context."""
    for err in _chain(exc):
        if isinstance(err, DBAPIError) and err.orig is not None:
            yield err.orig, err
        elif type(err).__module__.split(".")[0] in ("psycopg", "psycopg2", "sqlite3"):
            yield err, None


def _sqlstate(orig: BaseException) -> str | None:
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def transient_kind(exc: BaseException) -> Transient | None:
    """"disconnected" for a lost or refused connection, "locked" for a busy database (retry both);
    None for any other error."""
    if any(isinstance(err, DisconnectionError) for err in _chain(exc)):  # pre-ping, InvalidatePoolError
        return "disconnected"
    for orig, wrapper in _driver_errors(exc):
        kind = _transient(orig, wrapper)
        if kind is not None:
            return kind
    return None


def _transient(orig: BaseException, wrapper: DBAPIError | None) -> Transient | None:
    if type(orig).__module__.startswith("sqlite3"):
        text = str(orig).lower()
        return "locked" if "database is locked" in text or "database table is locked" in text else None
    if wrapper is not None and wrapper.connection_invalidated:
        return "disconnected"
    state = _sqlstate(orig)
    if state in _PG_LOCKED:
        return "locked"
    if state is not None:
        return "disconnected" if state.startswith("08") or state in _PG_DISCONNECTED else None
    # No SQLSTATE: the driver's own connection-level failure (refused, closed, timed out)
    return "disconnected" if type(orig).__name__ in ("OperationalError", "InterfaceError") else None


def storage_fault(exc: BaseException) -> tuple[str, str, str, BaseException] | None:
    """(verb, what is wrong, what to do, the driver's error) when the database refuses writes for
    good; None otherwise."""
    for orig, _ in _driver_errors(exc):
        if _sqlstate(orig) == _PG_DISK_FULL:
            return "write to", "the database server's disk is full", "free space on the server", orig
        if type(orig).__module__.startswith("sqlite3"):
            name = getattr(orig, "sqlite_errorname", "") or ""  # Python >= 3.11 names every sqlite3 error
            for code, verb, what, fix in _SQLITE_FAULTS:
                if name.startswith(code):
                    return verb, what, fix, orig
    return None


def error_detail(exc: BaseException) -> str:
    """The driver's first line, e.g. "connection failed: ... Connection refused"."""
    source = next((orig for orig, _ in _driver_errors(exc)), exc)
    lines = str(source).strip().splitlines()
    return lines[0].strip() if lines else type(source).__name__


def storage_fault_message(exc: BaseException, where: str = "") -> str | None:
    """One line for a storage fault: what is wrong, what to do, and that the database is intact."""
    fault = storage_fault(exc)
    if fault is None:
        return None
    verb, what, fix, orig = fault
    return (f"cannot {verb} the results database{' ' + where if where else ''}: {what} ({error_detail(orig)}); "
            f"what it holds is intact: {fix}")


def backoff_s(attempt: int) -> float:
    """Sleep before try `attempt + 1`: 0.05 s doubling up to MAX_BACKOFF_S, jittered so that many
    workers do not reconnect in step."""
    return min(MAX_BACKOFF_S, 0.05 * 2.0**attempt) * random.uniform(0.5, 1.0)


@dataclass
class Patience:
    """Call a database function, retrying while the database blinks, for up to `limit_s` seconds.

    `where` names the database in messages (never with its password). `on_wait(kind, exc)` is
    called when an outage starts, `on_back(kind, seconds)` when a call succeeds after one;
    `waited_s` adds up every outage; `retries` counts every retried call by kind. Once
    `should_stop()` is true (the user asked to stop) a failed try is not retried: KeyboardInterrupt.
    """

    where: str
    limit_s: float = DEFAULT_PATIENCE_S
    on_wait: Callable[[Transient, BaseException], None] | None = None
    on_back: Callable[[Transient, float], None] | None = None
    waited_s: float = 0.0
    retries: dict[str, int] = field(default_factory=lambda: {"locked": 0, "disconnected": 0})
    should_stop: Callable[[], bool] | None = None

    def call(self, fn: Callable[[], T]) -> T:
        """fn(), retried on transient errors; `DatabaseUnavailable` past the limit, `StorageFault`
        for a database that refuses writes; any other error as it is."""
        started: float | None = None
        first: Transient = "locked"
        attempt = 0
        while True:
            try:
                result = fn()
            except Exception as exc:
                kind = transient_kind(exc)
                if kind is None:
                    message = storage_fault_message(exc, self.where)
                    if message is not None:
                        raise StorageFault(message) from exc
                    raise
                now = time.monotonic()
                if started is None:
                    started, first = now, kind
                    if self.on_wait is not None:
                        self.on_wait(kind, exc)
                self.retries[kind] += 1
                if self.should_stop is not None and self.should_stop():
                    raise KeyboardInterrupt from exc
                if now - started >= self.limit_s:
                    self.waited_s += now - started
                    raise DatabaseUnavailable(self.unavailable_message(exc)) from exc
                time.sleep(min(backoff_s(attempt), max(0.0, started + self.limit_s - now)))
                attempt += 1
                continue
            if started is not None:
                outage = time.monotonic() - started
                self.waited_s += outage
                if self.on_back is not None:
                    self.on_back(first, outage)
            return result

    def unavailable_message(self, exc: BaseException) -> str:
        return (f"the database {self.where} did not answer for {self.limit_s:g} s (--db-patience): {error_detail(exc)}")

    def quiet(self, fn: Callable[[], T]) -> T | None:
        """fn() once; None on a transient error (for a progress display that may skip a beat)."""
        try:
            return fn()
        except Exception as exc:
            if transient_kind(exc) is None:
                raise
            return None


def is_database_error(exc: BaseException) -> bool:
    """True when the error comes from the database layer (SQLAlchemy or its driver)."""
    return any(isinstance(err, SQLAlchemyError) for err in _chain(exc)) or next(_driver_errors(exc), None) is not None


def postgres_connect_args(query: Any) -> dict[str, Any]:
    """libpq options that bound how long a dead server can stall a call, unless the URL sets them.

    Without them a connect to a host that drops packets waits for the OS (minutes), and a query on
    a connection whose server vanished (a partition, a suspended laptop) can wait about 15 minutes
    for TCP to give up: far past any patience limit.
    """
    defaults = {
        "connect_timeout": 10,  # seconds to establish a connection
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        "tcp_user_timeout": 30_000,  # ms unacknowledged data may wait before the connection is dropped
    }
    return {k: v for k, v in defaults.items() if k not in query}
