"""`results ship`: a slim gzip copy of a study's record that rebuilds its report with no training."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tmafbench.cli import app
from tmafbench.errors import TmafbenchError
from tmafbench.reports.render import build_report
from tmafbench.store.ship import ship_studies
from tmafbench.study.design import parse_design
from tmafbench.study.lifecycle import prepare
from tmafbench.study.worker import WorkerOptions
from tmafbench.study.loop import worker_loop

from tiny_specs import study_toml

# A real tuned study (Optuna tables, a tuning child study, every artifact) and a plain one beside it.
TUNED = study_toml("shipped", model="mlp", train_size=96, epochs=2, seeds=None, activations=("relu", "tmaf"),
                   tail='[tune]\ntrials = 2\nseeds = 1\neval_seeds = 2\n[tune.space]\n'
                        '"training.lr" = { low = 1e-3, high = 3e-2, log = true }\n')
OTHER = study_toml("other", seeds=1, activations=("relu",))
LONG = study_toml("long", seeds=2, epochs=7, activations=("relu", "tanh"))
runner = CliRunner()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('ship') / 'results.db'}"
    for text in (TUNED, OTHER, LONG):
        design = parse_design(text)
        prepare(design, url)
        worker_loop(design.name, url, options=WorkerOptions(poll_s=0.05))
    return url


def _rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def _tables(report) -> dict[str, pd.DataFrame]:
    return {table.name: table.raw.reset_index(drop=True) for table in report.tables}


def test_the_shipped_file_rebuilds_the_same_report_tables(source, tmp_path):
    shipment = ship_studies(source, ["shipped"], tmp_path / "reports" / "shipped")
    assert shipment.database.name == "results.db.gz" and shipment.gz_bytes == shipment.database.stat().st_size
    original = build_report(source, ["shipped"], out=tmp_path / "a", formats=("csv",))
    rebuilt = build_report(f"sqlite:///{shipment.database}", ["shipped"], out=tmp_path / "b", formats=("csv",))
    a, b = _tables(original), _tables(rebuilt)
    assert list(a) == list(b) and {"final_metric", "paired_vs_baseline", "failures", "tuning_settings"} <= set(a)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
    # The figures draw the same data: the report's own list of figures is the same.
    both = [build_report(url, ["shipped"], out=tmp_path / d, formats=("png",), figure_scale=0.3)
            for url, d in ((source, "c"), (f"sqlite:///{shipment.database}", "d"))]
    assert [f.name for f in both[0].figures] == [f.name for f in both[1].figures]
    assert {"predictions", "learned_activations", "learning_curves", "tuning_history"} <= {f.name for f in both[1].figures}
    for name in ("predictions", "learned_activations", "learning_curves"):  # drawn from the same values
        assert (tmp_path / "c" / "figures" / f"{name}.png").read_bytes() == (tmp_path / "d" / "figures" / f"{name}.png").read_bytes()


def test_the_copy_holds_only_what_the_report_draws(source, tmp_path):
    shipment = ship_studies(source, ["shipped"], tmp_path / "out")
    raw = tmp_path / "results.db"
    raw.write_bytes(gzip.decompress(shipment.database.read_bytes()))
    tables = {name for (name,) in _rows(raw, "select name from sqlite_master where type = 'table'")}
    assert tables == {"tmaf_schema_version", "tmaf_study", "tmaf_cell", "tmaf_environment", "tmaf_run",
                      "tmaf_epoch_metric", "tmaf_final_metric", "tmaf_timing", "tmaf_artifact"}  # no Optuna tables
    assert sorted(_rows(raw, "select name, kind from tmaf_study")) == [("shipped", "eval"), ("shipped/tune", "tune")]
    # Every cell and attempt of both studies, with every final metric.
    for table in ("tmaf_cell", "tmaf_run", "tmaf_final_metric"):
        sql = (f"select count(*) from {table} t" + {"tmaf_cell": " join tmaf_study s on s.id = t.study_id",
               "tmaf_run": " join tmaf_cell c on c.id = t.cell_id join tmaf_study s on s.id = c.study_id",
               "tmaf_final_metric": " join tmaf_run r on r.id = t.run_id join tmaf_cell c on c.id = r.cell_id"
                                    " join tmaf_study s on s.id = c.study_id"}[table] + " where s.name like 'shipped%'")
        assert _rows(raw, sql) == _rows(Path(source.removeprefix("sqlite:///")), sql), table
    # Per-epoch rows only for the names a report plots, and only of the evaluation runs.
    names = {n for (n,) in _rows(raw, "select distinct name from tmaf_epoch_metric")}
    assert names == {"rel_l2", "train_loss", "epoch_time_s", "samples_per_s"}
    assert _rows(raw, "select count(*) from tmaf_epoch_metric e join tmaf_run r on r.id = e.run_id join tmaf_cell c"
                      " on c.id = r.cell_id join tmaf_study s on s.id = c.study_id where s.kind = 'tune'") == [(0,)]
    # Artifacts: the lowest seed of each group (seeds 1 and 2 evaluate; seed 1 is drawn), the tuning
    # records, and every run's pack record (what `study verify` needs to re-run it as it ran).
    artifacts = _rows(raw, "select a.name, c.seed, s.kind from tmaf_artifact a join tmaf_run r on r.id = a.run_id"
                           " join tmaf_cell c on c.id = r.cell_id join tmaf_study s on s.id = c.study_id")
    assert sorted(set(artifacts)) == [("activation_curves", 1, "eval"), ("pack", 0, "tune"), ("pack", 1, "eval"),
                                      ("pack", 2, "eval"), ("predictions", 1, "eval"), ("tuning", 0, "tune")]
    assert sum(name == "pack" for name, _, _ in artifacts) == _rows(raw, "select count(*) from tmaf_run")[0][0]
    assert sum(name == "tuning" for name, _, _ in artifacts) == 4  # 2 trials x 2 activations
    # The drawn arrays are copied as stored.
    sql = "select run_id, data from tmaf_artifact where name = 'predictions' order by run_id"
    copied = _rows(raw, sql)
    stored = dict(_rows(Path(source.removeprefix("sqlite:///")), sql))
    assert copied and all(stored[run] == data for run, data in copied)
    # Run ids are kept: the CSV and the database name the same runs.
    csv = pd.read_csv(shipment.csv)
    assert set(csv["run_id"]) == {r for (r,) in _rows(raw, "select r.id from tmaf_run r join tmaf_cell c on c.id ="
                                                           " r.cell_id join tmaf_study s on s.id = c.study_id"
                                                           " where s.name = 'shipped'")}
    assert len(csv) == shipment.runs == 4 and "rel_l2" in csv


def test_shipping_twice_gives_the_same_bytes(source, tmp_path):
    first = ship_studies(source, ["shipped"], tmp_path / "one").database.read_bytes()
    assert ship_studies(source, ["shipped"], tmp_path / "two").database.read_bytes() == first


def test_the_command_and_the_read_commands_on_the_gzip(source, tmp_path):
    out = tmp_path / "reports" / "other"
    result = runner.invoke(app, ["results", "ship", "other", "--storage", source, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "results.db.gz" in result.output and "1 runs" in result.output
    shipped = f"sqlite:///{out / 'results.db.gz'}"
    query = runner.invoke(app, ["results", "query", "select count(*) as n from tmaf_run", "--format", "json",
                                "--storage", shipped])
    assert json.loads(query.output) == [{"n": 1}]
    export = runner.invoke(app, ["results", "export", "--study", "other", "--storage", shipped])
    assert export.exit_code == 0 and export.output.count("\n") == 2
    report = runner.invoke(app, ["report", "build", "other", "--storage", shipped, "--out", str(tmp_path / "r"),
                                 "--format", "md"])
    assert report.exit_code == 0, report.output


def test_errors_are_one_line(source, tmp_path):
    with pytest.raises(TmafbenchError, match="unknown study nope; studies in this database: long, other, shipped"):
        ship_studies(source, ["nope"], tmp_path / "x")
    bad = tmp_path / "bad.db.gz"
    bad.write_bytes(b"not gzip")
    result = runner.invoke(app, ["report", "build", "x", "--storage", f"sqlite:///{bad}"])
    assert result.exit_code == 2 and "is not a gzip-compressed database" in result.output
    result = runner.invoke(app, ["results", "ship", "x", "--storage", f"sqlite:///{tmp_path / 'none.db.gz'}"])
    assert result.exit_code == 2 and "no results database at" in result.output


def test_long_runs_keep_an_even_sample_of_their_epochs(source, tmp_path):
    # 7 epochs, at most 3 kept: every 3rd, with the first and the last.
    shipment = ship_studies(source, ["long"], tmp_path / "out", max_epochs=3)
    raw = tmp_path / "results.db"
    raw.write_bytes(gzip.decompress(shipment.database.read_bytes()))
    kept = _rows(raw, "select distinct name, epoch from tmaf_epoch_metric order by name, epoch")
    assert {epoch for _, epoch in kept} == {1, 3, 6, 7} and len(kept) == 4 * 4  # rel_l2, train_loss, times, samples/s
    original = _tables(build_report(source, ["long"], out=tmp_path / "a", formats=("csv",)))
    rebuilt = _tables(build_report(f"sqlite:///{shipment.database}", ["long"], out=tmp_path / "b", formats=("csv",)))
    for name in original:  # the timing table summarises the kept epochs' times; every other table is the same
        if name != "timing":
            pd.testing.assert_frame_equal(original[name], rebuilt[name], check_exact=True, obj=name)
    every = ship_studies(source, ["long"], tmp_path / "all", max_epochs=0)
    assert every.rows["tmaf_epoch_metric"] == 4 * 7 * 4
    with pytest.raises(TmafbenchError, match="--max-epochs must be 0"):
        ship_studies(source, ["long"], tmp_path / "x", max_epochs=1)
