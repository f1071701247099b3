"""Fair tuning: same budget per group, best validation trial chosen, fresh evaluation seeds, no test
metric read while tuning, resume keeps finished trials; `[tune]` validation errors."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import func, select

from tmafbench.errors import SpecError
from tmafbench.store.database import Database
from tmafbench.store.schema import Artifact, Cell, EpochMetric, FinalMetric, Run, Study
from tmafbench.study.scheduler import SpecChangedError, WorkerOptions
from tmafbench.study.tune_spec import apply_params, metric_direction, parse_tuned_spec
from tmafbench.study.tuning import (
    best_trial,
    prepare_tuned,
    run_tuned_local,
    tune_study_name,
    tune_worker_loop,
    tuning_rows,
)

TUNED = """
name = "tuned"
description = "relu vs tmaf, 3 trials each"
[defaults]
task = "sine-sum"
model = "mlp"
task_params = { n = 1, train_size = 96, test_size = 64 }
model_params = { depth = 1, width = 8 }
training = { epochs = 2, batch_size = 32 }
[[axes.activations]]
name = "relu"
[[axes.activations]]
name = "tmaf"
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
"""

FAST = WorkerOptions(poll_s=0.05, heartbeat_s=5.0, grace_s=60.0)


@pytest.fixture
def tuned():
    return parse_tuned_spec(TUNED)


def test_spec_derives_seeds_metric_and_group_spaces(tuned):
    from tmafbench.study.tuning import groups_of

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
    cfg = parse_tuned_spec(TUNED).spec
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
        parse_tuned_spec(TUNED, override, source="t.toml")


def test_missing_tune_keys():
    with pytest.raises(SpecError, match=r"tune\.eval_seeds: missing required key"):
        parse_tuned_spec(TUNED.replace("eval_seeds = 2\n", ""))
    with pytest.raises(SpecError, match=r"tune\.space: missing required key"):
        parse_tuned_spec(TUNED.split("[tune.space]")[0])
    with pytest.raises(SpecError, match=r"tune\.space: .*at least 1 item"):
        parse_tuned_spec(TUNED.split("[tune.space]")[0] + "[tune.space]\n")


def test_best_trial_rule():
    rows = [{"state": "complete", "value": 0.3, "trial_number": 0}, {"state": "pruned", "value": 0.01, "trial_number": 1},
            {"state": "complete", "value": 0.2, "trial_number": 2}, {"state": "complete", "value": 0.2, "trial_number": 3},
            {"state": "fail", "value": None, "trial_number": 4}]
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


def _metric_names(url: str, study: str) -> set[str]:
    db = Database(url)
    with db.session() as s:
        names = set(s.scalars(select(EpochMetric.name).join(Run).join(Cell).join(Study).where(Study.name == study)))
        names |= set(s.scalars(select(FinalMetric.name).join(Run).join(Cell).join(Study).where(Study.name == study)))
    db.dispose()
    return names


@pytest.mark.slow
def test_tuning_study_end_to_end_with_resume(tuned, sqlite_url):
    info = prepare_tuned(tuned, sqlite_url)
    assert info.created and len(info.groups) == 2
    # A first worker stops after 2 slots (a "kill" between trials); the resumed run keeps them.
    first = tune_worker_loop("tuned", sqlite_url, options=WorkerOptions(poll_s=0.05, max_runs=2))
    assert first.runs == 2
    kept = {r.config_hash for r in _runs(sqlite_url, "tuned/tune")}
    again = prepare_tuned(tuned, sqlite_url)
    assert not again.created
    rest = tune_worker_loop("tuned", sqlite_url, options=FAST)
    assert rest.runs == 4 + 4  # 4 remaining slots, then 2 groups x 2 evaluation seeds

    tune_runs = _runs(sqlite_url, "tuned/tune")
    assert len(tune_runs) == 6 and all(r.status == "completed" and r.attempt == 1 for r in tune_runs)
    assert kept <= {r.config_hash for r in tune_runs}  # the first two slots were not run again

    # Same budget per group, in our tables and in Optuna (pruned trials count as finished).
    storage = optuna.storages.RDBStorage(sqlite_url)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    per_group = {}
    for group in info.groups:
        study = optuna.load_study(study_name=group.optuna_name, storage=storage)
        per_group[group.label] = study
        assert len(study.get_trials(states=finished)) == 3
        assert study.user_attrs["pruner"] == "median" and study.user_attrs["metric"] == "val_rel_l2"
    assert {len(v) for v in tuning_rows(Database(sqlite_url), info.tune_id).values()} == {3}

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
    for group in info.groups:
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
    assert tune_worker_loop("tuned", sqlite_url, options=FAST).runs == 0


@pytest.mark.slow
def test_two_local_workers_give_exact_budget(tuned, sqlite_url):
    spec = parse_tuned_spec(TUNED, ["tune.eval_seeds=[5]", "tune.pruner=\"none\""])
    info = prepare_tuned(spec, sqlite_url)
    outcome = run_tuned_local(info, sqlite_url, ["cpu", "cpu"], FAST, poll_s=0.2)
    assert outcome.done and outcome.tune_counts.completed == 6 and outcome.eval_counts.completed == 2
    assert sum(w.runs for w in outcome.workers) == 8 and sum(w.locked_errors for w in outcome.workers) == 0
    runs = _runs(sqlite_url, "tuned/tune")
    assert len(runs) == 6 and len({r.cell_id for r in runs}) == 6
    storage = optuna.storages.RDBStorage(sqlite_url)
    for group in info.groups:
        trials = optuna.load_study(study_name=group.optuna_name, storage=storage).trials
        assert [t.state for t in trials].count(optuna.trial.TrialState.COMPLETE) == 3
        # parallel workers drew different points (seeded per slot, not one seed everywhere)
        assert len({t.params["training.lr"] for t in trials}) == 3


def test_changed_tuned_design_is_refused(tuned, sqlite_url):
    prepare_tuned(tuned, sqlite_url)
    with pytest.raises(SpecChangedError, match="--new-name"):
        prepare_tuned(parse_tuned_spec(TUNED, ["tune.trials=4"]), sqlite_url)
    other = prepare_tuned(parse_tuned_spec(TUNED, ["tune.trials=4"]), sqlite_url, new_name="tuned-4")
    db = Database(sqlite_url)
    with db.session() as s:
        slots = s.scalar(select(func.count(Cell.id)).where(Cell.study_id == other.tune_id))
        kinds = dict(s.execute(select(Study.name, Study.kind)).all())
        parent = s.scalar(select(Study.parent_id).where(Study.name == tune_study_name("tuned-4")))
    db.dispose()
    assert slots == 8 and parent == other.main_id
    assert kinds == {"tuned": "eval", "tuned/tune": "tune", "tuned-4": "eval", "tuned-4/tune": "tune"}
