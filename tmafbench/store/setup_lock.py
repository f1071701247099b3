"""One creator at a time: a lock, per database, around creating tables and studies.

Several `study create` / `study run` of one file started at the same moment (every task of a job
array, two terminals) would otherwise race: both see no tables or no study, both create, and one
fails on a unique name, on Optuna's `alembic_version` row, or (PostgreSQL) on a table or type that
the other created a moment before. Under this lock the first creates and the others, once they
hold it in turn, find everything there and resume.

- PostgreSQL: a session-level advisory lock on its own connection (`pg_advisory_lock`), which
  every machine sharing the database sees; the server drops it if the holder dies.
- SQLite: an exclusive `flock` on the folder that holds the file (SQLite is one machine's, never
  a network file system's). Locking the folder leaves no lock file behind, and the database file
  itself may not exist yet: it is created only once the study's data has been checked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tmafbench.store.database import is_sqlite, normalize_url, postgres_engine_kwargs

# pg_advisory_lock's key: any bigint no other program uses on this database (b"tmafbset", cut to 63 bits).
ADVISORY_KEY = int.from_bytes(b"tmafbset", "big") & (2**63 - 1)


@contextlib.contextmanager
def setup_lock(url: str) -> Iterator[None]:
    """Hold the database's creation lock for the duration of the block (waits for other holders)."""
    url = normalize_url(url)
    if is_sqlite(url):
        with _folder_lock(url):
            yield
        return
    with _advisory_lock(url):
        yield


@contextlib.contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    engine = create_engine(url, poolclass=NullPool, **postgres_engine_kwargs(url))
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_KEY})
            conn.commit()  # the lock is the session's, not the transaction's
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
                conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _folder_lock(url: str) -> Iterator[None]:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        yield  # one connection's private database, or a URI we do not parse: nothing to share
        return
    folder = Path(database).expanduser().resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: a lock file beside the database
        from filelock import FileLock

        with FileLock(str(folder / f".{Path(database).name}.setup.lock")):
            yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed, also if this process dies
        yield
    finally:
        os.close(fd)
