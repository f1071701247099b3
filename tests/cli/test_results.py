"""`tmafbench results query|export` on a real study database."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from tmafbench.cli import app
from tmafbench.study.lifecycle import prepare
from tmafbench.study.scheduler import WorkerOptions, worker_loop
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
    assert out.output.startswith("error: refused: the query connection is read-only")
    check = runner.invoke(app, ["results", "query", "select count(*) as n from tmaf_run", "--storage", url,
                                "--format", "json"])
    assert json.loads(check.output) == [{"n": 4}]


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
