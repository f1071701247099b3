"""Real multi-process studies on SQLite: 2 workers, resume after SIGKILL and Ctrl-C, redesign."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from tmafbench.store.database import Database
from tmafbench.store.repository import Repository
from tmafbench.store.schema import Cell, Run
from tmafbench.study.design import parse_design
from tmafbench.study.lifecycle import SpecChangedError, prepare
from tmafbench.study.worker import WorkerOptions
from tmafbench.study.local import parse_devices, resolve_devices, run_local
from tmafbench.study.loop import worker_loop

from run_records import runs_by_cell
from tiny_specs import study_toml


def test_resolve_devices():
    assert resolve_devices("cpu", 3) == ["cpu"] * 3
    assert parse_devices("cuda:0,cuda:1", None) == ["cuda:0", "cuda:1"]
    assert parse_devices("cuda:0,cuda:1", 3) == ["cuda:0", "cuda:1", "cuda:0"]
    with pytest.raises(ValueError, match="not cpu, auto or cuda:N"):
        resolve_devices("gpu0", None)
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        resolve_devices("cpu", 0)


def test_cuda_devices_this_machine_lacks_are_refused():
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count:
        assert resolve_devices(",".join(f"cuda:{i}" for i in range(count)), None) == [f"cuda:{i}" for i in range(count)]
        with pytest.raises(ValueError, match=f"'cuda:{count}' requested but this machine has {count} CUDA device"):
            resolve_devices(f"cuda:0,cuda:{count}", None)
    else:
        with pytest.raises(ValueError, match="'cuda:0' requested but CUDA is not available on this machine"):
            resolve_devices("cuda:0,cuda:1", None)


@pytest.mark.slow
def test_two_worker_processes_run_every_cell_once(tiny_spec_text, sqlite_url):
    spec = parse_design(tiny_spec_text, ["axes.seeds=3"])
    info = prepare(spec, sqlite_url)
    seen = []
    outcome = run_local(info, sqlite_url, ["cpu", "cpu"], progress=lambda phases, eta: seen.append(phases[-1][1]))
    assert outcome.counts.done and outcome.counts.completed == 6 and outcome.counts.failed == 0
    runs = runs_by_cell(sqlite_url)
    assert len(runs) == 6 and all(r == [(1, "completed")] for r in runs.values())
    assert len(outcome.workers) == 2 and sum(w.runs for w in outcome.workers) == 6
    assert sum(w.locked_errors for w in outcome.workers) == 0
    assert seen and seen[-1].total == 6
    # Optuna mirrors each run as a trial with the cell hash as a user attribute
    import optuna

    trials = optuna.load_study(study_name="tiny", storage=sqlite_url).trials
    assert sorted(t.user_attrs["cell"] for t in trials) == sorted(runs)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # running again resumes: nothing left to do, nothing runs twice
    again = prepare(spec, sqlite_url)
    assert not again.created
    stats = worker_loop("tiny", sqlite_url, options=WorkerOptions(poll_s=0.1))
    assert stats.runs == 0 and runs_by_cell(sqlite_url) == runs


REFERENCE_TAIL = """
[reference]
source = "paper Table 9"
metric = "rel_l2"
rows = [{ activation = "relu", value = 0.25 }]
"""


def test_documentation_edits_are_stored_on_resume_without_a_new_design(tiny_spec_text, sqlite_url):
    first = prepare(parse_design(tiny_spec_text), sqlite_url)
    edited = tiny_spec_text.replace('description = "two activations, two seeds"', 'description = "now with the paper"')
    again = prepare(parse_design(edited + REFERENCE_TAIL), sqlite_url)
    assert again.id == first.id and not again.created
    assert again.message.endswith("updated its description and reference from the file")
    db = Database(sqlite_url)
    study = Repository(db).require_study("tiny")
    assert study.reference == {"source": "paper Table 9", "metric": "rel_l2", "rows": [{"activation": "relu", "value": 0.25}]}
    assert study.description == "now with the paper" and len(Repository(db).cell_hashes(first.id)) == 4
    db.dispose()
    assert prepare(parse_design(edited + REFERENCE_TAIL), sqlite_url).message == "resuming study 'tiny' (4 cells)"
    # [report] (how reports present the results) is documentation too
    report = "\n[report]\nsuccess = [{ metric = 'rel_l2', threshold = 0.5 }]\n"
    again = prepare(parse_design(edited + REFERENCE_TAIL + report), sqlite_url)
    assert again.id == first.id and again.message.endswith("updated its [report] table from the file")
    db = Database(sqlite_url)
    assert Repository(db).require_study("tiny").spec["report"]["success"] == [{"metric": "rel_l2", "threshold": 0.5}]
    db.dispose()


def test_changed_design_is_refused_then_forced(tiny_spec_text, sqlite_url):
    spec = parse_design(tiny_spec_text)
    prepare(spec, sqlite_url)
    worker_loop("tiny", sqlite_url, options=WorkerOptions(poll_s=0.1, max_runs=2))
    changed = parse_design(tiny_spec_text, ["axes.seeds=[1, 2]"])  # seed 0 dropped, seed 2 added
    with pytest.raises(SpecChangedError, match="--new-name.*--force"):
        prepare(changed, sqlite_url)
    other = prepare(changed.renamed("tiny-2"), sqlite_url)
    assert other.created and other.name == "tiny-2"
    before = runs_by_cell(sqlite_url)
    forced = prepare(changed, sqlite_url, force=True)
    assert "kept 2 cells, removed 2, added 2" in forced.message
    db = Database(sqlite_url)
    repo = Repository(db)
    study = repo.require_study("tiny")
    with db.session() as s:
        seeds = sorted(s.scalars(select(Cell.seed).where(Cell.study_id == study.id)))
        kept = {h for h in s.scalars(select(Cell.config_hash).where(Cell.study_id == study.id))}
    db.dispose()
    assert seeds == [1, 1, 2, 2]
    # the results of kept cells survive (the runs of removed cells are gone with them)
    assert {h: r for h, r in before.items() if h in kept} == {h: r for h, r in runs_by_cell(sqlite_url).items()
                                                               if h in before and h in kept}
    # a worker then runs the added cells (the Optuna mirror must accept cells it has not seen)
    stats = worker_loop("tiny", sqlite_url, options=WorkerOptions(poll_s=0.1))
    after = runs_by_cell(sqlite_url)
    assert sorted(after) == sorted(kept) and all(r[-1][1] == "completed" for r in after.values())
    assert stats.runs == len(kept) - sum(1 for h in kept if h in before and before[h][-1][1] == "completed")


SLOW_CELL = study_toml("killme", train_size=1024, depth=2, width=32, epochs=20, batch_size=16, seeds=1,
                       activations=("relu",))

WORKER = (
    "import sys; from tmafbench.study.loop import worker_loop; from tmafbench.study.worker import WorkerOptions; "
    "worker_loop('killme', sys.argv[1], options=WorkerOptions(heartbeat_s=0.3, grace_s=2.0, poll_s=0.2))"
)


def start_worker_and_wait_running(url: str) -> subprocess.Popen:
    # A shell that starts jobs in the background makes them ignore SIGINT, and Python then never
    # installs its KeyboardInterrupt handler: restore the default so the Ctrl-C test means something.
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = runs_by_cell(url)
        if any(status == "running" for r in runs.values() for _a, status in r):
            time.sleep(0.3)  # let it train for a moment: the kill lands mid-trial
            return proc
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the worker never started its trial")


@pytest.mark.slow
def test_ctrl_c_marks_the_run_interrupted_and_it_runs_again(sqlite_url):
    prepare(parse_design(SLOW_CELL), sqlite_url)
    proc = start_worker_and_wait_running(sqlite_url)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    [runs] = runs_by_cell(sqlite_url).values()
    assert runs == [(1, "interrupted")]
    db = Database(sqlite_url)
    with db.session() as s:
        assert "Ctrl-C" in s.scalar(select(Run.error))
    db.dispose()
    stats = worker_loop("killme", sqlite_url, options=WorkerOptions(poll_s=0.2))
    assert stats.stale_marked == 0 and stats.completed == 1
    [runs] = runs_by_cell(sqlite_url).values()
    assert runs == [(1, "interrupted"), (2, "completed")]


CRASHER = (
    "import os, sys; from tmafbench.study.loop import worker_loop; from tmafbench.study.worker import WorkerOptions\n"
    "from tmafbench.training.dispatch import default_trial_fn\n"
    "train = default_trial_fn()\n"
    "def trial(config, on_epoch=None):\n"
    "    if config.seed == 0:\n"
    "        os._exit(9)  # as a segfault or an OOM kill would: no goodbye, no status written\n"
    "    return train(config, on_epoch=on_epoch)\n"
    "worker_loop('tiny', sys.argv[1], trial_fn=trial, options=WorkerOptions(heartbeat_s=0.2, grace_s=0.6, poll_s=0.1))\n"
)


@pytest.mark.slow
def test_a_cell_that_kills_its_worker_is_given_up_after_max_crashes(tiny_spec_text, sqlite_url):
    """Each worker that takes the deadly cell dies; after max_crashes lost attempts the cell is final
    ("crashed") and the study ends instead of killing every worker in turn."""
    info = prepare(parse_design(tiny_spec_text, ["axes.activations=[{ name = \"relu\" }]", "max_crashes=2"]),
                   sqlite_url)
    codes = [subprocess.run([sys.executable, "-c", CRASHER, sqlite_url], capture_output=True, timeout=300).returncode
             for _ in range(3)]
    assert codes == [9, 9, 0]  # two workers died on the cell, the third found the study finished
    db = Database(sqlite_url)
    repo = Repository(db)
    counts = repo.counts(info.id, info.limits)
    db.dispose()
    assert (counts.completed, counts.crashed, counts.failed, counts.done) == (1, 1, 0, True)
    runs = runs_by_cell(sqlite_url)
    assert sorted(runs.values()) == [[(1, "completed")], [(1, "lost"), (2, "lost")]]
    import optuna

    states = sorted(t.state.name for t in optuna.load_study(study_name="tiny", storage=sqlite_url).trials)
    assert states == ["COMPLETE", "FAIL", "FAIL"]  # no trial left RUNNING


def final_metrics(url: str, study: str) -> dict[str, tuple[float, float]]:
    """{cell hash: (rel_l2, pack_size)} of the study's completed runs."""
    from tmafbench.store.export import runs_frame

    db = Database(url)
    frame = runs_frame(db, study)
    db.dispose()
    done = frame[frame["status"] == "completed"]
    return {h: (v, p) for h, v, p in zip(done["config_hash"], done["rel_l2"], done["time_pack_size"])}


