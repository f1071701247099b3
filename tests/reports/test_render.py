"""Rendering a report folder: files, valid images, self-contained HTML, errors."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from hand_study import write_hand_study
from tmafbench.errors import TmafbenchError
from tmafbench.reports.render import build_report, parse_formats
from tmafbench.store.synthetic import add_cell, add_run, add_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAND_FIGURES = {"metric_vs_axis", "seeds", "learning_curves", "predictions_n-1", "predictions_n-2",
                "learned_activations", "timing"}
HAND_TABLES = {"final_metric_wide", "final_metric", "paired_vs_baseline", "timing", "reference", "failures"}


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _db_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """The hand study rendered once in every format (shared by the tests below)."""
    folder = tmp_path_factory.mktemp("full")
    url = f"sqlite:///{folder / 'results.db'}"
    write_hand_study(url)
    before = _sha(_db_path(url))
    report = build_report(url, ["hand"], out=folder / "report", formats=parse_formats("md,html,tex,csv,png,svg"),
                          figure_scale=0.6)
    return report, url, before


@pytest.mark.slow  # shares one full render (~10 s on 2 busy cores)
def test_every_file_is_written_and_valid(full_report):
    report, _, _ = full_report
    assert {f.name for f in report.figures} == HAND_FIGURES
    for fig in report.figures:
        assert set(fig.paths) == {"png", "svg"}
        assert fig.paths["png"].read_bytes()[:8] == PNG_MAGIC
        root = ET.parse(fig.paths["svg"]).getroot()
        assert root.tag.endswith("svg")
    tables = report.folder / "tables"
    assert {p.stem for p in tables.glob("*.csv")} == HAND_TABLES
    assert {p.stem for p in tables.glob("*.tex")} == HAND_TABLES
    assert "\\begin{tabular}" in (tables / "final_metric.tex").read_text()
    assert all(p.exists() for p in report.files)


@pytest.mark.slow  # shares one full render (~10 s on 2 busy cores)
def test_database_is_not_modified(full_report):
    _, url, before = full_report
    assert _sha(_db_path(url)) == before


@pytest.mark.slow  # shares one full render (~10 s on 2 busy cores)
def test_html_links_the_png_files_beside_it(full_report):
    report, _, _ = full_report
    html = (report.folder / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "data:image" not in html
    links = re.findall(r'<img alt="[^"]*" src="([^"]+)">', html)
    assert len(links) == len(report.figures) and all(link.startswith("figures/") for link in links)
    assert all((report.folder / link).is_file() for link in links)
    assert "<link" not in html and "<script" not in html


@pytest.mark.slow  # a second render (~5 s)
def test_self_contained_html_embeds_every_figure(tmp_path, hand_db):
    report = build_report(hand_db, ["hand"], out=tmp_path / "out", formats=parse_formats("html"), figure_scale=0.4,
                          self_contained=True)
    html = (report.folder / "index.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(report.figures) > 0
    assert 'src="figures/' not in html and "<link" not in html and "<script" not in html


def _bare(session) -> None:
    """Study "bare": final accuracies only (no epochs, timings or artifacts), two activations, two seeds."""
    study = add_study(session, "bare")
    for act, values in (("relu", [0.9, 0.91]), ("tmaf", [0.93, 0.92])):
        for seed, v in enumerate(values):
            cell = add_cell(session, study, {"activation": act, "seed": seed}, task="mnist")
            add_run(session, cell, metric=("accuracy", "maximize"), finals={"accuracy": v})
    session.commit()


def test_a_rebuild_removes_figures_it_no_longer_draws(tmp_path, new_db):
    url, session = new_db
    _bare(session)
    figures = tmp_path / "out" / "figures"
    figures.mkdir(parents=True)
    for stale in ("predictions_intervals-None.png", "seeds.svg", "notes.txt"):
        (figures / stale).write_text("from an older build")
    build_report(url, ["bare"], out=tmp_path / "out", formats=("png",), figure_scale=0.4)
    # a PNG this build did not write goes; other formats and other files stay
    assert sorted(p.name for p in figures.iterdir()) == ["notes.txt", "seeds.png", "seeds.svg"]


@pytest.mark.slow  # shares one full render (~10 s on 2 busy cores)
def test_markdown_marks_incomplete_groups_and_links_figures(full_report):
    report, _, _ = full_report
    md = (report.folder / "index.md").read_text()
    assert "Incomplete: 2 of 30 cells" in md and "1 diverged" in md and "1 running" in md
    assert "4/6 †" in md  # tmaf n=2: 4 of 6 runs completed
    assert "lower is better" in md
    assert "consistent (reference inside CI)" in md and "measured lower: better than reference" in md
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (report.folder / link).is_file()
    # the wide, paper-like table: rows activations, columns n
    assert "| group | n=1 | n=2 |" in md


def test_figures_only_when_data_exists(tmp_path, new_db):
    url, session = new_db  # final metrics only: no epochs, timings or artifacts
    _bare(session)
    report = build_report(url, ["bare"], out=tmp_path / "out", formats=parse_formats("md,csv,pdf"), figure_scale=0.5)
    assert [f.name for f in report.figures] == ["seeds"]
    assert report.figures[0].paths["pdf"].read_bytes()[:5] == b"%PDF-"
    md = (tmp_path / "out" / "index.md").read_text()
    # 2 seeds: the sign count and no test at all (no p-value, no Holm column, no effect size)
    assert "higher is better" in md and "too few seeds for a test" in md and "| 2/2 |" in md
    assert "paired t" not in md and "p (Holm)" not in md and "d_z" not in md
    assert not (tmp_path / "out" / "index.html").exists()


def test_several_studies_in_one_report(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    write_hand_study(url, "hand")
    write_hand_study(url, "hand2")
    report = build_report(url, ["hand", "hand2"], out=tmp_path / "out", formats=("csv",))
    summary = next(t for t in report.tables if t.name == "final_metric").raw
    assert len(summary) == 10 and summary["series"].str.startswith("hand2 ").sum() == 5
    assert report.figures == []  # no image format asked for


def test_errors_are_clear(tmp_path, hand_db):
    with pytest.raises(TmafbenchError, match="no results database"):
        build_report(f"sqlite:///{tmp_path / 'missing.db'}", ["hand"])
    with pytest.raises(TmafbenchError, match="unknown study nope; studies in this database: hand"):
        build_report(hand_db, ["nope"], out=tmp_path / "x")
    with pytest.raises(TmafbenchError, match="baseline 'swish' is not in the study"):
        build_report(hand_db, ["hand"], out=tmp_path / "x", baseline="swish", formats=("csv",))
    with pytest.raises(ValueError, match="unknown format docx"):
        parse_formats("md,docx")
    engine = create_engine(hand_db)
    with Session(engine) as session:
        add_study(session, "empty")
        pending = add_study(session, "pending")
        add_cell(session, pending, {"activation": "relu", "seed": 0})
        session.commit()
    engine.dispose()
    with pytest.raises(TmafbenchError, match="study empty has no cells yet"):
        build_report(hand_db, ["empty"], out=tmp_path / "x")
    with pytest.raises(TmafbenchError, match="no run has finished yet"):
        build_report(hand_db, ["pending"], out=tmp_path / "x")


def test_notes_are_shown_as_written_and_the_reference_is_named(tmp_path, hand_db):
    notes = tmp_path / "notes.md"
    notes.write_text("**Does not match** the paper: errors < 1 <b>tried</b> 3 budgets.\n\n- item\n")
    report = build_report(hand_db, ["hand"], out=tmp_path / "out", formats=("md", "html"), notes=notes,
                          figure_scale=0.4)
    md = (report.folder / "index.md").read_text()
    assert "## Notes\n\n**Does not match** the paper: errors < 1 <b>tried</b> 3 budgets.\n\n- item" in md
    assert md.index("## Notes") < md.index("> Incomplete")  # right under the header
    assert "- **Published reference:** paper Table 3.1 (3 values)" in md
    assert "- **Training:** not recorded" in md  # the hand study stores no training config
    html = (report.folder / "index.html").read_text()
    # Markdown becomes HTML; raw HTML in the notes is escaped, never passed through
    assert '<div class="notes"><p><strong>Does not match</strong> the paper: errors &lt; 1 &lt;b&gt;tried&lt;/b&gt;' in html
    assert "<li>item</li>" in html


def test_a_study_without_reference_says_so(tmp_path, new_db):
    url, session = new_db
    cell = add_cell(session, add_study(session, "plain"), {"activation": "relu", "seed": 0})
    add_run(session, cell, finals={"rel_l2": 0.5})
    session.commit()
    report = build_report(url, ["plain"], out=tmp_path / "out", formats=("md",))
    md = (report.folder / "index.md").read_text()
    assert "- **Published reference:** none: the study file has no [reference] table" in md
    assert "## Notes" not in md


@pytest.mark.parametrize("content, message", [(None, "does not exist"), ("  \n", "is empty"),
                                              (b"\xff\xfe\x00", "cannot read notes file")])
def test_bad_notes_file_is_refused_before_writing(tmp_path, hand_db, content, message):
    notes = tmp_path / "notes.md"
    if isinstance(content, bytes):
        notes.write_bytes(content)
    elif content is not None:
        notes.write_text(content)
    with pytest.raises(TmafbenchError, match=message):
        build_report(hand_db, ["hand"], out=tmp_path / "out", formats=("md",), notes=notes)
    assert not (tmp_path / "out").exists()


def test_md_and_html_imply_png():
    assert parse_formats("md") == ("md", "png")
    assert parse_formats("csv,tex") == ("csv", "tex")


@pytest.mark.postgres
def test_report_from_postgres(postgres_url, tmp_path):
    import uuid

    from sqlalchemy import delete

    from tmafbench.store.schema import Study

    name = f"hand-{uuid.uuid4().hex[:8]}"
    write_hand_study(postgres_url, name)
    try:
        report = build_report(postgres_url, [name], out=tmp_path / "pg", formats=("md", "csv"))
        paired = next(t for t in report.tables if t.name == "paired_vs_baseline").raw
        assert len(paired) == 3 and (report.folder / "index.md").is_file()
    finally:
        engine = create_engine(postgres_url)
        with Session(engine) as session:
            session.execute(delete(Study).where(Study.name == name))
            session.commit()
        engine.dispose()


def test_one_section_per_task(tmp_path):
    """Tasks differ in metric and direction: each gets its own tables and figures."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    write_hand_study(url)
    engine = create_engine(url)
    with Session(engine) as session:
        from tmafbench.store.schema import Study
        from sqlalchemy import select

        study = session.scalar(select(Study).where(Study.name == "hand"))
        for act, values in (("relu", [0.90, 0.92]), ("tmaf", [0.91, 0.95])):
            for seed, v in enumerate(values):
                cell = add_cell(session, study, {"task": "mnist", "activation": act, "seed": seed}, task="mnist")
                add_run(session, cell, metric=("accuracy", "maximize"), finals={"accuracy": v})
        add_cell(session, study, {"task": "oscillatory", "activation": "relu", "seed": 0}, task="oscillatory")
        session.commit()
    engine.dispose()
    report = build_report(url, ["hand"], out=tmp_path / "out", formats=("md", "csv"))
    assert [s.task for s in report.sections] == ["sine-sum", "mnist", "oscillatory"]
    assert [(s.metric, s.direction) for s in report.sections[:2]] == [("rel_l2", "minimize"), ("accuracy", "maximize")]
    assert report.sections[2].metric is None and [t.name for t in report.sections[2].tables] == ["oscillatory_failures"]
    assert (tmp_path / "out" / "tables" / "mnist_paired_vs_baseline.csv").is_file()
    md = (tmp_path / "out" / "index.md").read_text()
    assert "## Task: mnist" in md and "higher is better" in md and "no run has finished yet" in md


