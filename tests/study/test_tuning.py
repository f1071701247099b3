"""Fair tuning: same budget per group, best validation trial chosen, fresh evaluation seeds, no test
metric read while tuning, resume keeps finished trials; `[tune]` validation errors."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import func, select

from tmafbench.errors import SpecError
from tmafbench.store.database import Database
from tmafbench.store.schema import Cell, EpochMetric, FinalMetric, Run, Study, Timing
from tmafbench.core import SlotState, best_trial, metric_direction
from tmafbench.store.repository import Limits, Repository
from tmafbench.study.design import parse_design
from tmafbench.study.lifecycle import SpecChangedError, prepare
from tmafbench.study.plan import tune_study_name
from tmafbench.study.worker import WorkerOptions
from tmafbench.study.loop import worker_loop
from tmafbench.study.tune_spec import apply_params
from tmafbench.study.plan import groups_of

from tiny_specs import study_toml

TUNED = study_toml("tuned", description="relu vs tmaf, 3 trials each", model="mlp", train_size=96, epochs=2, seeds=None,
                   activations=("relu", "tmaf"), tail="""\
[tune]
trials = 3
seeds = 1
eval_seeds = 2
pruner = "median"
sampler_seed = 7
[tune.space]
"training.lr" = { low = 1e-3, high = 3e-2, log = true }
training.batch_size = { choices = [16, 32] }
"act_params.init" = { choices = ["relu", "random"] }
""")

FAST = WorkerOptions(poll_s=0.05, heartbeat_s=5.0, grace_s=60.0)


@pytest.fixture
def tuned():
    return parse_design(TUNED)


def test_spec_derives_seeds_metric_and_group_spaces(tuned):
    assert tuned.tune.metric == "val_rel_l2" and metric_direction(tuned.tune.metric) == "minimize"
    assert tuned.tune.tune_seed_list() == [0] and tuned.tune.eval_seed_list() == [1, 2]
    assert tuned.spec.axes.seed_list() == [1, 2]  # the study's cells are the evaluation cells
    relu, tmaf = groups_of(tuned, "tuned")
    assert set(relu.space) == {"training.lr", "training.batch_size"}  # relu takes no `init`
    assert set(tmaf.space) == {"training.lr", "training.batch_size", "act_params.init"}
    assert relu.optuna_name == "tuned/tune/relu depth=1 width=8"
    assert [c.config.seed for c in relu.cells] == [1, 2]
    assert metric_direction("val_accuracy") == "maximize"


def test_apply_params_sets_sections():
    cfg = parse_design(TUNED).spec
    from tmafbench.study.cells import expand

    base = expand(cfg)[0].config
    out = apply_params(base, {"training.lr": 0.02, "task_params.n": 1, "model_params.width": 4})
    assert out.training.lr == 0.02 and out.model_params["width"] == 4 and out.training.epochs == 2


@pytest.mark.parametrize(
    "override, message",
    [
        (["tune.trials=0"], r"tune\.trials: Input should be greater than or equal to 1"),
        (["tune.pruner=\"hyperband\""], r"tune\.pruner: Input should be 'none', 'median' or 'successive-halving'"),
        (["tune.eval_seeds=[0, 5]"], r"tune\.eval_seeds: evaluation seeds must be fresh; \[0\] are also tuning seeds"),
        (["tune.metric=\"rel_l2\""], r"tune\.metric: tuning reads validation metrics only"),
        (["tune.metric=\"val_accuracy\""], r"tune\.metric: unknown metric 'val_accuracy'; choose one of: val_max_abs, val_mse, val_rel_l2"),
        (["axes.seeds=3"], r"axes\.seeds: a study with \[tune\] takes its seeds from tune\.seeds"),
        (["tune.space.foo={ low = 1, high = 2 }"], r"tune\.space\.foo: a search-space key is section\.name"),
        (["tune.space.training.epochs={ low = 1, high = 4 }"], r"training\.epochs cannot be tuned: the epoch budget is fixed"),
        (["tune.space.training.evaluate_test={ choices = [true] }"], r"the test set is never read while tuning"),
        (["tune.space.training.nope={ low = 1, high = 2 }"], r"unknown training option 'nope'"),
        (["tune.space.act_params.bandwidth={ low = 1, high = 2 }"], r"no activation of the study takes parameter 'bandwidth'"),
        (["tune.space.training.lr={ low = 0.1, high = 0.01 }"], r"tune\.space\.training\.lr\.?.*low must be < high"),
        (["tune.space.training.lr={ low = 0.0, high = 0.1, log = true }"], r"a log range needs low > 0"),
        (["tune.space.training.lr={ low = -1.0, high = 0.1 }"], r"value -1\.0 fails for 'relu depth=1 width=8': lr must be > 0"),
        (["tune.space.act_params.init={ choices = [\"bogus\"] }"], r"tune\.space\.act_params\.init: value 'bogus' fails for 'tmaf"),
        (["tune.space.training.lr={ low = 1e-3, high = 1e-2, activations = [\"gelu\"] }"], r"unknown activation label 'gelu'"),
        (["tune.bogus=1"], r"tune\.bogus: unknown key"),
    ],
)
def test_tune_validation_errors_name_the_key(override, message):
    with pytest.raises(SpecError, match=message):
        parse_design(TUNED, override, source="t.toml")


def test_missing_tune_keys():
    with pytest.raises(SpecError, match=r"tune\.eval_seeds: missing required key"):
        parse_design(TUNED.replace("eval_seeds = 2\n", ""))
    with pytest.raises(SpecError, match=r"tune\.space: missing required key"):
        parse_design(TUNED.split("[tune.space]")[0])
    with pytest.raises(SpecError, match=r"tune\.space: .*at least 1 item"):
        parse_design(TUNED.split("[tune.space]")[0] + "[tune.space]\n")


def test_best_trial_rule():
    rows = [{"state": "completed", "value": 0.3, "trial_number": 0}, {"state": "pruned", "value": 0.01, "trial_number": 1},
            {"state": "completed", "value": 0.2, "trial_number": 2}, {"state": "complete", "value": 0.2, "trial_number": 3},
            {"state": "failed", "value": None, "trial_number": 4}]  # "complete": as the first release stored it
    assert best_trial(rows, "minimize")["trial_number"] == 2
    assert best_trial(rows, "maximize")["trial_number"] == 0
    assert best_trial([{"state": "pruned", "value": 0.1, "trial_number": 0}], "minimize") is None


def _runs(url: str, study: str) -> list[tuple]:
    db = Database(url)
    with db.session() as s:
        rows = s.execute(select(Cell.id.label("cell_id"), Cell.config_hash, Cell.seed, Run.id.label("run_id"), Run.status, Run.attempt)
                         .join(Study, Study.id == Cell.study_id).join(Run, Run.cell_id == Cell.id)
                         .where(Study.name == study)).all()
    db.dispose()
    return rows


def _tuning_rows(url: str, tune_id: int) -> dict:
    db = Database(url)
    try:
        return Repository(db).tuning_rows(tune_id)
    finally:
        db.dispose()


def _tune_id(info) -> int:
    return info.phases[0].study_id


def _metric_names(url: str, study: str) -> set[str]:
    db = Database(url)
    with db.session() as s:
        names = set(s.scalars(select(EpochMetric.name).join(Run).join(Cell).join(Study).where(Study.name == study)))
        names |= set(s.scalars(select(FinalMetric.name).join(Run).join(Cell).join(Study).where(Study.name == study)))
    db.dispose()
    return names


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tuned study run to the end in this process: 2 slots, a stop, then a resumed worker."""
    sqlite_url = f"sqlite:///{tmp_path_factory.mktemp('tuned') / 'results.db'}"
    tuned = parse_design(TUNED)
    info = prepare(tuned, sqlite_url)
    first = worker_loop("tuned", sqlite_url, options=WorkerOptions(poll_s=0.05, max_runs=2))
    kept = {r.config_hash for r in _runs(sqlite_url, "tuned/tune")}
    again = prepare(tuned, sqlite_url)
    rest = worker_loop("tuned", sqlite_url, options=FAST)
    return sqlite_url, info, again, first, kept, rest


