"""Statistics frames -> readable tables, written as CSV (raw numbers), LaTeX, Markdown and HTML."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tmafbench.reports import stats
from tmafbench.reports.frames import ReportData

INCOMPLETE_MARK = "†"


@dataclass
class Table:
    """One table of the report: `raw` numbers for CSV, `shown` formatted strings for documents."""

    name: str  # file stem, e.g. "final_metric"
    title: str
    raw: pd.DataFrame
    shown: pd.DataFrame
    note: str = ""

    def write(self, folder: Path, formats: set[str]) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        if "csv" in formats:
            written.append(folder / f"{self.name}.csv")
            self.raw.to_csv(written[-1], index=False)
        if "tex" in formats:
            written.append(folder / f"{self.name}.tex")
            written[-1].write_text(to_latex(self.shown, self.title), encoding="utf-8")
        return written


def fmt(value: float, digits: int = 4) -> str:
    """Compact number: 4 significant digits, '–' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}g}"


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def better(direction: str) -> str:
    return "lower is better" if direction == "minimize" else "higher is better"


def _n_cell(n: int, cells: int) -> str:
    return f"{n}/{cells}" + ("" if n == cells else f" {INCOMPLETE_MARK}")


def summary_table(summary: pd.DataFrame, data: ReportData, metric: str, direction: str) -> Table:
    sweep = [data.sweep] if data.sweep else []
    shown = pd.DataFrame({
        "group": summary["series"],
        **{a: summary["sweep"].map(_axis_text) for a in sweep},
        "runs": [_n_cell(n, c) for n, c in zip(summary["n"], summary["cells"])],
        f"{metric} mean ± sd": [f"{fmt(m)} ± {fmt(s)}" for m, s in zip(summary["mean"], summary["sd"])],
        "95% CI": [f"[{fmt(lo)}, {fmt(hi)}]" for lo, hi in zip(summary["ci_low"], summary["ci_high"])],
        "min": summary["min"].map(fmt), "max": summary["max"].map(fmt),
    })
    return Table("final_metric", f"Final {metric} per group ({better(direction)})", summary.drop(columns=["group"]), shown,
                 f"runs = completed runs / cells in the group; {INCOMPLETE_MARK} marks an incomplete group. "
                 "CI: two-sided 95%, Student t on the seeds.")


def wide_table(summary: pd.DataFrame, data: ReportData, metric: str, direction: str) -> Table | None:
    """Paper-like layout: rows are series (activations), columns the sweep axis; 'mean ± sd'."""
    if not data.sweep:
        return None
    text = summary.assign(
        cell=[f"{fmt(m)} ± {fmt(s)}" + ("" if ok else f" {INCOMPLETE_MARK}")
              for m, s, ok in zip(summary["mean"], summary["sd"], summary["complete"])],
        column=summary["sweep"].map(lambda v: f"{data.sweep}={_axis_text(v)}"),
    )
    order = list(dict.fromkeys(text["column"]))
    shown = text.pivot_table(index="series", columns="column", values="cell", aggfunc="first", sort=False)
    shown = shown.reindex(columns=order).fillna("–").reset_index().rename(columns={"series": "group"})
    shown.columns.name = None
    raw = summary.pivot_table(index="series", columns="sweep", values="mean", aggfunc="first", sort=False).reset_index()
    raw.columns = [c if c == "series" else f"{data.sweep}={_axis_text(c)}" for c in raw.columns]
    return Table("final_metric_wide", f"Final {metric}, mean ± sd over seeds, by {data.sweep} ({better(direction)})",
                 raw, shown, f"{INCOMPLETE_MARK} marks a group with runs missing or failed.")


def paired_table(paired: pd.DataFrame, data: ReportData, metric: str, direction: str, baseline: str) -> Table:
    sweep = [data.sweep] if data.sweep else []
    shown = pd.DataFrame({
        "group": paired["series"], **{a: paired["sweep"].map(_axis_text) for a in sweep},
        "pairs": paired["pairs"], "mean": paired["mean"].map(fmt), f"{baseline} mean": paired["baseline_mean"].map(fmt),
        "P(improve)": paired["p_improve"].map(lambda v: fmt(v, 3)), "effect d_z": paired["effect_dz"].map(lambda v: fmt(v, 3)),
        "test": paired["test"], "p": paired["p"].map(fmt_p), "p (Holm)": paired["p_holm"].map(fmt_p),
    })
    return Table("paired_vs_baseline", f"Paired comparison with {baseline}, seed by seed ({metric}, {better(direction)})",
                 paired.drop(columns=["group"]), shown,
                 "Pairs: seeds where both runs completed. Test: Wilcoxon signed-rank on per-seed differences, "
                 f"paired t below {stats.MIN_WILCOXON_PAIRS} pairs; p-values Holm-corrected across the rows. "
                 "P(improve): share of seeds where the activation beats the baseline (ties count half). "
                 "d_z: mean improvement / sd of improvements, positive = better than the baseline.")


def timing_table(timing: pd.DataFrame, data: ReportData, baseline: str | None) -> Table:
    sweep = [data.sweep] if data.sweep else []
    shown = pd.DataFrame({
        "group": timing["series"], **{a: timing["sweep"].map(_axis_text) for a in sweep},
        "hardware": timing["hardware"], "runs": timing["runs"],
        "median epoch (s)": timing["median_epoch_s"].map(fmt),
        "IQR (s)": [f"[{fmt(a)}, {fmt(b)}]" for a, b in zip(timing["q25_s"], timing["q75_s"])],
        "samples/s": timing["samples_per_s"].map(lambda v: fmt(v, 3)),
        f"time / {baseline or 'baseline'}": timing["ratio_to_baseline"].map(lambda v: fmt(v, 3)),
    })
    return Table("timing", "Epoch time per group (median over all epochs of the completed runs)",
                 timing.drop(columns=["group"]), shown,
                 "Ratios compare with the baseline group run on the same hardware in the same study.")


def reference_table(ref: pd.DataFrame, direction: str) -> Table:
    shown = pd.DataFrame({
        "source": ref["source"], "where": ref["where"], "group": ref["series"], "metric": ref["metric"],
        "reference": ref["reference"].map(fmt), "n": ref["n"], "measured mean": ref["mean"].map(fmt),
        "95% CI": [f"[{fmt(a)}, {fmt(b)}]" for a, b in zip(ref["ci_low"], ref["ci_high"])],
        "inside CI": ref["inside_ci"].map({True: "yes", False: "no"}).fillna("–"), "verdict": ref["verdict"],
    })
    return Table("reference", f"Against the published numbers ({better(direction)})", ref, shown)


def failure_table(failures: pd.DataFrame) -> Table:
    shown = failures.drop(columns=["group"])
    return Table("failures", "Run outcomes per group (statistics use completed runs only)", failures, shown,
                 "retried_attempts: failed/diverged/interrupted attempts that were retried.")


def _axis_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ------------------------------------------------------------------------------------- writers


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes escaped)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def to_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, classes="tbl")


def to_latex(frame: pd.DataFrame, caption: str) -> str:
    """A booktabs table; special characters escaped, ± and † as LaTeX symbols."""
    body = frame.astype(str).to_latex(index=False, escape=True, caption=caption)
    return body.replace("±", r"$\pm$").replace("†", r"\dag{}").replace("–", "--").replace("∞", r"$\infty$")


def html_escape(text: str) -> str:
    return html.escape(text, quote=True)
