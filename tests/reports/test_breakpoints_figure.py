"""Trainable breakpoints end to end: the trainer stores where they went, the report draws them."""

from __future__ import annotations

from tmafbench.reports.render import build_report
from tmafbench.study.design import parse_design
from tmafbench.study.lifecycle import prepare
from tmafbench.study.worker import WorkerOptions
from tmafbench.study.loop import worker_loop

from tiny_specs import study_toml

SPEC = study_toml("bp", activations=(), seeds=1, epochs=2, tail="""
[[axes.activations]]
name = "tmaf"
params = { train_breakpoints = true, intervals = 4, lo = -2.0, hi = 2.0 }
""")


def test_learned_breakpoints_are_stored_and_drawn(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    prepare(parse_design(SPEC), url)
    assert worker_loop("bp", url, options=WorkerOptions(poll_s=0.05)).completed == 1
    from tmafbench.store.database import Database
    from tmafbench.store.schema import Artifact

    db = Database(url)
    with db.session() as s:
        [data] = [a.data for a in s.query(Artifact).filter(Artifact.name == "breakpoints")]
    db.dispose()
    [(module, grid)] = data["modules"].items()
    assert grid["initial"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert len(grid["learned"]) == 8 and all(len(row) == 5 for row in grid["learned"])  # first 8 features
    assert all(a < b for row in grid["learned"] for a, b in zip(row, row[1:]))  # still increasing
    report = build_report(url, ["bp"], out=tmp_path / "rep", formats=("png",))
    assert any(f.name == "learned_breakpoints" for f in report.figures)
    # the shipped copy keeps what the figure draws
    from tmafbench.store.ship import ship_studies

    ship_studies(url, ["bp"], tmp_path / "shipped")
    again = build_report(f"sqlite:///{tmp_path / 'shipped' / 'results.db.gz'}", ["bp"], out=tmp_path / "rep2",
                         formats=("png",))
    assert any(f.name == "learned_breakpoints" for f in again.figures)