def test_tuned_study_takes_a_new_reference_and_resumes_a_first_release_hash(tuned, sqlite_url):
    from sqlalchemy import update

    from tmafbench.study.design import DOCUMENTATION_KEYS, _legacy_hash

    info = prepare(tuned, sqlite_url)
    with_reference = parse_design(TUNED + """
[reference]
source = "paper Table 9"
metric = "rel_l2"
rows = [{ activation = "relu", value = 0.25 }]
""")
    again = prepare(with_reference, sqlite_url)  # not "another design": the reference documents it
    assert again.id == info.id and again.message.endswith("updated its reference from the file")
    db = Database(sqlite_url)
    with db.session() as s:
        assert s.get(Study, info.id).reference["source"] == "paper Table 9"
        # earlier releases hashed the whole file (first: with description and reference): still the same design
        for legacy in (_legacy_hash(with_reference.data, ("name",)), _legacy_hash(with_reference.data, DOCUMENTATION_KEYS)):
            s.execute(update(Study).where(Study.id == info.id).values(spec_hash=legacy))
            s.flush()
            assert with_reference.same_design(legacy)
    db.dispose()
    assert prepare(with_reference, sqlite_url).id == info.id
    db = Database(sqlite_url)
    with db.session() as s:  # and the stored hash is brought up to date
        assert s.get(Study, info.id).spec_hash == with_reference.design_hash() != legacy
    db.dispose()
    with_report = parse_design(TUNED + "[report]\ninterval = 'bootstrap'\n")  # no reference; [report] added
    assert prepare(with_report, sqlite_url).message.endswith("updated its reference and [report] table from the file")


