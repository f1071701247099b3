"""Statistics across seeds (docs/design.md section 5): summaries, paired tests, Holm, timing.

Seeds are paired across activations (same seed = same data order and, where possible, the same
initial weights), so comparisons with the baseline are made seed by seed.

Conventions used throughout:
- `improvement` of a candidate over the baseline on one seed is direction-aware and positive when
  the candidate is better: `baseline - candidate` for a metric to minimise, `candidate - baseline`
  for one to maximise.
- Statistics use completed runs with a finite metric; every other outcome is counted in the
  failures table, never dropped silently (a success rate counts a diverged run as a failure).
- Intervals stay in the metric's range (`choose_interval`): a t interval on the log scale for
  positive errors, on the logit scale for accuracies, a bootstrap otherwise; the tables name it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence, get_args

import numpy as np
import pandas as pd
from scipy import special as sps_special
from scipy import stats as sps

from tmafbench.core import FIXED_TRAINING, Interval, RunStatus, TrainingConfig, base_metric
from tmafbench.errors import TmafbenchError
from tmafbench.reports.frames import ACTIVATION_AXIS, SEED_AXIS, ReportData

CONFIDENCE = 0.95
# Below this many untied pairs a two-sided Wilcoxon test cannot reach p < 0.05 (its smallest p with
# 5 pairs is 0.0625), so the paired t test on every pair is used instead and the table says so.
MIN_WILCOXON_PAIRS = 6
# No test, p-value, "significant" or Holm line from fewer seed pairs than this (the developers'
# guide): 2 or 3 seeds give t tests whose p-values mean little (p = 0.002 from 2 seeds was printed
# once). Such rows show the sign count ("better on 2/2 seeds") and TOO_FEW instead.
MIN_TEST_PAIRS = 5
TOO_FEW = "too few seeds for a test"
FAILURE_STATUSES = (RunStatus.DIVERGED, RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.LOST, RunStatus.RUNNING,
                    "pending")  # "pending": a cell with no attempt yet
# Metrics are computed in float32 (about 7 significant digits): values that agree to 6 are equal,
# and so are values one unit apart in the sixth (noise that straddles a rounding boundary: 1.0008849
# and 1.0008879 round to 1.00088 and 1.00089; left untied, such pairs give equal rounded gaps and an
# infinite t, as two collapsed networks of a Table 3.1 run did).
SIGNIFICANT_DIGITS = 6

# The range of each metric a report knows: errors and losses are positive, accuracy lies in (0, 1).
POSITIVE_METRICS = frozenset({"rel_l2", "mse", "max_abs", "cross_entropy", "train_loss"})
UNIT_METRICS = frozenset({"accuracy"})
# `interval` choices of a study file's [report] table; "auto" picks one of INTERVAL_TEXT's keys.
INTERVAL_CHOICES = get_args(Interval)
INTERVAL_TEXT = {
    "log-t": "Student t on the log of the values, back-transformed: an interval for the geometric mean, "
             "always positive and longer above than below, like the errors",
    "logit-t": "Student t on the logit of the values, back-transformed: an interval for the centre of the "
               "accuracies that stays inside (0, 1)",
    "bootstrap": "bootstrap of the mean (BCa, 9,999 resamples, fixed seed; percentile where BCa is undefined): "
                 "it stays within the seeds' own range and follows skewed or bimodal outcomes, but is too "
                 "short with few seeds (2 seeds give their min and max)",
    "t": "Student t on the values: symmetric, so it may leave the metric's range",
}
BOOTSTRAP_RESAMPLES = 9_999


def choose_interval(metric: str, values: Sequence[float], requested: str = "auto") -> str:
    """The interval method for `metric`: the one asked for, or by the metric's range ("auto").

    auto: positive errors get a t interval on the log scale; accuracies strictly inside (0, 1) one on
    the logit scale; anything else (a value on the range's edge, an unknown metric) the bootstrap,
    which never leaves the values' own range.
    """
    if requested != "auto":
        if requested not in INTERVAL_CHOICES:
            raise TmafbenchError(f"unknown interval {requested!r}; choose one of: {', '.join(INTERVAL_CHOICES)}")
        return requested
    x = _finite(values)
    base = base_metric(metric)
    if base in POSITIVE_METRICS and np.all(x > 0):
        return "log-t"
    if base in UNIT_METRICS and np.all((x > 0) & (x < 1)):
        return "logit-t"
    return "bootstrap"


def interval(values: Sequence[float], method: str, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided `confidence` interval of the finite values by `method` (see INTERVAL_TEXT); NaN below 2 values."""
    x = _finite(values)
    if len(x) < 2:
        return math.nan, math.nan
    if np.ptp(x) == 0:  # every seed agrees: nothing to spread
        return float(x[0]), float(x[0])
    if method == "bootstrap":
        return _bootstrap(x, confidence)
    forward, back = {"t": (lambda v: v, lambda v: v), "log-t": (np.log, np.exp),
                     "logit-t": (sps_special.logit, sps_special.expit)}[method]
    y = forward(x)
    half = float(sps.t.ppf(0.5 + confidence / 2, df=len(y) - 1)) * y.std(ddof=1) / math.sqrt(len(y))
    return float(back(y.mean() - half)), float(back(y.mean() + half))


def _bootstrap(x: np.ndarray, confidence: float) -> tuple[float, float]:
    """BCa bootstrap interval of the mean (seeded, so a rebuilt report shows the same numbers)."""
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", sps.DegenerateDataWarning)
            try:
                res = sps.bootstrap((x,), np.mean, confidence_level=confidence, method=method,
                                    n_resamples=BOOTSTRAP_RESAMPLES, rng=np.random.default_rng(0))
            except sps.DegenerateDataWarning:
                continue
        low, high = res.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high)
    return float(x.min()), float(x.max())


