"""Engines for the results store: SQLite (WAL, busy timeout, IMMEDIATE writes) or PostgreSQL.

One URL names one database that holds both Optuna's tables and ours (`tmaf_*`). The parent
process calls `Database.create_all()` once, before any worker starts (docs/design.md section 4).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from tmafbench.errors import TmafbenchError
from tmafbench.store.resilience import postgres_connect_args, storage_fault_message
from tmafbench.store.schema import SCHEMA_VERSION, Base, SchemaVersion

BUSY_TIMEOUT_MS = 60_000


def redact(url: str) -> str:
    """The URL with its password replaced by `***`: safe to print or store."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL at all: say nothing about it
        return "<invalid url>"


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only that is installed.

    A malformed URL, or PostgreSQL without any driver, is a one-line TmafbenchError.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise TmafbenchError(
            "not a database URL (the credentials are not echoed); expected sqlite:///FILE or "
            "postgresql://USER@HOST/DB") from None
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise TmafbenchError(
            f"unknown database backend {parsed.drivername!r} in the storage URL; use sqlite:///FILE or "
            "postgresql://USER@HOST/DB") from None
    if parsed.drivername != "postgresql":
        return url
    import importlib.util

    have_psycopg = importlib.util.find_spec("psycopg") is not None
    if not have_psycopg and importlib.util.find_spec("psycopg2") is not None:
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    if not have_psycopg:
        raise TmafbenchError("PostgreSQL storage needs a driver: pip install 'tmafbench[postgres]' (psycopg 3)")
    return url


def database_error_message(exc: BaseException, url: str | None = None) -> str | None:
    """One line for an error of the database layer (SQLAlchemy, its driver, or Optuna's storage
    wrapping them), naming the database without its password; None for any other error."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, SQLAlchemyError):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    fault = storage_fault_message(exc, redact(url) if url else "")
    if fault is not None:  # a full disk, a read-only file: say what to fix
        return fault
    orig = getattr(seen, "orig", None)
    detail = str(orig if orig is not None else seen).strip().splitlines()
    where = f" at {redact(url)}" if url else ""
    return f"database error{where}: {detail[0] if detail else type(seen).__name__}"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def add_sqlite_pragmas(engine: Engine) -> None:
    """WAL, busy timeout and foreign keys on every connection; writers take the lock up front.

    pysqlite starts transactions lazily, so a transaction that reads and then writes must upgrade
    its lock, and under WAL that upgrade fails at once ("database is locked") whatever the busy
    timeout. Emitting `BEGIN IMMEDIATE` ourselves (SQLAlchemy's documented pysqlite recipe) makes
    every transaction wait for the write lock in the busy handler instead.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")  # persistent; a cheap no-op once set
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")  # safe under WAL, far fewer fsyncs
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`. SQLite: the pragmas above; PostgreSQL: pre-ping, a small pool."""
    url = normalize_url(url)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Each process builds its own engine after it starts (spawn), so pooled connections are
        # never shared across processes; the pool saves a connect + pragmas per transaction.
        engine = create_engine(url, pool_size=2, max_overflow=4, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, **kwargs)
        add_sqlite_pragmas(engine)
        return engine
    return create_engine(url, pool_size=2, max_overflow=4, **postgres_engine_kwargs(url), **kwargs)


def postgres_engine_kwargs(url: str) -> dict[str, Any]:
    """For every PostgreSQL engine (ours and Optuna's): test a pooled connection before use (a
    restarted server leaves dead ones) and bound how long a dead server can stall a call."""
    return {"pool_pre_ping": True, "connect_args": postgres_connect_args(make_url(url).query)}


class Database:
    """The results store behind one URL: engine, sessions, table creation."""

    def __init__(self, url: str, *, must_exist: bool = False):
        """`must_exist=True` (commands that only read) refuses a SQLite path with no file, instead
        of silently creating an empty database at a mistyped path."""
        if must_exist:
            _require_sqlite_file(url)
        self.url = url
        self.engine = make_engine(url)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def safe_url(self) -> str:
        return redact(self.url)

    def create_all(self) -> None:
        """Create our tables and the schema version row (parent process, before the workers), and
        add the nullable columns a database made by an earlier release lacks."""
        Base.metadata.create_all(self.engine)
        self.add_missing_columns()
        with self.session() as session:
            if session.scalar(select(SchemaVersion.version)) is None:
                session.add(SchemaVersion(version=SCHEMA_VERSION))

    def add_missing_columns(self) -> list[str]:
        """Add ADDED_COLUMNS missing from an existing database (nullable: old rows read as NULL);
        returns "table.column" of each one added. Idempotent."""
        added = []
        for table, column in ADDED_COLUMNS:
            if not inspect(self.engine).has_table(table):
                continue
            present = {c["name"] for c in inspect(self.engine).get_columns(table)}
            if column.name in present:
                continue
            kind = column.type.compile(dialect=self.engine.dialect)
            guard = " IF NOT EXISTS" if self.engine.dialect.name == "postgresql" else ""  # two processes at once
            with self.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN{guard} {column.name} {kind}"))
            added.append(f"{table}.{column.name}")
        return added

    def has_tables(self) -> bool:
        return inspect(self.engine).has_table("tmaf_study")

    def check_schema(self) -> None:
        """Refuse a database written by another schema version, or one without our tables."""
        if not self.has_tables():
            raise TmafbenchError(f"no tmafbench results in {self.safe_url}; run `tmafbench study run` first")
        with self.session() as session:
            version = session.scalar(select(SchemaVersion.version))
        if version != SCHEMA_VERSION:
            raise TmafbenchError(f"results schema version {version} in {self.safe_url}; this tmafbench expects {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One short transaction: commit on success, roll back on error."""
        with self.Session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


# Nullable columns added after the first release, which `create_all` adds to older databases.
ADDED_COLUMNS = (("tmaf_environment", Base.metadata.tables["tmaf_environment"].c.details),)


def sqlite_file_missing(url: str) -> bool:
    """True for a SQLite URL whose file does not exist yet (connecting would create it)."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return False
    return not Path(parsed.database).expanduser().is_file()


def _require_sqlite_file(url: str, missing: str = "no results database at {path} (pass --storage or set TMAFBENCH_STORAGE)") -> None:
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).expanduser().resolve()
        if not path.is_file():
            raise TmafbenchError(missing.format(path=path))


def read_only_engine(url: str, missing: str = "no database file at {path}") -> Engine:
    """An engine that cannot write: SQLite opened with `mode=ro`; PostgreSQL read-only transactions.

    `missing` is the error message (with `{path}`) when the SQLite file does not exist.
    """
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise TmafbenchError("a read-only query needs a SQLite file, not an in-memory database")
        path = Path(database).expanduser().resolve()
        if not path.is_file():
            raise TmafbenchError(missing.format(path=path))
        ro_url = f"sqlite:///file:{path}?mode=ro&uri=true"
        engine = create_engine(ro_url, poolclass=NullPool)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA query_only = ON")  # belt and braces over mode=ro

        return engine
    return create_engine(
        url,
        poolclass=NullPool,
        connect_args={"options": "-c default_transaction_read_only=on"},
    )