def test_status_of_a_tuned_study_counts_both_phases(tuned, sqlite_url):
    prepare(tuned, sqlite_url)
    db = Database(sqlite_url)
    try:
        status = Repository(db).study_status("tuned")
    finally:
        db.dispose()
    # Before tuning ends the study has no evaluation cells; it is not "finished" for that.
    assert status["total"] == 0 and status["finished"] is False and status["phase"] == "tuning"
    assert status["tuning"] == {"total": 6, "done": 0, "running": 0, "failed": 0, "crashed": 0, "pending": 6}


@pytest.mark.slow
def test_finished_tuned_study_status(finished):
    db = Database(finished[0])
    try:
        status = Repository(db).study_status("tuned")
    finally:
        db.dispose()
    assert status["phase"] == "evaluation" and status["finished"] is True
    assert status["tuning"]["done"] == 6 and status["done"] == status["total"] == 4


@pytest.mark.slow
def test_tuning_study_end_to_end_with_resume(finished):
    sqlite_url, info, again, first, kept, rest = finished
    groups = groups_of(info.design, "tuned")
    assert info.created and len(groups) == 2 and not again.created
    # A first worker stopped after 2 slots (a "kill" between trials); the resumed run kept them.
    assert first.runs == 2 and len(kept) == 2
    assert rest.runs == 4 + 4  # 4 remaining slots, then 2 groups x 2 evaluation seeds

    tune_runs = _runs(sqlite_url, "tuned/tune")
    assert len(tune_runs) == 6 and all(r.status == "completed" and r.attempt == 1 for r in tune_runs)
    assert kept <= {r.config_hash for r in tune_runs}  # the first two slots were not run again

    # Same budget per group, in our tables and in Optuna (pruned trials count as finished).
    storage = optuna.storages.RDBStorage(sqlite_url)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    per_group = {}
    for group in groups:
        study = optuna.load_study(study_name=group.optuna_name, storage=storage)
        per_group[group.label] = study
        assert len(study.get_trials(states=finished)) == 3
        assert study.user_attrs["pruner"] == "median" and study.user_attrs["metric"] == "val_rel_l2"
    assert {len(v) for v in _tuning_rows(sqlite_url, _tune_id(info)).values()} == {3}

    # No test metric was read during tuning: only val_* and train_loss (and timings) are stored.
    names = _metric_names(sqlite_url, "tuned/tune")
    assert {"val_rel_l2", "val_mse", "val_max_abs", "train_loss"} <= names
    assert not names & {"rel_l2", "mse", "max_abs"}

    # Evaluation: fresh seeds, the best validation trial's settings, test metrics measured.
    db = Database(sqlite_url)
    with db.session() as s:
        eval_cells = s.execute(select(Cell.label, Cell.seed, Cell.config).join(Study).where(Study.name == "tuned")).all()
        statuses = set(s.scalars(select(Run.status).join(Cell).join(Study).where(Study.name == "tuned")))
    assert statuses == {"completed"}
    assert sorted(c.seed for c in eval_cells) == [1, 1, 2, 2]
    assert {"rel_l2", "val_rel_l2"} & _metric_names(sqlite_url, "tuned") == {"rel_l2"}
    for group in groups:
        best = per_group[group.label].best_trial
        configs = [c.config for c in eval_cells if c.label == group.label]
        assert len(configs) == 2
        for config in configs:
            assert config["training"]["lr"] == best.params["training.lr"]
            assert config["training"]["batch_size"] == best.params["training.batch_size"]
            assert config["training"]["val_fraction"] == 0.0 and config["training"]["evaluate_test"] is True
            if "act_params.init" in best.params:
                assert config["act_params"]["init"] == best.params["act_params.init"]
    db.dispose()

    # Resume after the end: nothing runs again.
    assert worker_loop("tuned", sqlite_url, options=FAST).runs == 0