def _finite(values: Sequence[float]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)


def describe(values: Sequence[float], method: str = "t", confidence: float = CONFIDENCE) -> dict[str, float]:
    """n, mean, sd (ddof=1), median, quartiles, the CI by `method`, min and max of the finite values."""
    x = _finite(values)
    n = len(x)
    out = {"n": n, "mean": math.nan, "sd": math.nan, "median": math.nan, "q25": math.nan, "q75": math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "min": math.nan, "max": math.nan}
    if n == 0:
        return out
    q25, median, q75 = np.percentile(x, [25, 50, 75])
    out.update(mean=float(x.mean()), median=float(median), q25=float(q25), q75=float(q75),
               min=float(x.min()), max=float(x.max()))
    if n > 1:
        low, high = interval(x, method, confidence)
        out.update(sd=float(x.std(ddof=1)), ci_low=low, ci_high=high)
    return out


def success_rate(successes: int, runs: int, confidence: float = CONFIDENCE) -> dict[str, float]:
    """Share of runs that reached the threshold, with its exact (Clopper-Pearson) interval."""
    if runs == 0:
        return {"successes": 0, "success_runs": 0, "success_rate": math.nan,
                "success_low": math.nan, "success_high": math.nan}
    ci = sps.binomtest(successes, runs).proportion_ci(confidence, method="exact")
    return {"successes": successes, "success_runs": runs, "success_rate": successes / runs,
            "success_low": float(ci.low), "success_high": float(ci.high)}


def reaches(values: Sequence[float], threshold: float, direction: str) -> np.ndarray:
    """Per value: did it reach the threshold (at most for errors, at least for accuracies)? NaN never does."""
    x = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        hit = x <= threshold if direction == "minimize" else x >= threshold
    return hit & np.isfinite(x)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted in m)."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        # The rank-th smallest p is multiplied by (m - rank); monotone by the running max.
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted


@dataclass(frozen=True)
class PairedTest:
    test: str  # "wilcoxon", "paired t", "identical" or TOO_FEW (fewer than MIN_TEST_PAIRS pairs: p is NaN)
    statistic: float
    p: float
    used: int  # pairs the test used: Wilcoxon drops tied pairs


