"""Statistics against hand-computed values on the study of hand_study.py."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from hand_study import VALUES
from tmafbench.errors import TmafbenchError
from tmafbench.reports import frames, stats
from tmafbench.store.synthetic import add_cell, add_run, add_study


@pytest.fixture
def data(hand_db):
    engine = frames.open_readonly(hand_db)
    yield frames.load(engine, ["hand"])
    engine.dispose()


def _row(frame, series, n):
    hit = frame[(frame["series"] == series) & (frame["sweep"] == n)]
    assert len(hit) == 1, (series, n, frame)
    return hit.iloc[0]


def test_holm_matches_hand_values():
    # m = 4; sorted p: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is skipped and does not count in m; results are capped at 1
    adjusted = stats.holm([0.5, float("nan"), 0.6])
    assert adjusted[0] == pytest.approx(1.0) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(1.0)


def test_describe_matches_hand_values():
    x = [1.0, 2.0, 4.0]
    out = stats.describe(x + [float("nan")])
    mean, sd = 7 / 3, statistics.stdev(x)
    half = sps.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert out["n"] == 3 and out["mean"] == pytest.approx(mean) and out["sd"] == pytest.approx(sd)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((mean - half, mean + half))
    assert (out["min"], out["max"]) == (1.0, 4.0)
    # quartiles by linear interpolation: 25% at rank 0.5 (1.5), 75% at rank 1.5 (3.0)
    assert (out["median"], out["q25"], out["q75"]) == pytest.approx((2.0, 1.5, 3.0))
    single = stats.describe([3.0])
    assert single["n"] == 1 and single["mean"] == 3.0 and math.isnan(single["sd"]) and math.isnan(single["ci_low"])
    assert single["median"] == 3.0


def test_paired_test_choice():
    for d in ([0.1], [0.1, 0.2], [0.1, 0.2, -0.05, 0.3]):  # fewer than 5 pairs: no test, no p-value
        assert stats.paired_test(d).test == stats.TOO_FEW == "too few seeds for a test"
        assert math.isnan(stats.paired_test(d).p) and math.isnan(stats.effect_size_dz(d))
    assert math.isnan(stats.paired_test([0.002, 0.0021]).p)  # a p = 0.002 from 2 seeds is not printed again
    same = stats.paired_test([0.0] * 5)
    assert same.test == "identical" and same.p == 1.0
    five = [0.1, 0.2, -0.05, 0.3, 0.15]
    few = stats.paired_test(five)
    assert few.test == "paired t" and few.p == pytest.approx(sps.ttest_1samp(five, 0).pvalue)
    many = [0.1, 0.2, -0.05, 0.3, 0.15, 0.25, 0.05]
    assert stats.paired_test(many).p == pytest.approx(sps.wilcoxon(many).pvalue) and stats.paired_test(many).used == 7
    assert stats.probability_of_improvement([1, -1, 0, 2]) == pytest.approx(2.5 / 4)
    # float noise is rounded away: 0.881 - 0.88 and 0.88 - 0.879 are the same gap, 0.1 + 0.2 ties 0.3
    assert list(stats.improvement([0.881, 0.88], [0.88, 0.879], "maximize")) == [0.001, 0.001]
    assert list(stats.improvement([0.1 + 0.2], [0.3], "minimize")) == [0.0]


T_975_2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables: 4.303)
T_975_1 = 12.706204736174704  # ... with 1 degree of freedom (tables: 12.71)


def test_log_t_interval_by_hand():
    # logs 0, 1, 2: mean 1, sd 1, half-width t * 1 / sqrt(3); back on the original scale with exp
    half = T_975_2 / math.sqrt(3)
    low, high = stats.interval([1.0, math.e, math.e**2], "log-t")
    assert (low, high) == pytest.approx((math.exp(1 - half), math.exp(1 + half)))
    # The quickstart's ReLU at 2 seeds: the t interval was [-0.508, 1.791] for an error that cannot be
    # negative; on the log scale: mean log -0.45384, sd 0.20081, half 12.706 * 0.20081 / sqrt(2) = 1.8042
    assert stats.interval([0.5511, 0.7321], "t")[0] == pytest.approx(-0.5083, abs=1e-4)
    assert stats.interval([0.5511, 0.7321], "log-t") == pytest.approx((0.10458, 3.8587), rel=1e-3)
    logs = np.log([0.5511, 0.7321])
    half = T_975_1 * logs.std(ddof=1) / math.sqrt(2)
    assert stats.interval([0.5511, 0.7321], "log-t") == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))


def test_logit_t_interval_stays_inside_zero_one():
    # logits -1, 0, 1 (accuracies 0.269, 0.5, 0.731): mean 0, sd 1; back with the logistic function
    values = [1 / (1 + math.e), 0.5, 1 / (1 + math.exp(-1))]
    half = T_975_2 / math.sqrt(3)
    assert stats.interval(values, "logit-t") == pytest.approx((1 / (1 + math.exp(half)), 1 / (1 + math.exp(-half))))
    low, high = stats.interval([0.97, 0.99, 0.995], "logit-t")
    assert 0 < low < high < 1 and stats.interval([0.97, 0.99, 0.995], "t")[1] > 1  # the t interval leaves [0, 1]


def test_bootstrap_interval_by_hand_and_reproducible():
    # Two seeds: the resampled means are 0.2, 0.4, 0.6 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% points are the two values themselves.
    assert stats.interval([0.2, 0.6], "bootstrap") == pytest.approx((0.2, 0.6))
    bimodal = [0.01, 0.02, 0.015, 0.4, 0.45]
    low, high = stats.interval(bimodal, "bootstrap")
    assert min(bimodal) <= low < np.mean(bimodal) < high <= max(bimodal)
    assert stats.interval(bimodal, "t")[0] < 0  # what the t interval does with the same seeds
    assert stats.interval(bimodal, "bootstrap") == (low, high)  # seeded: a rebuilt report shows the same
    assert stats.interval([0.3, 0.3, 0.3], "bootstrap") == (0.3, 0.3)  # no spread: a point
    assert all(math.isnan(v) for v in stats.interval([0.3], "bootstrap"))


def test_interval_method_follows_the_metric_range():
    assert stats.choose_interval("rel_l2", [0.1, 0.7]) == "log-t"
    assert stats.choose_interval("val_mse", [0.1, 0.7]) == "log-t"
    assert stats.choose_interval("accuracy", [0.88, 0.9]) == "logit-t"
    assert stats.choose_interval("accuracy", [0.99, 1.0]) == "bootstrap"  # a value on the edge of (0, 1)
    assert stats.choose_interval("rel_l2", [0.0, 0.7]) == "bootstrap"
    assert stats.choose_interval("bleu", [3.0, 4.0]) == "bootstrap"  # range unknown: stay within the values
    assert stats.choose_interval("rel_l2", [0.1, 0.7], "t") == "t"
    with pytest.raises(TmafbenchError, match="unknown interval 'wald'"):
        stats.choose_interval("rel_l2", [0.1], "wald")


def test_success_rate_by_hand():
    assert list(stats.reaches([0.05, 0.1, 0.2, float("nan")], 0.1, "minimize")) == [True, True, False, False]
    assert list(stats.reaches([0.95, 0.9, 0.85], 0.9, "maximize")) == [True, True, False]
    rate = stats.success_rate(3, 5)
    # Clopper-Pearson for 3 of 5: Beta(0.025; 3, 3) = 0.1466 and Beta(0.975; 4, 2) = 0.9473
    assert rate["success_rate"] == 0.6 and (rate["success_low"], rate["success_high"]) == pytest.approx((0.1466, 0.9473), abs=1e-4)
    none = stats.success_rate(0, 4)
    assert none["success_low"] == 0 and none["success_high"] == pytest.approx(1 - 0.025 ** (1 / 4))
    assert math.isnan(stats.success_rate(0, 0)["success_rate"])


def test_ties_rule_by_hand():
    # 7 pairs, one tied: Wilcoxon ranks the 6 untied |d| = .05 .1 .15 .2 .25 .3 -> ranks 1..6; the one
    # negative difference has rank 1, so W- = 1 and W+ = 20. Exact two-sided p for n = 6, W = 1:
    # 2 of the 64 sign patterns have W <= 1, doubled: 4/64 = 0.0625.
    test = stats.paired_test([0.1, 0.2, 0.0, 0.3, -0.05, 0.15, 0.25])
    assert (test.test, test.used, test.statistic) == ("wilcoxon", 6, 1.0)
    assert test.p == pytest.approx(4 / 64)
    # 6 pairs but only 4 untied: too few for Wilcoxon; the paired t test uses every pair
    d = [0.1, 0.2, 0.0, 0.0, 0.3, -0.05]
    test = stats.paired_test(d)
    assert (test.test, test.used) == ("paired t", 6)
    assert test.p == pytest.approx(sps.ttest_1samp(d, 0).pvalue)
    assert stats.paired_test([0.0] * 5).used == 5


def test_float32_noise_is_a_tie_and_equal_means_have_zero_effect():
    f32 = lambda values: [float(np.float32(v)) for v in values]  # noqa: E731  (accuracy is a float32 mean)
    imp = stats.improvement(np.array(f32([0.880, 0.881])), np.array(f32([0.879, 0.882])), "maximize")
    assert list(imp) == [0.001, -0.001] and stats.mean_improvement(imp) == 0.0
    imp = stats.improvement(np.array(f32([0.93, 0.92, 0.91])), np.array(f32([0.92, 0.93, 0.91])), "maximize")
    assert list(imp) == [0.01, -0.01, 0.0]
    imp = np.concatenate([imp, imp])  # 6 pairs: enough for an effect size
    assert stats.effect_size_dz(imp) == 0.0  # equal means: 0, not float noise such as -1.05e-05
    five = [0.1, 0.3, 0.2, 0.25, 0.15]
    assert stats.effect_size_dz(five) == pytest.approx(statistics.mean(five) / statistics.stdev(five))


def test_noise_across_a_rounding_boundary_is_a_tie():
    # Two networks that learned nothing (paper-table-3-1-protocol, n = 8): errors 3-6e-6 apart round
    # to gaps of exactly one unit in the sixth digit; untied, they gave d_z = inf and p < 0.001.
    relu, tmaf = [1.000887925, 1.000958069, 1.000229199], [1.000884962, 1.000951622, 1.000223708]
    imp = stats.improvement(np.array(tmaf), np.array(relu), "minimize")
    assert list(imp) == [0.0, 0.0, 0.0] and stats.paired_test(np.concatenate([imp, imp])).test == "identical"
    assert stats.effect_size_dz(np.concatenate([imp, imp])) == 0.0
    # two units apart is a difference
    assert list(stats.improvement(np.array([1.00086]), np.array([1.00088]), "minimize")) == [pytest.approx(2e-5)]


def test_group_summary(data):
    metric, direction = frames.primary_metric(data)
    assert (metric, direction) == ("rel_l2", "minimize")
    summary = stats.group_summary(data, metric, direction)
    assert len(summary) == 5 and set(summary["ci_method"]) == {"log-t"}  # positive errors
    relu = _row(summary, "relu", 1)
    x = VALUES[("relu", 1)]
    logs = np.log(x)
    half = sps.t.ppf(0.975, 5) * logs.std(ddof=1) / math.sqrt(6)
    assert relu["n"] == 6 and relu["cells"] == 6 and relu["complete"]
    assert relu["mean"] == pytest.approx(statistics.mean(x)) and relu["sd"] == pytest.approx(statistics.stdev(x))
    assert (relu["ci_low"], relu["ci_high"]) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert relu["median"] == pytest.approx(0.105) and (relu["q25"], relu["q75"]) == pytest.approx((0.1, 0.1175))
    assert (relu["min"], relu["max"]) == (0.09, 0.13)
    assert "threshold" not in summary  # the hand study states no success threshold
    tmaf2 = _row(summary, "tmaf [-5,5]/10", 2)  # seed 4 diverged, seed 5 failed then running
    assert tmaf2["n"] == 4 and tmaf2["cells"] == 6 and not tmaf2["complete"]
    assert tmaf2["mean"] == pytest.approx(statistics.mean(VALUES[("tmaf", 2)]))


def test_paired_comparison_and_holm(data):
    paired = stats.paired_comparison(data, "rel_l2", "minimize", "relu")
    assert list(paired["series"]) == ["tmaf [-5,5]/10", "gelu", "tmaf [-5,5]/10"]  # study order
    t1, g1, t2 = (_row(paired, "tmaf [-5,5]/10", 1), _row(paired, "gelu", 1), _row(paired, "tmaf [-5,5]/10", 2))

    # tmaf n=1: 6 pairs -> Wilcoxon on baseline - candidate (positive = tmaf better)
    d1 = np.array(VALUES[("relu", 1)]) - np.array(VALUES[("tmaf", 1)])
    assert t1["pairs"] == 6 and t1["test"] == "wilcoxon"
    assert t1["p"] == pytest.approx(sps.wilcoxon(d1).pvalue)
    assert t1["p_improve"] == pytest.approx(5 / 6)  # only seed 2 (0.12 vs 0.11) is worse
    assert t1["effect_dz"] == pytest.approx(d1.mean() / d1.std(ddof=1))

    # tmaf n=2: seeds 0..3 only -> 4 pairs: too few for a test; the sign count stays
    assert t2["pairs"] == 4 and t2["test"] == "too few seeds for a test" and t2["better"] == 3
    assert math.isnan(t2["p"]) and math.isnan(t2["p_holm"]) and t2["significant"] is None
    assert t2["p_improve"] == pytest.approx(3 / 4) and math.isnan(t2["effect_dz"])

    # gelu equals relu on every seed
    assert g1["test"] == "identical" and g1["p"] == 1.0 and g1["p_improve"] == 0.5

    # Holm by hand over the two rows that have a test (the untested row does not count in m)
    p = {"t1": t1["p"], "g1": 1.0}
    order = sorted(p, key=p.get)
    expected, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (2 - rank) * p[key]))
        expected[key] = running
    assert t1["p_holm"] == pytest.approx(expected["t1"])
    assert g1["p_holm"] == pytest.approx(expected["g1"])
    assert t1["significant"] is bool(expected["t1"] < 0.05)


def test_pairing_ignores_activation_only_axes(data):
    pairs = stats.pair_baselines(data, "relu")
    cells = data.cells.drop_duplicates("group").set_index("group")
    assert len(pairs) == 3
    for cand, base in pairs.items():
        assert cells.at[base, "activation"] == "relu"
        assert cells.at[cand, "n"] == cells.at[base, "n"]


def test_per_activation_settings_are_the_tunable_training_fields():
    from tmafbench.core import FIXED_TRAINING, TrainingConfig

    tunable = set(TrainingConfig.option_names()) - set(FIXED_TRAINING)
    assert stats.PER_ACTIVATION_SETTINGS == tunable


def test_pairing_with_a_setting_chosen_per_activation(new_db):
    """As in a study that trains each activation at its own tuned lr: pair on n, not on lr;
    never pair an n the baseline did not run."""
    url, session = new_db
    groups = [("relu", 5, 0.005), ("relu", 6, 0.004), ("tmaf", 5, 0.03), ("tmaf", 6, 0.017), ("tmaf", 7, 0.02),
              ("prelu", 5, 0.005)]
    study = add_study(session, "own-lr")
    for act, n, lr in groups:
        for seed in (1, 2, 3):
            cell = add_cell(session, study, {"activation": act, "n": n, "lr": lr, "seed": seed})
            add_run(session, cell, finals={"rel_l2": 0.1 * seed + (0.05 + 0.01 * seed ** 2 if act == "relu" else 0.0)})
    session.commit()
    engine = frames.open_readonly(url)
    data = frames.load(engine, ["own-lr"])
    engine.dispose()
    cells = data.cells.drop_duplicates("group").set_index("group")
    pairs = {(cells.at[c, "activation"], cells.at[c, "n"]): (cells.at[b, "n"], cells.at[b, "lr"])
             for c, b in stats.pair_baselines(data, "relu").items()}
    # tmaf n=7 has no relu n=7: left unpaired; prelu's lr equals relu's: an exact match
    assert pairs == {("tmaf", 5): (5, 0.005), ("tmaf", 6): (6, 0.004), ("prelu", 5): (5, 0.005)}
    paired = stats.paired_comparison(data, "rel_l2", "minimize", "relu")
    assert set(paired["pairs"]) == {3} and (paired["mean_improvement"] > 0).all()


def test_timing_ratio_and_hardware(data):
    timing = stats.timing_summary(data, "relu")
    relu1, tmaf1, gelu1 = (_row(timing, "relu", 1), _row(timing, "tmaf [-5,5]/10", 1), _row(timing, "gelu", 1))
    assert relu1["median_epoch_s"] == pytest.approx(0.11)
    # pooled 18 epochs, six each of 0.10/0.11/0.12: q25 at rank 4.25 -> 0.10, q75 at rank 12.75 -> 0.12
    assert (relu1["q25_s"], relu1["q75_s"]) == pytest.approx((0.10, 0.12))
    assert tmaf1["ratio_to_baseline"] == pytest.approx(3.0)
    assert gelu1["ratio_to_baseline"] == pytest.approx(2.0)
    assert relu1["samples_per_s"] == pytest.approx(1000 / 0.11)
    assert relu1["hardware"] == "Test CPU (cpu, 2 cores)"
    assert (tmaf1["params"], tmaf1["act_params"], relu1["params"], relu1["act_params"]) == (301, 240, 61, 0)
    ratios = stats.run_timing_ratios(data, "relu")
    assert ratios.loc[ratios["series"] == "tmaf [-5,5]/10", "ratio"].to_numpy() == pytest.approx(3.0)


def test_failures_counted_per_group(data):
    failures = stats.failure_counts(data).set_index("label")
    row = failures.loc["tmaf [-5,5]/10 depth=1 width=20 n=2"]
    assert (row["cells"], row["completed"], row["diverged"], row["running"], row["failed"]) == (6, 4, 1, 1, 0)
    assert row["retried_attempts"] == 1
    assert failures["cells"].sum() == 30


def test_reference_comparison(data):
    ref = stats.reference_comparison(data, "rel_l2", "minimize").set_index("series")
    relu = ref.loc["relu"]
    assert relu["reference"] == 0.2 and relu["inside_ci"] == False  # noqa: E712
    assert relu["verdict"] == "measured lower: better than reference"
    tmaf = ref.loc["tmaf [-5,5]/10"]
    assert tmaf["inside_ci"] == True  # noqa: E712  (0.095 vs mean 0.0958)
    assert tmaf["mean"] == pytest.approx(statistics.mean(VALUES[("tmaf", 1)]))
    missing = ref.loc["–"]  # the published elu number has no measured group: kept, and said so
    assert missing["reference"] == 0.1 and missing["n"] == 0 and missing["verdict"] == "no matching group in the study"


def test_outcome_prefers_completed_attempt(new_db):
    url, session = new_db
    cell = add_cell(session, add_study(session, "s"), {"activation": "relu", "seed": 0})
    add_run(session, cell, status="failed", metric=("", "minimize"))
    add_run(session, cell, status="completed", attempt=2, finals={"rel_l2": 0.5})
    session.commit()
    data = frames.load(frames.open_readonly(url), ["s"])
    row = data.cells.iloc[0]
    assert row["status"] == "completed" and row["attempts"] == 2 and row["failed_attempts"] == 1
    assert frames.primary_metric(data) == ("rel_l2", "minimize")
    assert data.finals.loc[row["cell_id"], "rel_l2"] == 0.5


def _bimodal_study(session, name: str, report: dict | None) -> None:
    """relu and tmaf on 5 seeds; seed 4 of tmaf diverges; tmaf ties relu on seed 2 (float32 noise)."""
    values = {"relu": [0.5, 0.04, 0.3, 0.6, 0.7], "tmaf": [0.05, 0.03, float(np.float32(0.3)), 0.08, None]}
    study = add_study(session, name, report=report)
    for act, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            cell = add_cell(session, study, {"activation": act, "seed": seed})
            if v is None:
                add_run(session, cell, status="diverged", finals={"rel_l2": None})
            else:
                add_run(session, cell, finals={"rel_l2": v})


def _load(url: str, names: list[str]):
    engine = frames.open_readonly(url)
    data = frames.load(engine, names)
    engine.dispose()
    return data


def test_success_rate_from_the_study_file(new_db):
    url, session = new_db
    _bimodal_study(session, "bimodal", {"interval": "bootstrap", "success": [{"metric": "rel_l2", "threshold": 0.1}]})
    session.commit()
    data = _load(url, ["bimodal"])
    summary = stats.group_summary(data, "rel_l2", "minimize").set_index("series")
    assert set(summary["ci_method"]) == {"bootstrap"}  # asked for by the study file
    relu, tmaf = summary.loc["relu"], summary.loc["tmaf"]
    assert (relu["successes"], relu["success_runs"], relu["threshold"]) == (1, 5, 0.1)  # only 0.04 <= 0.1
    # tmaf: 0.05, 0.03, 0.08 reach it; 0.3 does not; the diverged seed counts as a run that did not
    assert (tmaf["successes"], tmaf["success_runs"], tmaf["success_rate"]) == (3, 5, 0.6)
    assert (tmaf["success_low"], tmaf["success_high"]) == pytest.approx((0.1466, 0.9473), abs=1e-4)
    paired = stats.paired_comparison(data, "rel_l2", "minimize", "relu").iloc[0]
    # 4 pairs (seed 4 diverged), seed 2 tied: fewer than 5 pairs, so no test; the counts stay
    assert (paired["pairs"], paired["better"], paired["ties"], paired["test"], paired["pairs_used"]) == (
        4, 3, 1, "too few seeds for a test", 4)


def test_studies_asking_for_different_intervals_are_refused(new_db):
    url, session = new_db
    _bimodal_study(session, "a", {"interval": "t"})
    _bimodal_study(session, "b", None)
    session.commit()
    with pytest.raises(TmafbenchError, match=r"different \[report\] intervals \(a: t, b: auto\)"):
        stats.group_summary(_load(url, ["a", "b"]), "rel_l2", "minimize")
    summary = stats.group_summary(_load(url, ["a"]), "rel_l2", "minimize")
    assert set(summary["ci_method"]) == {"t"} and "threshold" not in summary