# A bimodal study: a seed learns (error near 0.01) or does not (near 0.9). Its file states a success
# threshold and asks for the symmetric t interval, which then reaches below 0 on a log axis.
BIMODAL = {("relu", 1): [0.01, 0.02, 0.9, 0.95, 0.015], ("tmaf", 1): [0.01, 0.012, 0.011, 0.9, 0.014],
           ("relu", 2): [0.9, 0.92, 0.91, 0.95, 0.93], ("tmaf", 2): [0.001, 0.0012, 0.0011, 0.0013, 0.0011]}
TRAINING = {"optimizer": "adam", "lr": 0.003, "act_lr": None, "weight_decay": 0.0, "schedule": "constant",
            "epochs": 1, "batch_size": 100, "init_scale": 1.0}


def _bimodal(session, interval: str = "t") -> None:
    study = add_study(session, "bimodal", report={"interval": interval,
                                                  "success": [{"metric": "rel_l2", "threshold": 0.1}]})
    for (act, n), values in BIMODAL.items():
        for seed, v in enumerate(values):
            cell = add_cell(session, study, {"activation": act, "n": n, "seed": seed},
                            config={"training": TRAINING, "task_params": {"train_size": 1000}})
            add_run(session, cell, finals={"rel_l2": v}, epochs={"rel_l2": [v], "train_loss": [v]})
    session.commit()