def paired_test(improvement: Sequence[float]) -> PairedTest:
    """Wilcoxon signed-rank on the untied per-seed differences; paired t on every pair when too few.

    Wilcoxon ranks only the non-zero differences (a tied pair carries no sign), so `used` counts
    those; with fewer than MIN_WILCOXON_PAIRS of them the paired t test on all pairs decides instead.
    Fewer than MIN_TEST_PAIRS pairs get no test at all (TOO_FEW, p NaN).
    """
    d = np.asarray(improvement, dtype=float)
    if len(d) < MIN_TEST_PAIRS:
        return PairedTest(TOO_FEW, math.nan, math.nan, len(d))
    untied = d[d != 0]
    if len(untied) == 0:
        return PairedTest("identical", math.nan, 1.0, len(d))
    if len(untied) >= MIN_WILCOXON_PAIRS:
        res = sps.wilcoxon(untied)
        return PairedTest("wilcoxon", float(res.statistic), float(res.pvalue), len(untied))
    if np.std(d) == 0:  # constant non-zero differences: t is infinite
        return PairedTest("paired t", math.copysign(math.inf, d[0]), 0.0, len(d))
    res = sps.ttest_1samp(d, 0.0)
    return PairedTest("paired t", float(res.statistic), float(res.pvalue), len(d))


def improvement(candidate: np.ndarray, baseline: np.ndarray, direction: str) -> np.ndarray:
    """Per-seed improvement of candidate over baseline, positive = candidate better."""
    candidate, baseline = _significant(candidate), _significant(baseline)
    diff = baseline - candidate if direction == "minimize" else candidate - baseline
    # Round away float noise (0.881 - 0.88 != 0.88 - 0.879) so that equal gaps and ties stay equal.
    diff = np.round(diff, 12)
    return np.where(np.abs(diff) <= _last_digit(np.maximum(np.abs(candidate), np.abs(baseline))), 0.0, diff)


def _last_digit(values: np.ndarray) -> np.ndarray:
    """One unit of the SIGNIFICANT_DIGITS-th digit of each value (a little more, for float noise)."""
    magnitude = _magnitude(values)
    return np.where(np.isfinite(magnitude), 10.0 ** (magnitude - SIGNIFICANT_DIGITS + 1) * (1 + 1e-6), 0.0)


