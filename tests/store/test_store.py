"""The results store's contract, run on every backend: SQLite and PostgreSQL (when one is reachable).

Claims, the unique indexes, the lost-run sweep with its crash cap, SIGKILL recovery of a real worker
process, and four processes racing for claims. `.ci/run` starts the PostgreSQL server.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from tmafbench.core import EpochRecord, RunStatus, TrialResult
from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database, redact
from tmafbench.store.export import query, runs_frame
from tmafbench.store.repository import Limits, Repository
from tmafbench.store.schema import Run, utcnow
from tmafbench.store.scratch import scratch_database
from tmafbench.study.cells import cells_hash
from tmafbench.study.design import parse_design

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

LIMITS = Limits(max_retries=2, max_crashes=2)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'r.db'}"
        return
    base = request.getfixturevalue("postgres_url")  # skips without a server
    with scratch_database(base) as fresh:
        yield fresh


@pytest.fixture
def repo(url):
    db = Database(url)
    db.create_all()
    yield Repository(db)
    db.dispose()


def new_study(repo: Repository, cells: int = 3, name: str = "store") -> int:
    plans = parse_design(SPEC, [f"axes.seeds={cells}", f'name="{name}"']).cells
    return repo.create_study(name=name, description="", spec={"max_retries": 2}, spec_hash=cells_hash(plans),
                             reference=None, version="0", git_commit=None, cells=plans)


@pytest.fixture
def study_id(repo):
    return new_study(repo)


def result(status="completed", value=0.5):
    epoch = EpochRecord(epoch=1, train_loss=0.1, metrics={"rel_l2": value, "mse": float("nan")}, epoch_time_s=0.01,
                        eval_time_s=0.001, samples_per_s=6400.0, lr=1e-3)
    return TrialResult(status=status, metric_name="rel_l2", metric_direction="minimize", epochs=[epoch],
                       final_metrics={"rel_l2": value, "train_loss": 0.1}, total_train_time_s=0.01, num_params=25,
                       artifacts={"predictions": {"x": [0.0], "target": [0.0], "prediction": [0.1]}})


def claim(repo, study_id):
    return repo.claim_cell(study_id, LIMITS, host="h", worker="w", device="cpu")


def age(repo, run_id: int, seconds: float) -> None:
    """Make a run's last heartbeat `seconds` old, as if its worker had died then."""
    with repo.db.session() as s:
        s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def test_sqlite_pragmas(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    db.create_all()
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000
    db.dispose()


def test_redact_hides_the_password():
    assert redact("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert "secret" not in redact("postgresql+psycopg2://u:secret@h/d")


def test_claims_take_distinct_cells_then_none(repo, study_id):
    claims = [claim(repo, study_id) for _ in range(3)]
    assert len({c.cell_id for c in claims}) == 3 and all(c.attempt == 1 for c in claims)
    assert claim(repo, study_id) is None
    counts = repo.counts(study_id, LIMITS)
    assert (counts.total, counts.running, counts.pending, counts.done) == (3, 3, 0, False)
    assert repo.pending_configs(study_id, LIMITS) == []


def test_finish_stores_everything_and_nan_as_null(repo, study_id):
    c = claim(repo, study_id)
    assert repo.finish_run(c.run_id, result()) == RunStatus.COMPLETED
    frame = runs_frame(repo.db, "store")
    row = frame[frame["status"] == "completed"].iloc[0]
    assert row["rel_l2"] == 0.5 and row["time_total_train_s"] == 0.01
    with repo.db.session() as s:
        nulls = s.execute(text("select value from tmaf_epoch_metric where name = 'mse'")).scalars().all()
        arts = s.execute(text("select name from tmaf_artifact")).scalars().all()
        stored = s.scalar(select(Run.status).where(Run.id == c.run_id))
    assert nulls == [None] and arts == ["predictions"] and stored == "completed" and type(stored) is str
    assert repo.counts(study_id, LIMITS).completed == 1


def test_one_completed_run_per_cell(repo, study_id):
    first = claim(repo, study_id)
    repo.mark_interrupted(first.run_id, "test")
    second = claim(repo, study_id)
    assert second.cell_id == first.cell_id and second.attempt == 2  # interrupted cells come back first by id
    assert repo.finish_run(second.run_id, result()) == RunStatus.COMPLETED
    # a stale verdict that was wrong: the first run also finishes; it must not count twice
    assert repo.finish_run(first.run_id, result()) == RunStatus.INTERRUPTED
    assert repo.duplicate_completions(study_id) == 0
    with pytest.raises(IntegrityError):
        with repo.db.session() as s:
            s.add(Run(cell_id=first.cell_id, attempt=9, status="completed", host="h", device="cpu"))


def test_one_run_per_cell_and_attempt(repo, study_id):
    c = claim(repo, study_id)
    with pytest.raises(IntegrityError):
        with repo.db.session() as s:
            s.add(Run(cell_id=c.cell_id, attempt=c.attempt, status="running", host="h", device="cpu"))


def test_failures_are_retried_until_max_retries(repo, study_id):
    for attempt in (1, 2):
        c = claim(repo, study_id)
        assert c.attempt == attempt
        repo.mark_failed(c.run_id, "boom")
    counts = repo.counts(study_id, LIMITS)
    assert counts.failed == 1 and counts.crashed == 0  # final after 2 failed attempts
    assert {claim(repo, study_id).cell_id for _ in range(2)}.isdisjoint({c.cell_id})
    assert claim(repo, study_id) is None


def test_diverged_is_final(repo, study_id):
    c = claim(repo, study_id)
    repo.finish_run(c.run_id, result(status="diverged", value=float("nan")))
    assert repo.counts(study_id, LIMITS).diverged == 1
    others = {claim(repo, study_id).cell_id for _ in range(2)}
    assert c.cell_id not in others


def test_lost_runs_are_swept_requeued_and_capped(repo, study_id):
    """A run without heartbeat is lost; its cell runs again, until max_crashes attempts were lost."""
    c = claim(repo, study_id)
    repo.set_trial_number(c.run_id, 7)
    assert repo.mark_stale_runs(study_id, grace_s=30) == []
    age(repo, c.run_id, 120)
    assert repo.mark_stale_runs(study_id, grace_s=30) == [c.run_id]
    with repo.db.session() as s:
        run = s.get(Run, c.run_id)
        assert run.status == "lost" and "heartbeat" in run.error
    assert repo.heartbeat(c.run_id) is False  # a late worker learns that its run was taken from it
    again = claim(repo, study_id)
    assert (again.cell_id, again.attempt) == (c.cell_id, 2)
    age(repo, again.run_id, 120)
    assert len(repo.mark_stale_runs(study_id, grace_s=30)) == 1
    counts = repo.counts(study_id, LIMITS)
    assert counts.crashed == 1 and counts.failed == 0 and counts.pending == 2  # the cell is given up
    assert {claim(repo, study_id).cell_id for _ in range(2)}.isdisjoint({c.cell_id})
    assert claim(repo, study_id) is None
    # a bigger cap gives it another go
    assert claim_with(repo, study_id, Limits(2, 3)).cell_id == c.cell_id


def claim_with(repo, study_id, limits):
    return repo.claim_cell(study_id, limits, host="h", worker="w", device="cpu")


def test_read_only_query_refuses_writes(repo, study_id):
    url = repo.db.url
    assert list(query(url, "select count(*) as n from tmaf_cell")["n"]) == [3]
    for sql in ("delete from tmaf_cell", "insert into tmaf_schema_version (version) values (9)",
                "create table x (a int)", "drop table tmaf_run", "update tmaf_study set name = 'x'"):
        with pytest.raises(TmafbenchError, match="read-only"):
            query(url, sql)
    assert list(query(url, "select count(*) as n from tmaf_cell")["n"]) == [3]


def test_query_errors_are_one_line(repo):
    with pytest.raises(TmafbenchError, match="query failed.*(no such table|does not exist)"):
        query(repo.db.url, "select * from nope")
    with pytest.raises(TmafbenchError, match="no database file"):
        query("sqlite:////nonexistent/dir/x.db", "select 1")


# --- several processes -------------------------------------------------------------------------


def _claim_until_empty(url: str, study_id: int, worker: str, out) -> None:
    """A racing worker without training: claim, finish at once, until nothing is left."""
    db = Database(url)
    repo = Repository(db)
    done = 0
    while (c := repo.claim_cell(study_id, LIMITS, host="h", worker=worker, device="cpu")) is not None:
        repo.finish_run(c.run_id, result())
        done += 1
    db.dispose()
    out.put(done)


@pytest.mark.slow
def test_four_processes_racing_for_claims(repo, url):
    study_id = new_study(repo, cells=60, name="race")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_until_empty, args=(url, study_id, f"w{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert sum(out.get(timeout=10) for _ in procs) == 60  # every cell once, no cell twice
    counts = repo.counts(study_id, LIMITS)
    assert counts.completed == 60 and counts.done and repo.duplicate_completions(study_id) == 0
    assert repo.runs_by_status(study_id) == {"completed": 60}


SLOW = """
name = "killme"
[defaults]
task = "sine-sum"
task_params = { n = 1, train_size = 1024, test_size = 64 }
model_params = { depth = 2, width = 32 }
training = { epochs = 20, batch_size = 16 }
[axes]
seeds = 1
[[axes.activations]]
name = "relu"
"""

WORKER = (
    "import sys; from tmafbench.study.loop import worker_loop; from tmafbench.study.worker import WorkerOptions; "
    "worker_loop('killme', sys.argv[1], options=WorkerOptions(heartbeat_s=0.3, grace_s=2.0, poll_s=0.2))"
)


@pytest.mark.slow
def test_sigkilled_worker_is_recovered(url):
    """A real worker process SIGKILLed mid-trial: its run is swept as lost, its Optuna trial failed, and
    the cell completes as attempt 2."""
    import optuna

    from tmafbench.study.lifecycle import prepare
    from tmafbench.study.worker import WorkerOptions
    from tmafbench.study.loop import worker_loop

    info = prepare(parse_design(SLOW), url)
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = Database(url)
    repo = Repository(db)
    deadline = time.time() + 120
    while not repo.running_runs(info.id):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    time.sleep(0.5)  # mid-trial, not at the claim
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stats = worker_loop("killme", url, options=WorkerOptions(heartbeat_s=0.3, grace_s=2.0, poll_s=0.2))
    assert stats.stale_marked == 1 and stats.completed == 1
    assert repo.runs_by_status(info.id) == {"lost": 1, "completed": 1}
    assert repo.counts(info.id, info.limits).done
    db.dispose()
    trials = optuna.load_study(study_name="killme", storage=url).trials
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "FAIL"]  # the dead worker's trial is closed, not RUNNING forever


def same_key(config):
    """Every cell of the test study packs with every other."""
    return "all"


def test_packs_are_claimed_together_and_retried_one_by_one_after_a_crash(repo):
    study_id = new_study(repo, cells=6, name="packs")
    claim_many = lambda: repo.claim_cells(study_id, LIMITS, host="h", worker="w", device="cpu", most=4, key=same_key)  # noqa: E731
    pack = claim_many()
    assert len(pack) == 4 and len({c.cell_id for c in pack}) == 4
    rest = claim_many()
    assert len(rest) == 2  # what is left of the queue
    assert repo.claim_cells(study_id, LIMITS, host="h", worker="w", device="cpu", most=4) == []
    for c in pack:  # the packed worker died: every run of its pack is lost
        age(repo, c.run_id, 120)
    assert len(repo.mark_stale_runs(study_id, grace_s=30)) == 4
    retried = [claim_many() for _ in range(4)]
    assert [len(r) for r in retried] == [1, 1, 1, 1]  # one by one: the cell that crashed it runs alone
    assert sorted(r[0].cell_id for r in retried) == sorted(c.cell_id for c in pack)
    assert all(r[0].attempt == 2 for r in retried)


def test_finishing_again_after_a_lost_answer_writes_nothing_twice(repo, study_id):
    """A COMMIT can succeed while its answer is lost with the connection: the retried write finds its
    own result and stores nothing more."""
    c = claim(repo, study_id)
    assert repo.finish_run(c.run_id, result()) == RunStatus.COMPLETED
    assert repo.finish_run(c.run_id, result()) == RunStatus.COMPLETED
    with repo.db.session() as s:
        assert s.scalar(text("select count(*) from tmaf_final_metric")) == 2  # rel_l2, train_loss: once
    assert repo.duplicate_completions(study_id) == 0


def test_a_late_result_is_kept_unless_another_run_completed_the_cell(repo, study_id):
    """A worker away past the grace period finds its run swept as lost. Its finished result is still
    stored when nobody completed the cell meanwhile, and recorded as a redundant attempt otherwise."""
    first, second = claim(repo, study_id), claim(repo, study_id)
    for c in (first, second):
        age(repo, c.run_id, 120)
    assert len(repo.mark_stale_runs(study_id, grace_s=30)) == 2
    assert repo.heartbeat(first.run_id) is False
    assert repo.finish_run(first.run_id, result()) == RunStatus.COMPLETED  # nobody else has the cell
    retry = claim(repo, study_id)  # the other cell, taken over as attempt 2 and completed there
    assert (retry.cell_id, retry.attempt) == (second.cell_id, 2)
    assert repo.finish_run(retry.run_id, result()) == RunStatus.COMPLETED
    assert repo.finish_run(second.run_id, result(value=0.4)) == RunStatus.INTERRUPTED  # late and redundant
    with repo.db.session() as s:
        runs = {r.id: (r.status, r.error) for r in s.scalars(select(Run))}
        kept = s.scalar(text(f"select count(*) from tmaf_final_metric where run_id = {second.run_id}"))
    assert runs[first.run_id] == ("completed", None) and runs[retry.run_id] == ("completed", None)
    assert runs[second.run_id][0] == "interrupted" and runs[second.run_id][1].startswith("redundant")
    assert kept == 0 and repo.duplicate_completions(study_id) == 0
    assert repo.counts(study_id, LIMITS).completed == 2