def test_success_rate_intervals_and_training_in_the_documents(tmp_path, new_db):
    url, session = new_db
    _bimodal(session)
    report = build_report(url, ["bimodal"], out=tmp_path / "out", formats=parse_formats("md,html,svg"), figure_scale=0.5)
    md = (report.folder / "index.md").read_text()
    # relu n=1 reached 0.1 on 3 of 5 seeds (Clopper-Pearson 0.15..0.95), tmaf n=1 on 4 of 5
    assert "| group | n | runs | rel_l2 mean ± sd | median [IQR] | 95% CI (t) | reached ≤ 0.1 | min | max |" in md
    assert "| relu | 1 | 5/5 | 0.379 ± 0.4988 | 0.02 [0.015, 0.9] | [-0.2403, 0.9983] | 3/5 [0.15, 0.95] |" in md
    assert "4/5 [0.28, 0.99]" in md and "0/5 [0, 0.52]" in md and "5/5 [0.48, 1]" in md
    assert "Student t on the values: symmetric, so it may leave the metric's range" in md
    # the training settings: a table with a row per task, "1" under epochs (never "1 epochs")
    assert ("| task | optimizer | lr | activation lr | weight decay | schedule | epochs | batch | init scale | "
            "loss reduction | data |") in md
    assert "| sine-sum | adam | 0.003 | = lr | 0 | constant | 1 | 100 | 1 | mean | train_size=1000 |" in md
    assert "1 epochs" not in md and "- **Training:** see the table below" in md
    html = (report.folder / "index.html").read_text()
    assert "<th></th>" not in html and '<th class="text">label</th><th>cells</th>' in html
    assert report.summary() == "index.md, index.html (5 tables inside), 6 figure files (3 figures as svg, png)"
    figures = report.folder / "figures"
    assert "cut by the log axis" in (figures / "metric_vs_axis.svg").read_text()
    assert "thin lines = each seed" in (figures / "learning_curves.svg").read_text()
    assert "grey lines link the runs of one seed" in (figures / "seeds.svg").read_text()