def _magnitude(values: np.ndarray) -> np.ndarray:
    """floor(log10|x|): the decimal exponent of each value's leading digit (-inf for 0, NaN for NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.floor(np.log10(np.abs(values)))


def _significant(values: np.ndarray) -> np.ndarray:
    """Values rounded to SIGNIFICANT_DIGITS: float32 noise (0.93 stored as 0.9300000071525574) goes."""
    x = np.asarray(values, dtype=float)
    magnitude = _magnitude(x)
    scale = 10.0 ** np.where(np.isfinite(magnitude), SIGNIFICANT_DIGITS - 1 - magnitude, 0)
    return np.where(np.isfinite(x) & (x != 0), np.round(x * scale) / scale, x)


def mean_improvement(improvements: Sequence[float]) -> float:
    """Mean of the per-seed improvements, rounded like them: equal means give exactly 0."""
    d = np.asarray(improvements, dtype=float)
    return float(np.round(d.mean(), 12)) if len(d) else math.nan


def probability_of_improvement(improvements: Sequence[float]) -> float:
    """Share of seeds where the candidate beats the baseline; a tie counts one half."""
    d = np.asarray(improvements, dtype=float)
    if len(d) == 0:
        return math.nan
    return float((np.sum(d > 0) + 0.5 * np.sum(d == 0)) / len(d))


def effect_size_dz(improvements: Sequence[float]) -> float:
    """Cohen's d_z: mean improvement / sd of the improvements (positive = candidate better; 0 for equal
    means); NaN below MIN_TEST_PAIRS pairs, where the sd of a handful of differences says little."""
    d = np.asarray(improvements, dtype=float)
    if len(d) < MIN_TEST_PAIRS:
        return math.nan
    mean, sd = mean_improvement(d), d.std(ddof=1)
    if mean == 0:
        return 0.0
    if sd == 0:
        return math.copysign(math.inf, mean)
    return float(mean / sd)


# --------------------------------------------------------------------------- frame-level tables


def _group_columns(data: ReportData) -> list[str]:
    return ["group", "series"] + (["sweep"] if data.sweep else [])


def _metric_values(data: ReportData, metric: str) -> pd.DataFrame:
    """Completed cells with their metric value (NaN when the metric is missing)."""
    done = data.cells[data.cells["status"] == RunStatus.COMPLETED]
    values = data.finals[metric] if metric in data.finals else pd.Series(dtype=float)
    return done.assign(value=done["cell_id"].map(values).astype(float))


def group_summary(data: ReportData, metric: str, direction: str) -> pd.DataFrame:
    """One row per group: n, mean, sd, median, quartiles, the CI, min, max, and how many cells it expects.

    The CI method is one for the whole table (`choose_interval` on every value, or the study's
    [report] interval). Where the study file states a success threshold for the metric, the row also
    has the share of runs that reached it (`success_counts`).
    """
    values = _metric_values(data, metric)
    method = choose_interval(metric, values["value"], data.interval())
    rows = []
    for (group, series, *sweep), cells in data.cells.groupby(_group_columns(data), sort=False, dropna=False):
        stats = describe(values.loc[values["group"] == group, "value"], method)
        row = {"group": group, "series": series, **({"sweep": sweep[0]} if data.sweep else {}),
               "label": cells["label"].iloc[0], "cells": len(cells), **stats, "ci_method": method,
               "complete": stats["n"] == len(cells)}
        threshold = data.success_threshold(cells["study"].iloc[0], str(cells["task"].iloc[0]), metric)
        if threshold is not None:
            row.update(threshold=threshold, **success_counts(cells, values, threshold, direction))
        rows.append(row)
    return pd.DataFrame(rows)


def success_counts(cells: pd.DataFrame, values: pd.DataFrame, threshold: float, direction: str) -> dict[str, float]:
    """Runs of `cells` that reached `threshold`, out of those that finished training.

    A diverged run finished without learning, so it counts as a run that did not reach the threshold;
    failed, interrupted and unfinished cells are left out (they are counted in the outcomes table).
    """
    finished = cells[cells["status"].isin(("completed", "diverged"))]
    value = finished["cell_id"].map(values.set_index("cell_id")["value"]).to_numpy(dtype=float)
    return success_rate(int(reaches(value, threshold, direction).sum()), len(finished))


def failure_counts(data: ReportData) -> pd.DataFrame:
    """Per group: cells by outcome (completed, diverged, failed, interrupted, running, pending)."""
    counts = pd.crosstab(data.cells["group"], data.cells["status"])
    for status in (RunStatus.COMPLETED,) + FAILURE_STATUSES:
        if status not in counts:
            counts[status] = 0
    first = data.cells.drop_duplicates("group").set_index("group")
    out = counts[[RunStatus.COMPLETED, *FAILURE_STATUSES]].copy()
    out.insert(0, "label", first["label"])
    out.insert(1, "cells", counts.sum(axis=1))
    out["retried_attempts"] = data.cells.groupby("group")["failed_attempts"].sum()
    return in_group_order(data, out.reset_index())


def in_group_order(data: ReportData, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted like the groups first appear among the cells (study file order)."""
    if frame.empty:
        return frame
    rank = {g: i for i, g in enumerate(dict.fromkeys(data.cells["group"]))}
    return frame.sort_values("group", key=lambda col: col.map(rank), kind="stable").reset_index(drop=True)


# Training settings that fair tuning may choose per activation: TrainingConfig's fields less the
# protocol ones.
PER_ACTIVATION_SETTINGS = frozenset(TrainingConfig.option_names()) - set(FIXED_TRAINING)


def _scoped_axes(data: ReportData, baseline_cells: pd.DataFrame) -> set[str]:
    """Axes the baseline does not have (e.g. grid, intervals for ReLU): they belong to activations."""
    return {a for a in data.axes if baseline_cells[a].isna().all()}


