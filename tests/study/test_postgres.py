"""The same scheduler on PostgreSQL: a 2-worker study in a fresh database, dropped afterwards."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tmafbench.store.database import Database
from tmafbench.store.export import query
from tmafbench.store.repository import Repository
from tmafbench.store.schema import Cell, Run
from tmafbench.errors import TmafbenchError
from tmafbench.store.scratch import scratch_database
from tmafbench.study.lifecycle import prepare
from tmafbench.study.local import run_local
from tmafbench.study.design import parse_design

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_two_workers_on_postgres(postgres_url, tiny_spec_text):
    with scratch_database(postgres_url) as url:
        info = prepare(parse_design(tiny_spec_text, ["axes.seeds=3"]), url)
        outcome = run_local(info, url, ["cpu", "cpu"])
        assert outcome.counts.done and outcome.counts.completed == 6
        db = Database(url)
        with db.session() as s:
            attempts = s.execute(select(Cell.config_hash, Run.attempt, Run.status).join(Run)).all()
        assert len(attempts) == 6 and {(a, st) for _h, a, st in attempts} == {(1, "completed")}
        assert Repository(db).duplicate_completions(info.id) == 0
        db.dispose()
        # queries on PostgreSQL refuse writes too: the allowlist before the server is asked (the
        # read-only transaction behind it: tests/cli/test_results.py)
        assert list(query(url, "select count(*) as n from tmaf_run")["n"]) == [6]
        with pytest.raises(TmafbenchError, match="refused: DELETE is not allowed"):
            query(url, "delete from tmaf_run")
        assert list(query(url, "select count(*) as n from tmaf_run")["n"]) == [6]
