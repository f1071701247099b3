"""What the store holds about runs, for tests that check how a study ended (importable from any test)."""

from __future__ import annotations

from sqlalchemy import select

from tmafbench.store.database import Database
from tmafbench.store.schema import Cell, Run


def runs_by_cell(url: str) -> dict[str, list[tuple[int, str]]]:
    """{cell hash: [(attempt, status), ...] in attempt order}."""
    db = Database(url)
    with db.session() as s:
        rows = s.execute(select(Cell.config_hash, Run.attempt, Run.status).join(Run).order_by(Run.attempt)).all()
    db.dispose()
    out: dict[str, list[tuple[int, str]]] = {}
    for config_hash, attempt, status in rows:
        out.setdefault(config_hash, []).append((attempt, status))
    return out