def pair_baselines(data: ReportData, baseline: str) -> dict[str, str]:
    """{candidate group: baseline group}: groups that differ from the baseline only by activation.

    A training setting that may differ by activation (a learning rate chosen for each, as fair
    tuning does) and whose value never occurs for the baseline is left out of the match when that
    leaves exactly one baseline group: the baseline at its own setting. Problem axes (n, depth,
    width, task) and the epoch budget always have to match.
    """
    cells = data.cells
    base = cells[cells[ACTIVATION_AXIS] == baseline]
    scoped = _scoped_axes(data, base)
    key_axes = [a for a in data.group_axes if a not in scoped and a != ACTIVATION_AXIS]
    base_values = {a: set(base[a].map(str)) for a in key_axes}
    base_groups = base.drop_duplicates("group")
    pairs = {}
    for _, row in cells[cells[ACTIVATION_AXIS] != baseline].drop_duplicates("group").iterrows():
        own = [a for a in key_axes if str(row[a]) not in base_values[a]]
        if any(a not in PER_ACTIVATION_SETTINGS for a in own):
            continue  # e.g. an n the baseline never ran
        same = base_groups
        for axis in (a for a in key_axes if a not in own):
            same = same[same[axis].map(str) == str(row[axis])]
        if len(same) == 1:
            pairs[row["group"]] = same["group"].iloc[0]
    return pairs


def check_baseline(data: ReportData, baseline: str | None) -> str | None:
    """The baseline activation label to use: the one asked for (must exist) or relu when present."""
    labels = sorted(data.cells[ACTIVATION_AXIS].astype(str).unique())
    if baseline is None:
        return "relu" if "relu" in labels else None
    if baseline not in labels:
        raise TmafbenchError(f"baseline {baseline!r} is not in the study; activations: {', '.join(labels)}")
    return baseline


def paired_comparison(data: ReportData, metric: str, direction: str, baseline: str) -> pd.DataFrame:
    """Per candidate group: per-seed pairs with the baseline, test, Holm-adjusted p, P(improve), d_z."""
    values = _metric_values(data, metric)
    values = values[np.isfinite(values["value"])]
    by_group = {g: f.set_index(SEED_AXIS)["value"] for g, f in values.groupby("group")}
    first = data.cells.drop_duplicates("group").set_index("group")
    rows = []
    for group, base_group in pair_baselines(data, baseline).items():
        cand, base = by_group.get(group, pd.Series(dtype=float)), by_group.get(base_group, pd.Series(dtype=float))
        seeds = cand.index.intersection(base.index)
        imp = improvement(cand[seeds].to_numpy(), base[seeds].to_numpy(), direction)
        test = paired_test(imp)
        rows.append({
            "group": group, "series": first.at[group, "series"],
            **({"sweep": first.at[group, "sweep"]} if data.sweep else {}),
            "baseline": first.at[base_group, "label"], "pairs": len(seeds),
            "mean": float(cand[seeds].mean()) if len(seeds) else math.nan,
            "baseline_mean": float(base[seeds].mean()) if len(seeds) else math.nan,
            "mean_improvement": mean_improvement(imp), "better": int(np.sum(imp > 0)), "ties": int(np.sum(imp == 0)),
            "p_improve": probability_of_improvement(imp), "effect_dz": effect_size_dz(imp),
            "test": test.test, "pairs_used": test.used, "statistic": test.statistic, "p": test.p,
        })
    table = in_group_order(data, pd.DataFrame(rows))
    if len(table):
        table["p_holm"] = holm(table["p"].to_numpy())  # rows without a test are not counted in m
        table["significant"] = [None if math.isnan(p) else bool(p < 0.05) for p in table["p_holm"]]
    return table


