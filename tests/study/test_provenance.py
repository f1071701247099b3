"""What a run records about how it ran: the environment's details, its pack, and for a tuned study
the `[tune]` table as it ran (defaults filled in, the sampler behaviour), which the report reads."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from fake_data import write_idx_set
from sqlalchemy import select, update
from tiny_specs import TINY, study_toml

from tmafbench.reports import frames, tuning
from tmafbench.store.database import Database
from tmafbench.store.environment import collect
from tmafbench.store.schema import Artifact, Cell, Environment, Run, Study, Timing
from tmafbench.study.design import parse_design
from tmafbench.study.lifecycle import prepare
from tmafbench.study.loop import worker_loop
from tmafbench.study.worker import WorkerOptions
from tmafbench.study.tune_spec import SAMPLER


def _query(url: str, stmt) -> list:
    db = Database(url)
    try:
        with db.session() as s:
            return s.execute(stmt).all()
    finally:
        db.dispose()


def test_each_run_records_its_pack_and_an_environment_with_threads_and_kernel(sqlite_url, monkeypatch):
    monkeypatch.setenv("TMAFBENCH_KERNEL", "torch")
    collect.cache_clear()
    prepare(parse_design(TINY), sqlite_url)
    worker_loop("tiny", sqlite_url, options=WorkerOptions(poll_s=0.05, pack=2))
    [(details,)] = _query(sqlite_url, select(Environment.details))
    assert details["threads"] == torch.get_num_threads() and details["tmaf_kernel"] == "torch"
    assert isinstance(details["cpu_flags"], list) and details["torch_build"]["TORCH_VERSION"]
    assert details["variables"]["TMAFBENCH_KERNEL"] == "torch"
    rows = _query(sqlite_url, select(Cell.activation, Cell.config_hash, Artifact.data).join(Run, Run.cell_id == Cell.id)
                  .join(Artifact, (Artifact.run_id == Run.id) & (Artifact.name == "pack")))
    assert len(rows) == 4  # every run
    for activation in ("relu", "tanh"):  # the two seeds of each activation trained as one model
        packs = [(h, data) for act, h, data in rows if act == activation]
        hashes = [h for h, _ in packs]
        for h, data in packs:
            assert data["size"] == 2 and sorted(data["cells"]) == sorted(hashes)
            assert data["cells"][data["position"]] == h


def test_a_run_trained_alone_records_a_pack_of_one(sqlite_url, monkeypatch):
    monkeypatch.setenv("TMAFBENCH_KERNEL", "torch")
    prepare(parse_design(TINY), sqlite_url)
    worker_loop("tiny", sqlite_url, options=WorkerOptions(poll_s=0.05, pack=1))
    rows = _query(sqlite_url, select(Cell.config_hash, Artifact.data).join(Run, Run.cell_id == Cell.id)
                  .join(Artifact, (Artifact.run_id == Run.id) & (Artifact.name == "pack")))
    assert len(rows) == 4 and all(d == {"size": 1, "cells": [h], "position": 0} for h, d in rows)


# An accuracy task whose [tune] table names no metric: the study resolves it to val_accuracy.
ACCURACY = """
name = "acc"
[defaults]
task = "mnist"
model = "mlp"
task_params = {{ data_dir = "{data}" }}
model_params = {{ depth = 1, width = 8 }}
training = {{ epochs = 1, batch_size = 8 }}
[[axes.activations]]
name = "relu"
[tune]
trials = 4
seeds = 1
eval_seeds = 1
[tune.space]
"training.lr" = {{ low = 1e-4, high = 0.3, log = true }}
"""


@pytest.fixture
def accuracy_study(tmp_path, sqlite_url):
    write_idx_set(tmp_path / "data" / "MNIST" / "raw")
    design = parse_design(ACCURACY.format(data=tmp_path / "data"))
    assert design.tune.metric == "val_accuracy" and "metric" not in design.data["tune"]  # resolved, not written
    prepare(design, sqlite_url)
    worker_loop("acc", sqlite_url, options=WorkerOptions(poll_s=0.05, pack=16))
    return sqlite_url


def _chosen(url: str, tmp_path) -> tuple[pd.Series, list[str]]:
    engine = frames.open_readonly(url)
    try:
        _specs, frame = frames.load_tuning(engine, ["acc"])
        section = tuning.build_section(engine, ["acc"], tmp_path, ())
    finally:
        engine.dispose()
    done = frame[frame["state"] == "completed"]
    assert done["value"].nunique() > 1  # the trials differ, so best and worst differ
    row = section.tables[0].raw.iloc[0]
    assert row["best_value"] == done["value"].max() and section.metric == "val_accuracy"
    return row, section.notes


def test_the_tuning_study_stores_its_table_as_run_and_the_report_picks_the_highest_accuracy(accuracy_study, tmp_path):
    [(spec,)] = _query(accuracy_study, select(Study.spec).where(Study.name == "acc/tune"))
    assert spec["tune"]["metric"] == "val_accuracy" and spec["tune"]["sampler"] == SAMPLER
    assert spec["tune"]["startup_trials"] == 1 and spec["tune"]["max_pack"] == 1
    assert spec["tune"]["seeds"] == [0] and spec["tune"]["eval_seeds"] == [1] and spec["tune"]["pruner"] == "none"
    _row, notes = _chosen(accuracy_study, tmp_path)
    assert "1 random startup trials; a pack held at most 1 tuning slots" in notes[0] and "val_accuracy" in notes[0]


def test_a_study_stored_before_the_record_still_reads_its_metric_and_packs_from_the_runs(accuracy_study, tmp_path):
    """As the first release stored it: the child's table as written, no metric; packs larger than the random start."""
    db = Database(accuracy_study)
    with db.session() as s:
        parent = s.scalar(select(Study.spec).where(Study.name == "acc"))
        s.execute(update(Study).where(Study.name == "acc/tune").values(spec=parent))
        tune_runs = select(Run.id).join(Cell).join(Study).where(Study.name == "acc/tune").scalar_subquery()
        s.execute(update(Timing).where(Timing.name == "pack_size", Timing.run_id.in_(tune_runs)).values(value=4.0))
    db.dispose()
    _row, notes = _chosen(accuracy_study, tmp_path)
    assert "in name only" in notes[0] and "up to 4 tuning slots trained in one pack" in notes[0]
    assert "in effect a random search" in notes[0]


def test_as_run_fills_in_every_default():
    design = parse_design(study_toml("t", seeds=None, activations=("relu",), tail=(
        '[tune]\ntrials = 9\neval_seeds = 2\n[tune.space]\n"training.lr" = { low = 1e-3, high = 3e-2, log = true }\n')))
    record = design.tune.as_run()
    assert record["metric"] == "val_rel_l2" and record["startup_trials"] == 3 and record["max_pack"] == 3
    assert record["eval_seeds"] == [1, 2] and record["val_fraction"] == 0.2 and record["space"]