def test_positive_errors_get_log_t_intervals_that_stay_positive(tmp_path, new_db):
    url, session = new_db
    _bimodal(session, interval="auto")
    report = build_report(url, ["bimodal"], out=tmp_path / "out", formats=("csv", "svg"), figure_scale=0.5)
    summary = next(t for t in report.tables if t.name == "final_metric").raw
    assert set(summary["ci_method"]) == {"log-t"} and (summary["ci_low"] > 0).all()
    assert "cut by the log axis" not in (report.folder / "figures" / "metric_vs_axis.svg").read_text()
    assert report.summary() == "5 table files (5 tables as csv), 3 figure files (3 figures as svg)"


def test_many_seeds_draw_the_middle_half_instead_of_every_line(tmp_path):
    from tmafbench.store.synthetic import write_synthetic_study

    url = f"sqlite:///{tmp_path / 'many.db'}"
    write_synthetic_study(url, "many", activations=2, ns=1, seeds=12, epochs=3)
    report = build_report(url, ["many"], out=tmp_path / "out", formats=("svg",), figure_scale=0.5)
    assert "band = middle half of the seeds" in (report.folder / "figures" / "learning_curves.svg").read_text()


def test_training_set_error_beside_the_test_error(tmp_path, new_db):
    # Runs with training.evaluate_train store train_rel_l2: the report gives it its own table and
    # a row of learning curves between the test metric and the train loss.
    url, session = new_db
    study = add_study(session, "both-sets")
    for act, level in (("relu", 0.5), ("tmaf", 0.2)):
        for seed in range(3):
            cell = add_cell(session, study, {"activation": act, "seed": seed})
            test, train = [level * (1 + seed / 10) * f for f in (2, 1.2)], [level * f for f in (1.8, 1.0)]
            add_run(session, cell, finals={"rel_l2": test[-1], "train_rel_l2": train[-1], "train_loss": 0.1},
                    epochs={"rel_l2": test, "train_rel_l2": train, "train_loss": [0.2, 0.1]})
    session.commit()
    report = build_report(url, ["both-sets"], out=tmp_path / "out", formats=parse_formats("md,svg"), figure_scale=0.5)
    train = next(t for t in report.tables if t.name == "final_train_metric").raw
    assert train["mean"].tolist() == pytest.approx([0.5, 0.2])
    test = next(t for t in report.tables if t.name == "final_metric").raw
    assert test["mean"].tolist() == pytest.approx([0.5 * 1.2 * 1.1, 0.2 * 1.2 * 1.1], rel=0.01)
    curves = (report.folder / "figures" / "learning_curves.svg").read_text()
    assert "training-set relative L2 error" in curves and "test relative L2 error" in curves
    md = (report.folder / "index.md").read_text()
    assert "## Final train_rel_l2 per group" in md


