"""Statistics across seeds (DESIGN.md section 5): summaries, paired tests, Holm, timing.

Seeds are paired across activations (same seed = same data order and, where possible, the same
initial weights), so comparisons with the baseline are made seed by seed.

Conventions used throughout:
- `improvement` of a candidate over the baseline on one seed is direction-aware and positive when
  the candidate is better: `baseline - candidate` for a metric to minimise, `candidate - baseline`
  for one to maximise.
- Statistics use completed runs with a finite metric; every other outcome is counted in the
  failures table, never dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from tmafbench.errors import TmafbenchError
from tmafbench.reports.frames import ACTIVATION_AXIS, SEED_AXIS, ReportData
from tmafbench.core import FIXED_TRAINING, RunStatus, TrainingConfig

CONFIDENCE = 0.95
# Below this many pairs a two-sided Wilcoxon test cannot reach p < 0.05 (its smallest p with 5
# pairs is 0.0625), so the paired t test is used instead and the table says so.
MIN_WILCOXON_PAIRS = 6
FAILURE_STATUSES = (RunStatus.DIVERGED, RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.LOST, RunStatus.RUNNING,
                    "pending")  # "pending": a cell with no attempt yet


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """n, mean, sd (ddof=1), t-based CI of the mean, min and max of the finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    out = {"n": n, "mean": math.nan, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "min": math.nan, "max": math.nan}
    if n == 0:
        return out
    out.update(mean=float(x.mean()), min=float(x.min()), max=float(x.max()))
    if n > 1:
        sd = float(x.std(ddof=1))
        half = float(sps.t.ppf(0.5 + confidence / 2, df=n - 1)) * sd / math.sqrt(n)
        out.update(sd=sd, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


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
    test: str  # "wilcoxon", "paired t", "identical" or "n<2"
    statistic: float
    p: float


def paired_test(improvement: Sequence[float]) -> PairedTest:
    """Wilcoxon signed-rank on the per-seed differences; paired t when too few; see module doc."""
    d = np.asarray(improvement, dtype=float)
    if len(d) < 2:
        return PairedTest("n<2", math.nan, math.nan)
    if np.all(d == 0):
        return PairedTest("identical", math.nan, 1.0)
    if len(d) < MIN_WILCOXON_PAIRS:
        if np.std(d) == 0:  # constant non-zero differences: t is infinite
            return PairedTest("paired t", math.copysign(math.inf, d[0]), 0.0)
        res = sps.ttest_1samp(d, 0.0)
        return PairedTest("paired t", float(res.statistic), float(res.pvalue))
    res = sps.wilcoxon(d)
    return PairedTest("wilcoxon", float(res.statistic), float(res.pvalue))


def improvement(candidate: np.ndarray, baseline: np.ndarray, direction: str) -> np.ndarray:
    """Per-seed improvement of candidate over baseline, positive = candidate better."""
    candidate, baseline = np.asarray(candidate, float), np.asarray(baseline, float)
    diff = baseline - candidate if direction == "minimize" else candidate - baseline
    # Round away float noise (0.881 - 0.88 != 0.88 - 0.879) so that equal gaps and ties stay equal.
    return np.round(diff, 12)


def probability_of_improvement(improvements: Sequence[float]) -> float:
    """Share of seeds where the candidate beats the baseline; a tie counts one half."""
    d = np.asarray(improvements, dtype=float)
    if len(d) == 0:
        return math.nan
    return float((np.sum(d > 0) + 0.5 * np.sum(d == 0)) / len(d))


def effect_size_dz(improvements: Sequence[float]) -> float:
    """Cohen's d_z: mean improvement / sd of the improvements (positive = candidate better)."""
    d = np.asarray(improvements, dtype=float)
    if len(d) < 2:
        return math.nan
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean())
    return float(d.mean() / sd)


# --------------------------------------------------------------------------- frame-level tables


def _group_columns(data: ReportData) -> list[str]:
    return ["group", "series"] + (["sweep"] if data.sweep else [])


def _metric_values(data: ReportData, metric: str) -> pd.DataFrame:
    """Completed cells with their metric value (NaN when the metric is missing)."""
    done = data.cells[data.cells["status"] == RunStatus.COMPLETED]
    values = data.finals[metric] if metric in data.finals else pd.Series(dtype=float)
    return done.assign(value=done["cell_id"].map(values).astype(float))


def group_summary(data: ReportData, metric: str) -> pd.DataFrame:
    """One row per group: n, mean, sd, 95% CI, min, max, plus how many cells the group expects."""
    values = _metric_values(data, metric)
    rows = []
    for (group, series, *sweep), cells in data.cells.groupby(_group_columns(data), sort=False, dropna=False):
        stats = describe(values.loc[values["group"] == group, "value"])
        rows.append({"group": group, "series": series, **({"sweep": sweep[0]} if data.sweep else {}),
                     "label": cells["label"].iloc[0], "cells": len(cells), **stats,
                     "complete": stats["n"] == len(cells)})
    return pd.DataFrame(rows)


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
            "mean_improvement": float(imp.mean()) if len(imp) else math.nan,
            "p_improve": probability_of_improvement(imp), "effect_dz": effect_size_dz(imp),
            "test": test.test, "statistic": test.statistic, "p": test.p,
        })
    table = in_group_order(data, pd.DataFrame(rows))
    if len(table):
        table["p_holm"] = holm(table["p"].to_numpy())
        table["significant"] = table["p_holm"] < 0.05
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
                     "hardware": hardware, "runs": len(f), "median_epoch_s": med, "q25_s": q25, "q75_s": q75,
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
        for ref in reference.get("rows", []):
            where = {k: v for k, v in ref.items() if k not in ("value", "note")}
            cells = data.cells[(data.cells["study"] == study) & _matches(data.cells, where)]
            if cells.empty:  # say so rather than dropping the published number
                rows.append({"study": study, "source": reference.get("source", ""), "metric": metric, "series": "–",
                             "where": " ".join(f"{k}={v}" for k, v in where.items()), "reference": float(ref["value"]),
                             "n": 0, "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                             "inside_ci": None, "verdict": "no matching group in the study"})
            for group, f in cells.groupby("group", sort=False):
                stats = describe(values.loc[values["group"] == group, "value"])
                rows.append({"study": study, "source": reference.get("source", ""), "metric": metric,
                             "series": f["series"].iloc[0], **({"sweep": f["sweep"].iloc[0]} if data.sweep else {}),
                             "where": " ".join(f"{k}={v}" for k, v in where.items()), "reference": float(ref["value"]),
                             **{k: stats[k] for k in ("n", "mean", "ci_low", "ci_high")},
                             **_verdict(float(ref["value"]), stats, direction)})
    return pd.DataFrame(rows)


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