@pytest.mark.slow
def test_a_packed_study_stores_what_an_unpacked_one_does(tiny_spec_text, tmp_path, monkeypatch):
    """The store sees ordinary runs: one per cell, the same metrics up to summation order, the pack size
    among the timings; and a packed study's report has the content of an unpacked one's."""
    design = parse_design(tiny_spec_text, ["axes.seeds=4", 'axes.activations=[{ name = "relu" }, { name = "tmaf" }]'])
    urls = {pack: f"sqlite:///{tmp_path / f'pack{pack}.db'}" for pack in (1, 4)}
    for pack, url in urls.items():
        prepare(design, url)
        stats = worker_loop("tiny", url, options=WorkerOptions(poll_s=0.1, pack=pack))
        assert stats.completed == 8 and stats.runs == 8
        assert all(r == [(1, "completed")] for r in runs_by_cell(url).values())
    alone, packed = final_metrics(urls[1], "tiny"), final_metrics(urls[4], "tiny")
    assert sorted(alone) == sorted(packed)
    for cell, (value, size) in packed.items():
        assert size == 4 and alone[cell][1] == 1
        assert value == pytest.approx(alone[cell][0], rel=1e-5)
    # and their reports say the same: every table but the timings, value for value
    import pandas as pd

    from tmafbench.reports.render import build_report

    tables = {pack: build_report(url, ["tiny"], out=tmp_path / f"rep{pack}", formats=("csv",)).folder / "tables"
              for pack, url in urls.items()}
    names = sorted(p.name for p in tables[1].glob("*.csv") if p.name != "timing.csv")
    assert names == sorted(p.name for p in tables[4].glob("*.csv") if p.name != "timing.csv") and names
    for name in names:
        a, b = pd.read_csv(tables[1] / name), pd.read_csv(tables[4] / name)
        assert list(a.columns) == list(b.columns) and a.shape == b.shape, name
        numeric = a.select_dtypes("number").columns
        pd.testing.assert_frame_equal(a[numeric], b[numeric], rtol=1e-4, check_dtype=False)
        assert a.drop(columns=numeric).equals(b.drop(columns=numeric)), name


def test_a_gpu_index_is_taken_among_the_gpus_the_parent_sees():
    from tmafbench.errors import TmafbenchError
    from tmafbench.study.local import physical_gpu

    assert physical_gpu("cuda:1", None) == "1" and physical_gpu("cuda:0", "") == "0"
    assert physical_gpu("cuda:1", "2,3") == "3"  # a job restricted to GPUs 2 and 3: its second is GPU 3
    assert physical_gpu("cuda:0", "GPU-5e3f,GPU-77aa") == "GPU-5e3f"  # UUIDs pass through
    with pytest.raises(TmafbenchError, match="shows 2 GPU"):
        physical_gpu("cuda:2", "2,3")