def timing_summary(data: ReportData, baseline: str | None) -> pd.DataFrame:
    """Per group and hardware: median epoch time, IQR, samples/s, and ratio to the baseline.

    Epoch times are pooled over every epoch of the group's completed runs (falling back to the
    runs' `median_epoch_s` when no per-epoch times were stored). The ratio compares with the
    baseline group measured on the same hardware in the same study.
    """
    per_run = _run_epoch_times(data)
    if per_run.empty:
        return pd.DataFrame()
    rows = []
    for (group, hardware), f in per_run.groupby(["group", "hardware"], sort=False):
        times = np.concatenate(f["times"].to_list())
        q25, med, q75 = np.percentile(times, [25, 50, 75])
        rows.append({"group": group, "series": f["series"].iloc[0],
                     **({"sweep": f["sweep"].iloc[0]} if data.sweep else {}),
                     "hardware": hardware, "runs": len(f), "params": _median_count(f["num_params"]),
                     "act_params": _median_count(f["num_act_params"]),
                     "median_epoch_s": med, "q25_s": q25, "q75_s": q75,
                     "samples_per_s": float(np.nanmedian(f["samples_per_s"])) if f["samples_per_s"].notna().any() else math.nan})
    table = pd.DataFrame(rows)
    table["ratio_to_baseline"] = math.nan
    if baseline is not None:
        pairs = pair_baselines(data, baseline)
        base_groups = set(pairs.values())
        pairs.update({g: g for g in base_groups})
        median = table.set_index(["group", "hardware"])["median_epoch_s"]
        for i, row in table.iterrows():
            key = (pairs.get(row["group"]), row["hardware"])
            if key in median.index:
                table.at[i, "ratio_to_baseline"] = row["median_epoch_s"] / median[key]
    return table


def run_timing_ratios(data: ReportData, baseline: str) -> pd.DataFrame:
    """One row per completed run: its median epoch time / its baseline group's median (same hardware)."""
    per_run = _run_epoch_times(data)
    summary = timing_summary(data, baseline)
    if per_run.empty or summary.empty:
        return pd.DataFrame()
    pairs = pair_baselines(data, baseline)
    pairs.update({g: g for g in set(pairs.values())})
    base_median = summary.set_index(["group", "hardware"])["median_epoch_s"]
    per_run["run_median_s"] = per_run["times"].map(np.median)
    per_run["ratio"] = [
        r.run_median_s / base_median.get((pairs.get(r.group), r.hardware), math.nan) for r in per_run.itertuples()
    ]
    return per_run.dropna(subset=["ratio"])


