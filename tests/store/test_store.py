"""Results store: pragmas, claims, one completed run per cell, stale runs, read-only queries."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database, redact
from tmafbench.store.export import query, runs_frame
from tmafbench.store.repository import Repository
from tmafbench.store.schema import Run
from tmafbench.study.cells import cells_hash, expand
from tmafbench.study.spec import parse_spec
from tmafbench.training.result import EpochRecord, TrialResult

SPEC = """
name = "store"
[defaults]
task = "sine-sum"
task_params = { n = 1, train_size = 64, test_size = 64 }
training = { epochs = 1 }
[axes]
seeds = 3
[[axes.activations]]
name = "relu"
"""


@pytest.fixture
def repo(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    db.create_all()
    yield Repository(db)
    db.dispose()


@pytest.fixture
def study_id(repo):
    cells = expand(parse_spec(SPEC))
    return repo.create_study(name="store", description="", spec={"max_retries": 2}, spec_hash=cells_hash(cells),
                             reference=None, version="0", git_commit=None, cells=cells)


def result(status="completed", value=0.5):
    epoch = EpochRecord(epoch=1, train_loss=0.1, metrics={"rel_l2": value, "mse": float("nan")}, epoch_time_s=0.01,
                        eval_time_s=0.001, samples_per_s=6400.0, lr=1e-3)
    return TrialResult(status=status, metric_name="rel_l2", metric_direction="minimize", epochs=[epoch],
                       final_metrics={"rel_l2": value, "train_loss": 0.1}, total_train_time_s=0.01, num_params=25,
                       artifacts={"predictions": {"x": [0.0], "target": [0.0], "prediction": [0.1]}})


def claim(repo, study_id):
    return repo.claim_cell(study_id, 2, host="h", worker="w", device="cpu")


def test_sqlite_pragmas(repo):
    with repo.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000


def test_redact_hides_the_password():
    assert redact("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert "secret" not in redact("postgresql+psycopg2://u:secret@h/d")


def test_claims_take_distinct_cells_then_none(repo, study_id):
    claims = [claim(repo, study_id) for _ in range(3)]
    assert len({c.cell_id for c in claims}) == 3 and all(c.attempt == 1 for c in claims)
    assert claim(repo, study_id) is None
    counts = repo.counts(study_id, 2)
    assert (counts.total, counts.running, counts.pending) == (3, 3, 0)


def test_finish_stores_everything_and_nan_as_null(repo, study_id):
    c = claim(repo, study_id)
    assert repo.finish_run(c.run_id, result()) == "completed"
    frame = runs_frame(repo.db, "store")
    row = frame.iloc[0]
    assert row["status"] == "completed" and row["rel_l2"] == 0.5 and row["time_total_train_s"] == 0.01
    with repo.db.session() as s:
        nulls = s.execute(text("select value from tmaf_epoch_metric where name = 'mse'")).scalars().all()
        arts = s.execute(text("select name from tmaf_artifact")).scalars().all()
    assert nulls == [None] and arts == ["predictions"]
    assert repo.counts(study_id, 2).completed == 1


def test_one_completed_run_per_cell(repo, study_id):
    first = claim(repo, study_id)
    repo.mark_interrupted(first.run_id, "test")
    second = claim(repo, study_id)
    assert second.cell_id == first.cell_id and second.attempt == 2  # interrupted cells come back first by id
    assert repo.finish_run(second.run_id, result()) == "completed"
    # a stale verdict that was wrong: the first run also finishes; it must not count twice
    assert repo.finish_run(first.run_id, result()) == "interrupted"
    assert repo.duplicate_completions(study_id) == 0
    with pytest.raises(IntegrityError):
        with repo.db.session() as s:
            s.add(Run(cell_id=first.cell_id, attempt=9, status="completed", host="h", device="cpu"))


def test_failures_are_retried_until_max_retries(repo, study_id):
    for attempt in (1, 2):
        c = claim(repo, study_id)
        assert c.attempt == attempt
        repo.mark_failed(c.run_id, "boom")
    counts = repo.counts(study_id, 2)
    assert counts.failed == 1  # final after 2 failed attempts
    assert {claim(repo, study_id).cell_id for _ in range(2)}.isdisjoint({c.cell_id})


def test_diverged_is_final(repo, study_id):
    c = claim(repo, study_id)
    repo.finish_run(c.run_id, result(status="diverged", value=float("nan")))
    assert repo.counts(study_id, 2).diverged == 1
    others = {claim(repo, study_id).cell_id for _ in range(2)}
    assert c.cell_id not in others


def test_stale_runs_are_interrupted_and_requeued(repo, study_id):
    c = claim(repo, study_id)
    assert repo.mark_stale_runs(study_id, grace_s=30) == 0
    time.sleep(0.3)
    assert repo.mark_stale_runs(study_id, grace_s=0.1) == 1
    with repo.db.session() as s:
        run = s.get(Run, c.run_id)
        assert run.status == "interrupted" and "heartbeat" in run.error


def test_read_only_query_refuses_writes(repo, study_id):
    url = repo.db.url
    assert list(query(url, "select count(*) as n from tmaf_cell")["n"]) == [3]
    for sql in ("delete from tmaf_cell", "insert into tmaf_schema_version (version) values (9)",
                "create table x (a int)", "drop table tmaf_run", "update tmaf_study set name = 'x'"):
        with pytest.raises(TmafbenchError, match="read-only"):
            query(url, sql)
    assert list(query(url, "select count(*) as n from tmaf_cell")["n"]) == [3]


def test_query_errors_are_one_line(repo):
    with pytest.raises(TmafbenchError, match="query failed.*no such table"):
        query(repo.db.url, "select * from nope")
    with pytest.raises(TmafbenchError, match="no database file"):
        query("sqlite:////nonexistent/dir/x.db", "select 1")
