"""`tmafbench results query|export` on a real study database."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from tmafbench.cli import app
from tmafbench.study.lifecycle import prepare
from tmafbench.study.worker import WorkerOptions
from tmafbench.study.loop import worker_loop
from tmafbench.study.design import parse_design

from tiny_specs import study_toml

SPEC = study_toml("res", epochs=2)

runner = CliRunner()


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('res') / 'r.db'}"
    prepare(parse_design(SPEC), url)
    worker_loop("res", url, options=WorkerOptions(poll_s=0.1))
    return url


def test_query_formats(url):
    sql = "select activation, count(*) as n from tmaf_cell group by activation order by activation"
    out = runner.invoke(app, ["results", "query", sql, "--storage", url, "--format", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == [{"activation": "relu", "n": 2}, {"activation": "tanh", "n": 2}]
    out = runner.invoke(app, ["results", "query", sql, "--storage", url, "--format", "csv"])
    assert out.output.splitlines() == ["activation,n", "relu,2", "tanh,2"]
    out = runner.invoke(app, ["results", "query", sql, "--storage", url])
    assert out.exit_code == 0 and "relu" in out.output


def test_query_refuses_writes(url):
    out = runner.invoke(app, ["results", "query", "delete from tmaf_run", "--storage", url])
    assert out.exit_code == 2
    assert out.output.startswith("error: refused: DELETE is not allowed")
    check = runner.invoke(app, ["results", "query", "select count(*) as n from tmaf_run", "--storage", url,
                                "--format", "json"])
    assert json.loads(check.output) == [{"n": 4}]


@pytest.mark.parametrize("sql, says", [
    ("attach database '{dir}/attached.db' as x", "ATTACH is not allowed"),
    ("vacuum into '{dir}/vacuumed.db'", "VACUUM is not allowed"),
    ("select 1; select 2", "2 statements"),
    ("pragma writable_schema = on", "PRAGMA is not allowed"),
    ("with gone as (delete from tmaf_run returning id) select * from gone", "(DELETE)"),
    ("select load_extension('x')", "load_extension() acts on the server"),
    ("select ts_stat('select to_tsvector(1::text)')", "ts_stat() acts on the server"),  # runs SQL given as text
    ("explain delete from tmaf_run", "DELETE is not allowed"),
    ("", "0 statements"),
])
def test_query_allowlist_refuses_before_touching_anything(url, tmp_path, sql, says):
    out = runner.invoke(app, ["results", "query", sql.format(dir=tmp_path), "--storage", url])
    assert out.exit_code == 2 and out.output.startswith("error: refused: ") and says in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no file created by ATTACH or VACUUM INTO


@pytest.mark.parametrize("sql", ["with c as (select * from tmaf_cell) select count(*) as n from c",
                                 "select count(*) as n from tmaf_cell union all select 1",
                                 "values (1), (2)", "explain query plan select * from tmaf_cell"])
def test_query_allowlist_admits_reads(url, sql):
    out = runner.invoke(app, ["results", "query", sql, "--storage", url, "--format", "json"])
    assert out.exit_code == 0, out.output


def test_query_reads_a_colon_in_a_literal_as_text_not_a_bind_parameter(url):
    out = runner.invoke(app, ["results", "query", "select 'a :b' as t, count(*) as n from tmaf_cell where label != 'x:y'",
                              "--storage", url, "--format", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)[0]["t"] == "a :b"


def test_query_prints_blobs_as_hex(url):
    out = runner.invoke(app, ["results", "query", "select x'00ff10' as b, 'text' as t", "--storage", url,
                              "--format", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == [{"b": "00ff10", "t": "text"}]


@pytest.mark.postgres
def test_query_on_postgres_runs_read_only_and_refuses_server_actions(postgres_url, tmp_path):
    from tmafbench.store.scratch import scratch_database

    with scratch_database(postgres_url) as pg:
        prepare(parse_design(SPEC), pg)
        for sql, says in [(f"copy tmaf_cell to '{tmp_path}/out.csv'", "COPY is not allowed"),
                          ("select pg_terminate_backend(pg_backend_pid())", "pg_terminate_backend() acts on the server"),
                          ("select pg_read_file('/etc/hostname')", "pg_read_file() acts on the server")]:
            out = runner.invoke(app, ["results", "query", sql, "--storage", pg])
            assert out.exit_code == 2 and says in out.output, out.output
        assert not (tmp_path / "out.csv").exists()
        out = runner.invoke(app, ["results", "query", "select current_setting('transaction_read_only') as ro, "
                                  "decode('00ff', 'hex') as b", "--storage", pg, "--format", "json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.output) == [{"ro": "on", "b": "00ff"}]


def test_export_one_tidy_row_per_run(url, tmp_path):
    out = runner.invoke(app, ["results", "export", "--study", "res", "--storage", url, "--format", "csv"])
    assert out.exit_code == 0, out.output
    frame = pd.read_csv(io.StringIO(out.output))
    assert len(frame) == 4 and set(frame["status"]) == {"completed"}
    for col in ("activation", "seed", "depth", "width", "config_hash", "attempt", "rel_l2", "train_loss",
                "time_total_train_s", "host", "started_at"):
        assert col in frame.columns, col
    target = tmp_path / "runs.parquet"
    out = runner.invoke(app, ["results", "export", "--study", "res", "--storage", url, "--format", "parquet",
                              "--out", str(target)])
    assert out.exit_code == 0, out.output
    assert len(pd.read_parquet(target)) == 4
    target = tmp_path / "runs.json"
    runner.invoke(app, ["results", "export", "--study", "res", "--storage", url, "--format", "json", "--out", str(target)])
    assert len(json.loads(target.read_text())) == 4


def test_export_errors(url):
    out = runner.invoke(app, ["results", "export", "--study", "nope", "--storage", url])
    assert out.exit_code == 2 and "no study 'nope'" in out.output
    out = runner.invoke(app, ["results", "export", "--study", "res", "--storage", url, "--format", "parquet"])
    assert out.exit_code == 2 and "needs --out" in out.output


def test_export_keeps_integers_when_some_runs_lack_them(tmp_path):
    """A CNN cell has no depth: the depth column still reads 1, not 1.0 (and intervals stays empty)."""
    from tmafbench.store.database import Database
    from tmafbench.store.synthetic import add_cell, add_run, add_study

    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    db = Database(url)
    db.create_all()
    with db.session() as session:
        study = add_study(session, "mixed")
        add_run(session, add_cell(session, study, {"activation": "relu", "depth": 1, "width": 20, "seed": 0}),
                finals={"rel_l2": 1.0})
        add_run(session, add_cell(session, study, {"activation": "relu", "width": 16, "seed": 0}, model="cnn"),
                finals={"rel_l2": 0.5})
    db.dispose()
    out = runner.invoke(app, ["results", "export", "--study", "mixed", "--storage", url, "--format", "csv"])
    assert out.exit_code == 0, out.output
    frame = pd.read_csv(io.StringIO(out.output), dtype=str, keep_default_na=False)
    assert list(frame["depth"]) == ["1", ""] and list(frame["width"]) == ["20", "16"]
    assert list(frame["seed"]) == ["0", "0"] and list(frame["rel_l2"]) == ["1.0", "0.5"]  # metrics stay floats
    out = runner.invoke(app, ["results", "export", "--study", "mixed", "--storage", url, "--format", "json"])
    assert [r["depth"] for r in json.loads(out.output)] == [1, None]