def timing_spread(data: ReportData, baseline: str, timing: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per candidate group and hardware: the spread of its time ratio to the baseline, from its 25th
    percentile epoch time over the baseline's 75th to its 75th over the baseline's 25th (the IQRs of
    `timing_summary`), and `noisy` when that spread includes 1: the two groups' epochs overlap too much
    to tell which is faster (timings taken while other work shared the machine). Epochs rather than
    runs: the cells of a pack share one epoch time, so their runs are not separate measurements.
    Baseline groups get no row."""
    timing = timing_summary(data, baseline) if timing is None else timing
    columns = ["group", "hardware", "ratio_low", "ratio_high", "noisy"]
    if timing.empty:
        return pd.DataFrame(columns=columns)
    quartiles = timing.set_index(["group", "hardware"])[["q25_s", "q75_s"]]
    pairs = pair_baselines(data, baseline)
    rows = []
    for row in timing.itertuples():
        base = pairs.get(row.group)
        if base is None or (base, row.hardware) not in quartiles.index:
            continue
        base_q25, base_q75 = quartiles.loc[(base, row.hardware)]
        low, high = row.q25_s / base_q75, row.q75_s / base_q25
        rows.append({"group": row.group, "hardware": row.hardware, "ratio_low": low, "ratio_high": high,
                     "noisy": bool(low <= 1.0 <= high)})
    return pd.DataFrame(rows, columns=columns)


def _median_count(counts: pd.Series) -> float:
    """The group's parameter count (its runs agree; the median if they ever differ); NaN when not stored."""
    known = pd.to_numeric(counts, errors="coerce").dropna()
    return float(known.median()) if len(known) else math.nan


def _run_epoch_times(data: ReportData) -> pd.DataFrame:
    """Completed runs with their epoch times (array, seconds) and median samples/s."""
    done = data.cells[data.cells["status"] == RunStatus.COMPLETED]
    if done.empty:
        return pd.DataFrame()
    ep = data.epochs
    times = ep[ep["name"] == "epoch_time_s"].dropna(subset=["value"]).groupby("cell_id")["value"].agg(list)
    sps_ = ep[ep["name"] == "samples_per_s"].dropna(subset=["value"]).groupby("cell_id")["value"].median()
    timing = data.timings
    out = done.copy()
    out["times"] = out["cell_id"].map(times)
    if "median_epoch_s" in timing:
        fallback = out["cell_id"].map(timing["median_epoch_s"])
        missing = out["times"].isna() & fallback.notna()
        out.loc[missing, "times"] = fallback[missing].map(lambda v: [v])
    out = out.dropna(subset=["times"])
    out["times"] = out["times"].map(lambda v: np.asarray(v, dtype=float))
    run_sps = out["cell_id"].map(sps_)
    if "mean_samples_per_s" in timing:
        run_sps = run_sps.fillna(out["cell_id"].map(timing["mean_samples_per_s"]))
    out["samples_per_s"] = run_sps.astype(float)
    out["hardware"] = out["hardware"].fillna("unknown")
    return out


def reference_comparison(data: ReportData, fallback_metric: str, direction: str) -> pd.DataFrame:
    """Published numbers (Study.reference) beside the measured mean and 95% CI of matching groups."""
    rows = []
    for study, reference in data.references.items():
        metric = reference.get("metric") or fallback_metric
        if metric not in data.finals:  # e.g. a section of another task: not what the paper measured
            continue
        values = _metric_values(data, metric)
        method = choose_interval(metric, values["value"], data.interval())
        for ref in reference.get("rows", []):
            where = {k: v for k, v in ref.items() if k not in ("value", "note")}
            cells = data.cells[(data.cells["study"] == study) & _matches(data.cells, where)]
            if cells.empty and _belongs_to_another_section(data, study, where):
                continue
            if cells.empty:  # say so rather than dropping the published number
                rows.append({"study": study, "source": reference.get("source", ""), "metric": metric, "series": "–",
                             "where": " ".join(f"{k}={v}" for k, v in where.items()), "reference": float(ref["value"]),
                             "ci_method": None, "n": 0, "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                             "inside_ci": None, "verdict": "no matching group in the study"})
            for group, f in cells.groupby("group", sort=False):
                stats = describe(values.loc[values["group"] == group, "value"], method)
                rows.append({"study": study, "source": reference.get("source", ""), "metric": metric,
                             "ci_method": method,
                             "series": f["series"].iloc[0], **({"sweep": f["sweep"].iloc[0]} if data.sweep else {}),
                             "where": " ".join(f"{k}={v}" for k, v in where.items()), "reference": float(ref["value"]),
                             **{k: stats[k] for k in ("n", "mean", "ci_low", "ci_high")},
                             **_verdict(float(ref["value"]), stats, direction)})
    return pd.DataFrame(rows)


def _belongs_to_another_section(data: ReportData, study: str, where: dict[str, Any]) -> bool:
    """In one task's section of a report (`data.all_cells` set): a reference row that names another
    task, or that another task's cells match (Table 3.1's n = 5 under the two-layer task). That
    task's section shows it; a row that matches nowhere is said so where it belongs."""
    if data.all_cells is None:
        return False
    if "task" in where and str(where["task"]) not in data.tasks():
        return True
    cells = data.all_cells
    return bool(((cells["study"] == study) & _matches(cells, where)).any())


def _matches(cells: pd.DataFrame, where: dict[str, Any]) -> pd.Series:
    mask = pd.Series(True, index=cells.index)
    for axis, wanted in where.items():
        if axis not in cells:
            return pd.Series(False, index=cells.index)
        mask &= cells[axis].map(lambda v: _same(v, wanted))
    return mask


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _verdict(reference: float, stats: dict[str, float], direction: str) -> dict[str, Any]:
    if stats["n"] < 2:
        return {"inside_ci": None, "verdict": "too few runs for a CI" if stats["n"] else "no completed run"}
    inside = stats["ci_low"] <= reference <= stats["ci_high"]
    if inside:
        return {"inside_ci": True, "verdict": "consistent (reference inside CI)"}
    measured_higher = stats["mean"] > reference
    better = measured_higher == (direction == "maximize")
    side = "higher" if measured_higher else "lower"
    return {"inside_ci": False, "verdict": f"measured {side}: {'better' if better else 'worse'} than reference"}