@pytest.mark.slow
def test_cli_runs_both_phases_with_two_workers_and_exact_budget(tmp_path, sqlite_url):
    from typer.testing import CliRunner

    from tmafbench.cli import app

    path = tmp_path / "tuned.toml"
    path.write_text(TUNED)
    args = ["study", "run", str(path), "--workers", "2", "--devices", "cpu", "--storage", sqlite_url,
            "--set", "tune.eval_seeds=[5]", "--set", 'tune.pruner="none"']
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6/6 tuning slots done" in result.output and "2/2 evaluation cells done" in result.output
    runs = _runs(sqlite_url, "tuned/tune")
    assert len(runs) == 6 and len({r.cell_id for r in runs}) == 6 and {r.status for r in runs} == {"completed"}
    assert sorted(r.seed for r in _runs(sqlite_url, "tuned")) == [5, 5]
    storage = optuna.storages.RDBStorage(sqlite_url)
    for label in ("relu depth=1 width=8", "tmaf [-5,5]/10 depth=1 width=8"):
        trials = optuna.load_study(study_name=f"tuned/tune/{label}", storage=storage).trials
        assert [t.state for t in trials].count(optuna.trial.TrialState.COMPLETE) == 3
        # parallel workers drew different points (seeded per slot, not one seed everywhere)
        assert len({t.params["training.lr"] for t in trials}) == 3
    storage.engine.dispose()


def test_cli_cells_dry_run_and_errors(tmp_path, sqlite_url):
    from typer.testing import CliRunner

    from tmafbench.cli import app

    path = tmp_path / "tuned.toml"
    path.write_text(TUNED)
    runner = CliRunner()
    shown = runner.invoke(app, ["study", "cells", str(path)])
    assert shown.exit_code == 0 and "2 groups x 3 trials" in shown.output and "pruner median" in shown.output
    dry = runner.invoke(app, ["study", "run", str(path), "--dry-run", "--storage", sqlite_url])
    assert dry.exit_code == 0 and "4 cells" in dry.output
    bad = runner.invoke(app, ["study", "run", str(path), "--storage", sqlite_url, "--set", "tune.eval_seeds=[0]"])
    assert bad.exit_code == 2 and "tune.eval_seeds: evaluation seeds must be fresh" in bad.output
    forced = runner.invoke(app, ["study", "run", str(path), "--storage", sqlite_url, "--force", "--devices", "cpu"])
    assert forced.exit_code == 2 and "--force is not offered for a tuned study" in forced.output


