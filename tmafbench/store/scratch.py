"""Scratch databases for benchmarks and tests: a temporary SQLite file, or a new PostgreSQL database."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tmafbench.store.database import is_sqlite, normalize_url


class scratch_database:
    """A fresh database per run: a temporary SQLite file, or a new PostgreSQL database on that server."""

    def __init__(self, base_url: str | None):
        self.base_url = normalize_url(base_url) if base_url else None
        self.url = ""

    def __enter__(self) -> str:
        if self.base_url is None or is_sqlite(self.base_url):
            self._tmp = tempfile.TemporaryDirectory(prefix="tmafbench-bench-")
            self.url = f"sqlite:///{Path(self._tmp.name) / 'bench.db'}"
            return self.url
        self._name = f"tmafbench_bench_{uuid.uuid4().hex[:8]}"
        self._admin = create_engine(self.base_url, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self._name}"'))
        self.url = make_url(self.base_url).set(database=self._name).render_as_string(hide_password=False)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        if self.base_url is None or is_sqlite(self.base_url):
            self._tmp.cleanup()
            return
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)'))
        self._admin.dispose()