def test_reference_rows_go_to_their_own_task_section(tmp_path, new_db):
    # Table 3.1's layout: one task label per depth; each published value shows in the section of the
    # task that has its group, and a row that no task has still says so.
    url, session = new_db
    rows = [{"task": "shallow", "activation": "relu", "n": 1, "value": 0.089},
            {"activation": "relu", "n": 5, "value": 0.14},  # matched by its n alone
            {"task": "deep", "activation": "relu", "n": 6, "value": 0.21}]
    study = add_study(session, "two-tasks", reference={"source": "paper Table 3.1", "metric": "rel_l2", "rows": rows})
    for task, n in (("shallow", 1), ("deep", 5)):
        for seed, value in enumerate((0.1, 0.2)):
            cell = add_cell(session, study, {"task": task, "activation": "relu", "n": n, "seed": seed})
            add_run(session, cell, finals={"rel_l2": value})
    session.commit()
    report = build_report(url, ["two-tasks"], out=tmp_path / "out", formats=("csv",))
    refs = {s.task: next(t.raw for t in s.tables if t.name.endswith("reference")) for s in report.sections}
    assert refs["shallow"]["reference"].tolist() == [0.089]
    assert refs["deep"]["reference"].tolist() == [0.14, 0.21]
    assert refs["deep"]["verdict"].tolist()[1] == "no matching group in the study"


def test_a_group_without_the_swept_grid_says_no_grid(tmp_path, new_db):
    # Table 3.2's search: the grid is swept (100 and 200 intervals) and ReLU has none. Headers, cells
    # and file names say "no grid", never None or a dash.
    url, session = new_db
    study = add_study(session, "grids")
    for act, intervals, level in (("relu", None, 0.8), ("tmaf", 100, 0.2), ("tmaf", 200, 0.3)):
        for seed in range(3):
            axes = {"activation": act, "grid": f"h{2 / intervals:g}" if intervals else None, "intervals": intervals,
                    "seed": seed}
            cell = add_cell(session, study, axes)
            add_run(session, cell, finals={"rel_l2": level + seed / 100},
                    epochs={"rel_l2": [1.0, level + seed / 100], "train_loss": [1.0, level]})
    session.commit()
    report = build_report(url, ["grids"], out=tmp_path / "out", formats=parse_formats("md,html"), figure_scale=0.4)
    md = (report.folder / "index.md").read_text()
    assert "| group | no grid | intervals=100 | intervals=200 |" in md
    assert "| relu | no grid | 3/3 |" in md
    assert "None" not in md and "=–" not in md
    assert "predictions_intervals" not in md  # no predictions stored; figures of the sweep are named by slug
    assert not any("None" in p.name for p in (report.folder / "figures").iterdir())


def test_a_timing_ratio_inside_its_spread_is_flagged_noisy(tmp_path, new_db):
    # Epoch times measured while other work shared the machine: TMAF's epochs overlap ReLU's, so its
    # ratio (about 1.05) cannot say which is faster; tri-diagonal TMAF's (about 2) can.
    url, session = new_db
    study = add_study(session, "noisy")
    times = {"relu": [0.8, 1.0, 1.2, 1.0], "tmaf": [0.9, 1.05, 1.3, 1.05], "tmaf-tridiag": [1.9, 2.0, 2.1, 2.0]}
    for act, epoch_times in times.items():
        for seed in range(2):
            cell = add_cell(session, study, {"activation": act, "seed": seed})
            add_run(session, cell, finals={"rel_l2": 0.5}, epochs={"epoch_time_s": epoch_times})
    session.commit()
    report = build_report(url, ["noisy"], out=tmp_path / "out", formats=("md", "csv"))
    md = (report.folder / "index.md").read_text()
    assert "| 1.05 (noisy: the spread includes 1) | [0.964, 1.17] |" in md  # 1.0125 / 1.05, 1.1125 / 0.95
    assert "| 2 | [1.88, 2.13] |" in md and "| 1 | (baseline) |" in md
    raw = next(t for t in report.tables if t.name == "timing").raw
    assert raw["noisy"].tolist()[1:] == [True, False]
