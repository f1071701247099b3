"""`study verify`: stored cells re-run from their stored configs, on a live database and on a shipped
.db.gz; bit-identical on the same machine, drift measured and explained where something differs."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from tiny_specs import TINY

from tmafbench.errors import TmafbenchError
from tmafbench.store.database import Database
from tmafbench.store.schema import Artifact, Environment, FinalMetric, Run
from tmafbench.store.ship import ship_studies
from tmafbench.study.design import parse_design
from tmafbench.study.lifecycle import prepare
from tmafbench.study.loop import worker_loop
from tmafbench.study.verify import verify
from tmafbench.study.worker import WorkerOptions


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The tiny study (relu and tanh, 2 seeds each) run in packs of 2, then shipped."""
    folder = tmp_path_factory.mktemp("verify")
    url = f"sqlite:///{folder / 'results.db'}"
    prepare(parse_design(TINY), url)
    worker_loop("tiny", url, options=WorkerOptions(poll_s=0.05, pack=2))
    shipped = ship_studies(url, ["tiny"], folder / "shipped").database
    return url, f"sqlite:///{shipped}"


def test_a_live_study_re_runs_bit_for_bit_in_its_packs(packed):
    url, _ = packed
    result = verify(url, "tiny", cells=10)
    assert (result.cells_in_study, result.completed, len(result.checks)) == (4, 4, 4) and result.ok
    for check in result.checks:
        assert check.identical and check.drift == 0.0 and check.pack == "in its recorded pack of 2"
        assert check.compared == 5  # 4 final metrics (rel_l2, mse, max_abs, train_loss) and epoch 1's loss
        assert check.first_loss[0] == check.first_loss[1] and check.final[0] == check.final[1]
        assert check.differences == []  # same machine, threads, kernel and pack


def test_a_shipped_database_re_runs_too_and_a_cell_can_be_named(packed):
    _url, shipped = packed
    chosen = verify(shipped, "tiny", cells=2, seed=1)
    assert len(chosen.checks) == 2 and chosen.ok and all(c.identical for c in chosen.checks)
    assert [c.cell_id for c in chosen.checks] == [c.cell_id for c in verify(shipped, "tiny", cells=2, seed=1).checks]
    named = verify(shipped, "tiny", cell=chosen.checks[0].config_hash[:8])
    assert [c.config_hash for c in named.checks] == [chosen.checks[0].config_hash]
    alone = verify(shipped, "tiny", cell=str(chosen.checks[0].cell_id), alone=True).checks[0]
    assert alone.pack == "alone, as asked (stored in a pack of 2)" and "pack: 2 cells there, 1 here" in alone.differences


def test_drift_beyond_the_tolerance_fails_and_says_how_far(packed, tmp_path):
    url, _ = packed
    copy = tmp_path / "changed.db"
    copy.write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    changed = f"sqlite:///{copy}"
    db = Database(changed)
    with db.session() as s:
        run_id, cell_id, value = s.execute(
            select(Run.id, Run.cell_id, FinalMetric.value).join(FinalMetric, FinalMetric.run_id == Run.id)
            .where(FinalMetric.name == "rel_l2").order_by(Run.id).limit(1)).one()
        s.execute(update(FinalMetric).where(FinalMetric.run_id == run_id, FinalMetric.name == "rel_l2")
                  .values(value=value * 1.02))  # as if stored by another machine: 2% higher
        s.execute(update(Environment).values(details={**s.scalar(select(Environment.details)),
                                                      "cpu_flags": ["avx2", "avx512f"]}))
    db.dispose()
    check = verify(changed, "tiny", cell=str(cell_id)).checks[0]
    assert not check.identical and check.drift == pytest.approx(0.02 / 1.02, rel=1e-6)
    assert any(d.startswith("cpu extensions:") and "avx512f only there" in d for d in check.differences)
    assert not verify(changed, "tiny", cell=str(cell_id), tolerance=0.01).ok
    assert verify(changed, "tiny", cell=str(cell_id), tolerance=0.05).ok


def test_a_run_stored_before_packs_were_recorded_finds_its_pack_from_the_claim(packed, tmp_path):
    url, _ = packed
    copy = tmp_path / "old.db"
    copy.write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    old = f"sqlite:///{copy}"
    db = Database(old)
    with db.session() as s:
        s.execute(delete(Artifact).where(Artifact.name == "pack"))
    db.dispose()
    result = verify(old, "tiny", cells=4)
    assert result.ok and {c.pack for c in result.checks} == {"in its inferred pack of 2"}


def test_bad_input_is_one_line(packed):
    url, _ = packed
    with pytest.raises(TmafbenchError, match=r"unknown study 'nope'; studies in this database: tiny"):
        verify(url, "nope")
    with pytest.raises(TmafbenchError, match=r"no completed cell 'zzz'"):
        verify(url, "tiny", cell="zzz")
    with pytest.raises(TmafbenchError, match=r"--tolerance must be a finite number >= 0"):
        verify(url, "tiny", tolerance=-1)
    with pytest.raises(TmafbenchError, match=r"--cells must be at least 1"):
        verify(url, "tiny", cells=0)


def test_the_command_prints_the_checks_and_its_exit_status_says_whether_all_matched(packed, tmp_path):
    import json

    from typer.testing import CliRunner

    from tmafbench.cli import app

    url, shipped = packed
    runner = CliRunner()
    done = runner.invoke(app, ["study", "verify", "tiny", "--storage", shipped, "--cells", "2"])
    assert done.exit_code == 0, done.output
    assert "2 of 2 cells matched within a relative drift of 0 (bit for bit)" in done.output
    assert "identical" in done.output and "in its recorded pack of 2" in done.output
    data = json.loads(runner.invoke(app, ["study", "verify", "tiny", "--storage", url, "--cell", "1", "--json"]).output)
    assert data["ok"] and data["checks"][0]["identical"] and data["checks"][0]["drift"] == 0.0
    copy = tmp_path / "changed.db"
    copy.write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    db = Database(f"sqlite:///{copy}")
    with db.session() as s:
        s.execute(update(FinalMetric).where(FinalMetric.name == "rel_l2").values(value=FinalMetric.value * 1.5))
    db.dispose()
    drifted = runner.invoke(app, ["study", "verify", "tiny", "--storage", f"sqlite:///{copy}", "--cells", "1"])
    assert drifted.exit_code == 5 and "0 of 1 cells matched" in drifted.output and "NO" in drifted.output
    refused = runner.invoke(app, ["study", "verify", "tiny", "--storage", url, "--tolerance", "-0.5"])
    assert refused.exit_code == 2 and refused.output.strip().startswith("error: --tolerance must be")
