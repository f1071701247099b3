"""Which database errors a worker waits out, and the wait itself, on real errors from real drivers."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from tmafbench.store.database import Database, make_engine, redact
from tmafbench.store.resilience import (DatabaseUnavailable, Patience, StorageFault, postgres_connect_args,
                                        storage_fault_message, transient_kind)

UNREACHABLE = "postgresql://u:secret@127.0.0.1:1/x"


def error_of(fn) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def connect(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_file(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    db.create_all()
    db.dispose()
    return tmp_path / "r.db"


def hold_write_lock(path, seconds: float) -> threading.Thread:
    """Another connection holds SQLite's write lock for `seconds` (as a busy worker would)."""
    ready = threading.Event()

    def hold() -> None:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        con.execute("ROLLBACK")
        con.close()

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait()
    return thread


def impatient_write(path):
    """A write that gives up on SQLite's lock at once (no busy timeout)."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})

    def write() -> None:
        with engine.begin() as conn:
            conn.execute(text("insert into tmaf_schema_version (version, created_at) values (99, '2026-01-01')"))

    return engine, write


def test_a_refused_connection_is_transient_and_a_constraint_is_not(sqlite_file):
    refused = error_of(lambda: connect(UNREACHABLE))
    assert isinstance(refused, OperationalError) and transient_kind(refused) == "disconnected"
    assert storage_fault_message(refused) is None
    engine = make_engine(f"sqlite:///{sqlite_file}")

    def insert_again() -> None:
        with engine.begin() as conn:
            conn.execute(text("insert into tmaf_schema_version (version) select version from tmaf_schema_version"))

    duplicate = error_of(insert_again)
    engine.dispose()
    assert isinstance(duplicate, IntegrityError) and transient_kind(duplicate) is None


def test_a_locked_sqlite_database_is_waited_for(sqlite_file):
    engine, write = impatient_write(sqlite_file)
    holder = hold_write_lock(sqlite_file, 0.6)
    locked = error_of(write)
    assert transient_kind(locked) == "locked"
    patience = Patience("here", limit_s=30)
    patience.call(write)  # succeeds once the lock is released
    holder.join()
    engine.dispose()
    assert patience.retries["locked"] > 0 and patience.waited_s > 0.3


def test_past_the_limit_one_line_names_the_server_without_its_password():
    waits, start = [], time.monotonic()
    patience = Patience(redact(UNREACHABLE), limit_s=0.5, on_wait=lambda kind, exc: waits.append(kind))
    with pytest.raises(DatabaseUnavailable) as raised:
        patience.call(lambda: connect(UNREACHABLE))
    message = str(raised.value)
    assert message.startswith("the database postgresql://u:***@127.0.0.1:1/x did not answer for 0.5 s")
    assert "Connection refused" in message and "secret" not in message and len(message.splitlines()) == 1
    assert waits == ["disconnected"] and patience.retries["disconnected"] > 1
    assert 0.5 <= time.monotonic() - start < 10


def test_other_errors_are_not_retried(sqlite_file):
    calls = []

    def bad() -> None:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        Patience("here").call(bad)
    assert calls == [1]


def test_a_read_only_sqlite_database_is_a_storage_fault(sqlite_file):
    url = f"sqlite:///file:{sqlite_file}?mode=ro&uri=true"
    engine = create_engine(url)

    def write() -> None:
        with engine.begin() as conn:
            conn.execute(text("insert into tmaf_schema_version (version, created_at) values (99, '2026-01-01')"))

    with pytest.raises(StorageFault, match="the file or its folder is read-only .attempt to write a readonly "
                                           "database.; what it holds is intact: make both writable"):
        Patience("here").call(write)
    engine.dispose()


def test_connect_args_bound_a_dead_server_but_leave_the_urls_own():
    from sqlalchemy.engine import make_url

    assert postgres_connect_args(make_url(UNREACHABLE).query)["tcp_user_timeout"] == 30_000
    own = postgres_connect_args(make_url(UNREACHABLE + "?connect_timeout=3").query)
    assert "connect_timeout" not in own and own["keepalives"] == 1


@pytest.mark.postgres
def test_a_server_that_ends_the_connection_is_transient(postgres_url):
    """`pg_ctl restart -m fast` ends every session ("terminating connection due to administrator
    command"); so does pg_terminate_backend, on one."""
    engine = make_engine(postgres_url)
    admin = make_engine(postgres_url)
    with engine.connect() as conn:
        pid = conn.execute(text("select pg_backend_pid()")).scalar()
        with admin.begin() as other:
            other.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
        ended = error_of(lambda: conn.execute(text("select 1")))
    assert transient_kind(ended) == "disconnected"

    def select_one() -> int:
        with engine.connect() as fresh:
            return fresh.execute(text("select 1")).scalar()

    assert Patience("here").call(select_one) == 1  # the pool opened a fresh connection by itself
    engine.dispose()
    admin.dispose()