def test_changed_tuned_design_is_refused(tuned, sqlite_url):
    prepare(tuned, sqlite_url)
    with pytest.raises(SpecChangedError, match="--new-name"):
        prepare(parse_design(TUNED, ["tune.trials=4"]), sqlite_url)
    other = prepare(parse_design(TUNED, ["tune.trials=4"]).renamed("tuned-4"), sqlite_url)
    db = Database(sqlite_url)
    with db.session() as s:
        slots = s.scalar(select(func.count(Cell.id)).where(Cell.study_id == _tune_id(other)))
        kinds = dict(s.execute(select(Study.name, Study.kind)).all())
        parent = s.scalar(select(Study.parent_id).where(Study.name == tune_study_name("tuned-4")))
    db.dispose()
    assert slots == 8 and parent == other.id
    assert kinds == {"tuned": "eval", "tuned/tune": "tune", "tuned-4": "eval", "tuned-4/tune": "tune"}
    # Deleting a tuned study removes its tune study (cascade) and its per-group Optuna studies.
    from typer.testing import CliRunner

    from tmafbench.cli import app

    result = CliRunner().invoke(app, ["study", "delete", "tuned-4", "--yes", "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    left = {s.study_name for s in optuna.get_all_study_summaries(sqlite_url)}
    assert not any(n.startswith("tuned-4") for n in left) and "tuned/tune/relu depth=1 width=8" in left
    db = Database(sqlite_url)
    with db.session() as s:
        assert set(s.scalars(select(Study.name))) == {"tuned", "tuned/tune"}
    db.dispose()


@pytest.mark.slow
def test_report_shows_tuning_history_settings_and_eval_seeds_only(finished, tmp_path):
    import pandas as pd

    from tmafbench.reports import frames, tuning
    from tmafbench.reports.render import build_report, render_markdown

    sqlite_url, info, *_ = finished
    # Tables only (the ordinary figures are D's and slow); the tuning figure is drawn below.
    report = build_report(sqlite_url, ["tuned"], out=tmp_path / "rep", formats=("csv",))
    settings = pd.read_csv(tmp_path / "rep" / "tables" / "tuning_settings.csv")
    assert list(settings["trials"]) == [3, 3]
    storage = optuna.storages.RDBStorage(sqlite_url)
    for group in groups_of(info.design, "tuned"):
        row = settings[settings["group"] == group.label].iloc[0]
        best = optuna.load_study(study_name=group.optuna_name, storage=storage).best_trial
        assert row["best_trial"] == best.number and row["best_value"] == pytest.approx(best.value)
        assert row["training.lr"] == pytest.approx(best.params["training.lr"])
    engine = frames.open_readonly(sqlite_url)
    data = frames.load(engine, ["tuned"])
    assert sorted(data.cells["seed"]) == [1, 1, 2, 2]  # the comparison: evaluation cells only
    text = render_markdown(report, data)
    assert "## Tuning" in text and "pruner: median" in text and "test set was not read while tuning" in text
    assert "evaluation seeds [1, 2] only" in text and "## Comparison on the evaluation seeds" in text
    section = tuning.build_section(engine, ["tuned"], tmp_path / "fig", ("png",), scale=0.5)
    engine.dispose()
    assert section.figures[0].paths["png"].is_file() and section.figures[0].name == "tuning_history"


def test_guard_refuses_a_test_metric_during_tuning(tuned):
    """train_slot on a config that would evaluate the test set stops at the first epoch."""
    from tmafbench.study.plan import tuning_config
    from tmafbench.study.tuning import TuningProtocolError, train_slot

    group = groups_of(tuned, "tuned")[0]
    config = tuning_config(tuned, group)
    assert config.training.evaluate_test is False and config.training.val_fraction == 0.2
    trial = optuna.create_study().ask()
    leaky = config.replace(training=config.training.replace(evaluate_test=True))
    with pytest.raises(TuningProtocolError, match=r"measured test metrics \['rel_l2'"):
        train_slot(leaky, trial=trial, params={"training.lr": 0.01}, seeds=[0], metric="val_rel_l2", direction="minimize")
    result = train_slot(config, trial=optuna.create_study().ask(), params={"training.lr": 0.01}, seeds=[0, 3],
                        metric="val_rel_l2", direction="minimize")
    assert [r.epoch for r in result.epochs] == [1, 2, 3, 4]  # seed index * epochs + epoch
    tuning = result.artifacts["tuning"]
    assert tuning["state"] == SlotState.COMPLETED and tuning["config"]["training"]["lr"] == 0.01
    assert tuning["value"] == pytest.approx(sum(tuning["per_seed"]) / 2)
    assert result.final_metrics["val_rel_l2"] == pytest.approx(tuning["value"]) and result.final_metrics["pruned"] == 0.0


@pytest.mark.slow
def test_dead_worker_slot_is_retried_and_its_trial_failed(sqlite_url):
    """A worker that died mid-trial (stale heartbeat, Optuna trial left RUNNING): the slot runs again
    as attempt 2, the orphaned trial is closed as FAIL, and the budget stays exact."""
    from datetime import timedelta

    from sqlalchemy import update

    from tmafbench.store.schema import utcnow

    spec = parse_design(TUNED, ["tune.trials=2", "tune.eval_seeds=[3]", 'tune.pruner="successive-halving"'])
    info = prepare(spec, sqlite_url)
    first_group = groups_of(info.design, "tuned")[0]
    db = Database(sqlite_url)
    repo = Repository(db)
    claim = repo.claim_cell(_tune_id(info), Limits(), host="elsewhere", worker="pid 1", device="cpu")
    study = optuna.load_study(study_name=first_group.optuna_name, storage=sqlite_url)
    orphan = study.ask()
    repo.set_trial_number(claim.run_id, orphan.number)
    with db.session() as s:  # the worker died two minutes ago
        s.execute(update(Run).where(Run.id == claim.run_id).values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    db.dispose()
    stats = worker_loop("tuned", sqlite_url, options=FAST)
    assert stats.stale_marked == 1 and stats.runs == 4 + 2
    attempts = sorted((r.attempt, r.status) for r in _runs(sqlite_url, "tuned/tune") if r.cell_id == claim.cell_id)
    assert attempts == [(1, "lost"), (2, "completed")]
    states = [t.state for t in optuna.load_study(study_name=first_group.optuna_name, storage=sqlite_url).trials]
    finished = states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED)
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and finished == 2


@pytest.mark.postgres
@pytest.mark.slow
def test_tuning_on_postgres(postgres_url):
    """Both phases in-process on a fresh PostgreSQL database: exact budget, evaluation on new seeds."""
    from tmafbench.store.scratch import scratch_database

    with scratch_database(postgres_url) as url:
        spec = parse_design(TUNED, ["tune.trials=2", "tune.eval_seeds=[4]"])
        info = prepare(spec, url)
        stats = worker_loop("tuned", url, options=FAST)
        assert stats.runs == 4 + 2 and stats.failed == 0
        assert {len(v) for v in _tuning_rows(url, _tune_id(info)).values()} == {2}
        assert sorted(r.seed for r in _runs(url, "tuned")) == [4, 4]
        assert not _metric_names(url, "tuned/tune") & {"rel_l2", "mse", "max_abs"}


def _largest_packs(url: str) -> dict[str, float]:
    """Study name -> the largest pack_size any of its runs trained in."""
    db = Database(url)
    with db.session() as s:
        sizes = dict(s.execute(select(Study.name, func.max(Timing.value)).join(Cell, Cell.study_id == Study.id)
                               .join(Run, Run.cell_id == Cell.id).join(Timing, Timing.run_id == Run.id)
                               .where(Timing.name == "pack_size").group_by(Study.name)).all())
    db.dispose()
    return sizes


@pytest.mark.slow
def test_tuning_slots_train_packed_with_the_same_budget(sqlite_url, monkeypatch):
    """Slots claimed together train seed by seed in one pack; every group still gets exactly its trials."""
    monkeypatch.setenv("TMAFBENCH_KERNEL", "torch")
    spec = parse_design(TUNED, ["tune.seeds=2", "tune.eval_seeds=[5, 6]", 'tune.pruner="none"', "tune.startup_trials=3",
                                'tune.space.training.batch_size={ choices = [16] }'])
    info = prepare(spec, sqlite_url)
    stats = worker_loop("tuned", sqlite_url, options=WorkerOptions(poll_s=0.05, pack=3))
    assert stats.runs == 6 + 4 and stats.failed == 0
    assert _largest_packs(sqlite_url) == {"tuned/tune": 3.0, "tuned": 2.0}  # a group's 3 slots; a group's 2 evaluation seeds
    for group in groups_of(info.design, "tuned"):
        trials = optuna.load_study(study_name=group.optuna_name, storage=sqlite_url).trials
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
        assert all(len(t.intermediate_values) == 2 * 2 for t in trials)  # 2 seeds x 2 epochs reported


@pytest.mark.slow
def test_a_tuning_pack_holds_no_more_slots_than_the_samplers_random_start(sqlite_url, monkeypatch):
    """With --pack 16 and 6 trials (TPE's random start: 2), slots run in packs of at most 2, so every
    trial after the first two was proposed with finished trials to learn from."""
    monkeypatch.setenv("TMAFBENCH_KERNEL", "torch")
    spec = parse_design(TUNED, ["tune.trials=6", "tune.startup_trials=2", "tune.eval_seeds=[5, 6]",
                                'tune.pruner="none"', 'tune.space.training.batch_size={ choices = [16] }'])
    info = prepare(spec, sqlite_url)
    stats = worker_loop("tuned", sqlite_url, options=WorkerOptions(poll_s=0.05, pack=16))
    assert stats.runs == 12 + 4 and stats.failed == 0
    assert _largest_packs(sqlite_url) == {"tuned/tune": 2.0, "tuned": 2.0}  # evaluation seeds still pack as --pack says
    for group in groups_of(info.design, "tuned"):
        trials = optuna.load_study(study_name=group.optuna_name, storage=sqlite_url).trials
        first_done = min(t.datetime_complete for t in trials)
        assert sum(t.datetime_start < first_done for t in trials) == 2  # only the random start went blind
