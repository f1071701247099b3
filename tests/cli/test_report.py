"""`tmafbench report build` through typer's CliRunner, on the hand-valued study."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tmafbench.cli import app

# The hand-valued study lives with the report tests; load it by path (tests are not a package).
_spec = importlib.util.spec_from_file_location(
    "hand_study", Path(__file__).resolve().parents[1] / "reports" / "hand_study.py"
)
hand_study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hand_study)

runner = CliRunner()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    hand_study.write_hand_study(url)
    return url


@pytest.mark.slow  # renders every figure at full size (~15 s on 2 busy cores)
def test_build_writes_the_report(db_url, tmp_path):
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "build", "hand", "--storage", db_url, "--out", str(out),
                                 "--format", "md,csv"])
    assert result.exit_code == 0, result.output
    assert f"to {out}" in result.output and "figures" in result.output
    assert "note: Incomplete" in result.output
    assert (out / "index.md").is_file() and (out / "tables" / "paired_vs_baseline.csv").is_file()
    assert (out / "figures" / "seeds.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "index.html").exists()


@pytest.mark.slow  # renders every figure (~10 s on 2 busy cores)
def test_self_contained_embeds_the_figures(db_url, tmp_path):
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "build", "hand", "--storage", db_url, "--out", str(out),
                                 "--format", "html", "--self-contained"])
    assert result.exit_code == 0, result.output
    html = (out / "index.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(list((out / "figures").glob("*.png"))) > 0
    linked = runner.invoke(app, ["report", "build", "hand", "--storage", db_url, "--out", str(out), "--format", "html"])
    assert linked.exit_code == 0 and 'src="figures/seeds.png"' in (out / "index.html").read_text()


def test_storage_from_environment_and_default_folder(db_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMAFBENCH_STORAGE", db_url)
    result = runner.invoke(app, ["report", "build", "hand", "--format", "csv", "--baseline", "gelu"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    paired = pd.read_csv(tmp_path / "reports" / "hand" / "tables" / "paired_vs_baseline.csv")
    # gelu only ran n=1: relu n=1 and tmaf n=1 pair with it; the n=2 groups have no baseline
    assert list(paired["series"]) == ["relu", "tmaf [-5,5]/10"]
    assert set(paired["baseline"]) == {"gelu depth=1 width=20 n=1"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "error: unknown study nope; studies in this database: hand"),
        (["hand", "--baseline", "swish"], "error: baseline 'swish' is not in the study"),
        (["hand", "--format", "docx"], "error: unknown format docx"),
        (["hand", "--metric", "bleu"], "error: metric 'bleu' not in the results"),
    ],
)
def test_user_errors_are_one_line(db_url, tmp_path, args, message):
    result = runner.invoke(app, ["report", "build", *args, "--storage", db_url, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_notes_file_goes_under_the_header(db_url, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("Measured errors are far above the paper's.")
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "build", "hand", "--storage", db_url, "--out", str(out),
                                 "--format", "md", "--notes", str(notes)])
    assert result.exit_code == 0, result.output
    assert "## Notes\n\nMeasured errors are far above the paper's." in (out / "index.md").read_text()
    missing = runner.invoke(app, ["report", "build", "hand", "--storage", db_url, "--out", str(tmp_path / "x"),
                                  "--notes", str(tmp_path / "nope.md")])
    assert missing.exit_code == 2 and "error: notes file" in missing.output and "does not exist" in missing.output
    assert "Traceback" not in missing.output and not (tmp_path / "x").exists()


def test_missing_database_is_one_line(tmp_path):
    result = runner.invoke(app, ["report", "build", "hand", "--storage", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 2 and "error: no results database at" in result.output
    assert not (tmp_path / "none.db").exists()  # reading never creates the file


@pytest.mark.slow  # trains a tiny tuned study (2 groups x 2 trials, 2 evaluation seeds): a few seconds
def test_report_of_a_fresh_tuned_study(tmp_path):
    from tiny_specs import study_toml
    from tmafbench.study.design import parse_design
    from tmafbench.study.lifecycle import prepare
    from tmafbench.study.worker import WorkerOptions
    from tmafbench.study.loop import worker_loop

    url = f"sqlite:///{tmp_path / 'tuned.db'}"
    text = study_toml("tuned", model="mlp", train_size=96, epochs=2, seeds=None, activations=("relu", "tanh"), tail="""\
[report]
success = [{ metric = "rel_l2", threshold = 2.0 }]
[tune]
trials = 2
eval_seeds = 2
[tune.space]
"training.lr" = { low = 1e-3, high = 3e-2, log = true }
""")
    prepare(parse_design(text), url)
    worker_loop("tuned", url, options=WorkerOptions(poll_s=0.05))
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "build", "tuned", "--storage", url, "--out", str(out), "--format", "md,html"])
    assert result.exit_code == 0, result.output
    assert "(6 tables inside)" in result.output  # training, tuning settings, summary, paired, timing, outcomes
    md = (out / "index.md").read_text()
    assert "## Tuning" in md and "### Tuning: chosen settings per group" in md and "reached ≤ 2 |" in md
    assert "2/2 [0.16, 1]" in md  # a relative L2 error of at most 2 on both evaluation seeds
    assert (out / "figures" / "tuning_history.png").read_bytes()[:4] == b"\x89PNG"


def test_benchmark_renders_a_fresh_synthetic_study():
    result = runner.invoke(app, ["report", "benchmark", "--activations", "2", "--ns", "2", "--seeds", "3",
                                 "--epochs", "2", "--format", "md,csv"])
    assert result.exit_code == 0, result.output
    assert "runs: 12  epochs/run: 2" in result.output and "index.md" in result.output
    assert "table files" in result.output and "render time:" in result.output
