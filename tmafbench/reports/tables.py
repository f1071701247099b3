"""Statistics frames -> readable tables, written as CSV (raw numbers), LaTeX, Markdown and HTML."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tmafbench.reports import frames, stats
from tmafbench.reports.frames import ReportData
from tmafbench.reports.labels import axis_text, axis_title

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
    method = summary["ci_method"].iloc[0]
    shown = pd.DataFrame({
        "group": summary["series"],
        **{a: [axis_text(v, a) for v in summary["sweep"]] for a in sweep},
        "runs": [_n_cell(n, c) for n, c in zip(summary["n"], summary["cells"])],
        f"{metric} mean ± sd": [f"{fmt(m)} ± {fmt(s)}" for m, s in zip(summary["mean"], summary["sd"])],
        "median [IQR]": [f"{fmt(m)} [{fmt(a)}, {fmt(b)}]" if n else "–"
                         for m, a, b, n in zip(summary["median"], summary["q25"], summary["q75"], summary["n"])],
        f"95% CI ({method})": [f"[{fmt(lo)}, {fmt(hi)}]" for lo, hi in zip(summary["ci_low"], summary["ci_high"])],
    })
    note = (f"runs = completed runs / cells in the group; {INCOMPLETE_MARK} marks an incomplete group. "
            "median [IQR]: the middle seed and the 25th and 75th percentiles. "
            f"CI: two-sided 95%, {stats.INTERVAL_TEXT[method]}.")
    if "threshold" in summary:
        shown[_success_header(summary, direction)] = [_success_cell(row) for row in summary.itertuples()]
        bound = "at most" if direction == "minimize" else "at least"
        note += (f" Reached: runs whose {metric} is {bound} the success threshold of the study file's [report] "
                 "table, out of the runs that finished training (a diverged run did not reach it); in brackets "
                 "the exact (Clopper-Pearson) 95% interval of that share.")
    shown["min"], shown["max"] = summary["min"].map(fmt), summary["max"].map(fmt)
    return Table("final_metric", f"Final {metric} per group ({better(direction)})", summary.drop(columns=["group"]),
                 shown, note)


def _success_header(summary: pd.DataFrame, direction: str) -> str:
    thresholds = summary["threshold"].dropna().unique()
    sign = "≤" if direction == "minimize" else "≥"
    return f"reached {sign} {fmt(thresholds[0])}" if len(thresholds) == 1 else f"reached {sign} threshold"


def _success_cell(row) -> str:
    """'3/5 [0.15, 0.95]': runs that reached the threshold, and the interval of the share."""
    if not isinstance(row.threshold, float) or math.isnan(row.threshold) or not row.success_runs:
        return "–"
    return f"{int(row.successes)}/{int(row.success_runs)} [{fmt(row.success_low, 2)}, {fmt(row.success_high, 2)}]"


def wide_table(summary: pd.DataFrame, data: ReportData, metric: str, direction: str) -> Table | None:
    """Paper-like layout: rows are series (activations), columns the sweep axis; 'mean ± sd'."""
    if not data.sweep:
        return None
    text = summary.assign(
        cell=[f"{fmt(m)} ± {fmt(s)}" + ("" if ok else f" {INCOMPLETE_MARK}")
              for m, s, ok in zip(summary["mean"], summary["sd"], summary["complete"])],
        column=summary["sweep"].map(lambda v: axis_title(data.sweep, v)),
    )
    order = list(dict.fromkeys(text["column"]))
    shown = text.pivot_table(index="series", columns="column", values="cell", aggfunc="first", sort=False)
    shown = shown.reindex(columns=order).fillna("–").reset_index().rename(columns={"series": "group"})
    shown.columns.name = None
    raw = summary.pivot_table(index="series", columns="sweep", values="mean", aggfunc="first", sort=False).reset_index()
    raw.columns = [c if c == "series" else axis_title(data.sweep, c) for c in raw.columns]
    return Table("final_metric_wide", f"Final {metric}, mean ± sd over seeds, by {data.sweep} ({better(direction)})",
                 raw, shown, f"{INCOMPLETE_MARK} marks a group with runs missing or failed.")


def paired_table(paired: pd.DataFrame, data: ReportData, metric: str, direction: str, baseline: str) -> Table:
    sweep = [data.sweep] if data.sweep else []
    shown = pd.DataFrame({
        "group": paired["series"], **{a: [axis_text(v, a) for v in paired["sweep"]] for a in sweep},
        "pairs": paired["pairs"], "mean": paired["mean"].map(fmt), f"{baseline} mean": paired["baseline_mean"].map(fmt),
        f"better than {baseline}": [f"{b}/{n}" + (f", {t} tied" if t else "")
                                    for b, n, t in zip(paired["better"], paired["pairs"], paired["ties"])],
        "P(improve)": paired["p_improve"].map(lambda v: fmt(v, 3)), "effect d_z": paired["effect_dz"].map(lambda v: fmt(v, 3)),
        "test": paired["test"], "pairs used": paired["pairs_used"],
        "p": paired["p"].map(fmt_p), "p (Holm)": paired["p_holm"].map(fmt_p),
    })
    tested = paired["p"].notna().any()
    if not tested:  # no row has enough seeds: no test columns at all, only the sign counts
        shown = shown.drop(columns=["effect d_z", "pairs used", "p", "p (Holm)"])
    too_few = (f"With fewer than {stats.MIN_TEST_PAIRS} pairs there is no test, no p-value and no effect size "
               f"(test: '{stats.TOO_FEW}'): only the count of seeds on which the activation is better. ")
    return Table("paired_vs_baseline", f"Paired comparison with {baseline}, seed by seed ({metric}, {better(direction)})",
                 paired.drop(columns=["group"]), shown,
                 "Pairs: seeds where both runs completed; values equal to 6 significant digits, or one unit apart "
                 "in the sixth, are tied. "
                 + (too_few if (~paired["p"].notna()).any() else "")
                 + ("Test: Wilcoxon signed-rank on the untied per-seed differences (it drops tied pairs; 'pairs used' "
                    f"counts what it ranked); with fewer than {stats.MIN_WILCOXON_PAIRS} untied pairs, the paired t "
                    "test on every pair. p-values Holm-corrected across the rows that have a test. "
                    "d_z: mean improvement / sd of improvements, positive = better than the baseline, 0 for equal "
                    "means. " if tested else "")
                 + "P(improve): share of seeds where the activation beats the baseline (ties count half).")


NOISY = "noisy: the spread includes 1"


def timing_table(timing: pd.DataFrame, data: ReportData, baseline: str | None,
                 spread: pd.DataFrame | None = None) -> Table:
    """`spread` (stats.timing_spread): the range of each group's ratio from the IQRs; a ratio whose
    range includes 1 says so in its cell."""
    sweep = [data.sweep] if data.sweep else []
    ranges = {} if spread is None else {(r.group, r.hardware): r for r in spread.itertuples()}

    def ratio(row) -> str:
        text = fmt(row.ratio_to_baseline, 3)
        found = ranges.get((row.group, row.hardware))
        return f"{text} ({NOISY})" if found is not None and found.noisy else text

    def span(row) -> str:
        found = ranges.get((row.group, row.hardware))
        if found is None:
            return "(baseline)" if row.ratio_to_baseline == 1.0 else "–"
        return f"[{fmt(found.ratio_low, 3)}, {fmt(found.ratio_high, 3)}]"

    name = f"time / {baseline or 'baseline'}"
    shown = pd.DataFrame({
        "group": timing["series"], **{a: [axis_text(v, a) for v in timing["sweep"]] for a in sweep},
        "hardware": timing["hardware"], "runs": timing["runs"],
        "parameters (activation)": [_param_text(a, b) for a, b in zip(timing["params"], timing["act_params"])],
        "median epoch (s)": timing["median_epoch_s"].map(fmt),
        "IQR (s)": [f"[{fmt(a)}, {fmt(b)}]" for a, b in zip(timing["q25_s"], timing["q75_s"])],
        "samples/s": timing["samples_per_s"].map(lambda v: fmt(v, 3)),
        name: [ratio(r) for r in timing.itertuples()],
    })
    note = ("Ratios compare with the baseline group run on the same hardware in the same study. "
            "Parameters: the model's trainable parameters, and in brackets how many of them the "
            "activations hold.")
    raw = timing.drop(columns=["group"])
    if ranges:
        shown[f"{name}, spread"] = [span(r) for r in timing.itertuples()]
        raw = timing.merge(spread, on=["group", "hardware"], how="left").drop(columns=["group"])
        note += (" Spread: from the group's 25th percentile epoch time over the baseline's 75th to its 75th over the "
                 "baseline's 25th (the IQR column); where it includes 1, the two groups' epochs overlap too much to "
                 f"tell which is faster (timings taken while other work shared the machine) and the ratio says '{NOISY}'.")
    return Table("timing", "Epoch time per group (median over all epochs of the completed runs)", raw, shown, note)


def _param_text(total: float, activation: float) -> str:
    """'2,701 (40)': the model's parameter count and the activations' share; '–' when not stored."""
    if not math.isfinite(total):
        return "–"
    return f"{int(total):,}" + (f" ({int(activation):,})" if math.isfinite(activation) else "")


def reference_table(ref: pd.DataFrame, direction: str) -> Table:
    shown = pd.DataFrame({
        "source": ref["source"], "where": ref["where"], "group": ref["series"], "metric": ref["metric"],
        "reference": ref["reference"].map(fmt), "n": ref["n"], "measured mean": ref["mean"].map(fmt),
        "95% CI": [f"[{fmt(a)}, {fmt(b)}]" + (f" ({m})" if isinstance(m, str) else "")
                   for a, b, m in zip(ref["ci_low"], ref["ci_high"], ref["ci_method"])],
        "inside CI": ref["inside_ci"].map({True: "yes", False: "no"}).fillna("–"), "verdict": ref["verdict"],
    })
    return Table("reference", f"Against the published numbers ({better(direction)})", ref, shown)


def training_table(data: ReportData) -> Table | None:
    """One row per task: its training settings (frames.training_settings); None when none were recorded."""
    rows = []
    for task in data.tasks():
        settings = frames.training_settings(data.cells[data.cells["task"].astype(str) == task])
        if settings:
            rows.append({"task": task, **settings})
    if not rows:
        return None
    frame = pd.DataFrame(rows).fillna("–")
    ranged = frame.map(lambda v: "differs by group" in v).to_numpy().any()
    note = ("A range marks a setting that differs by group (chosen per activation by fair tuning). " if ranged else "")
    return Table("training", "Training settings", frame, frame,
                 note + "data: task parameters that are not axes of the study.")


def failure_table(failures: pd.DataFrame) -> Table:
    shown = failures.drop(columns=["group"])
    shown.columns.name = None  # crosstab names its columns "status": an empty header column in HTML
    return Table("failures", "Run outcomes per group (statistics use completed runs only)", failures, shown,
                 "retried_attempts: failed/diverged/interrupted attempts that were retried.")


# ------------------------------------------------------------------------------------- writers


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes escaped)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


# A cell that holds only numbers and the signs around them ("0.64 ± 0.13", "[0.1, 3.9]", "2/2 †", "<0.001").
TEXT_CLASS = ' class="text"'
_NUMERIC_CELL = re.compile(r"[\d\s.,:+\-–−e±∞/\[\]<>=%†]*")


def to_html(frame: pd.DataFrame) -> str:
    """An HTML table: numeric columns right-aligned, text columns (names, labels, tests) left-aligned."""
    text = [not all(_NUMERIC_CELL.fullmatch(str(v)) for v in frame[c]) for c in frame.columns]

    def cells(tag: str, values) -> str:
        return "".join(f"<{tag}{TEXT_CLASS if t else ''}>{html_escape(str(v))}</{tag}>" for v, t in zip(values, text))

    rows = "".join(f"<tr>{cells('td', row)}</tr>" for row in frame.itertuples(index=False))
    return f'<table class="tbl"><thead><tr>{cells("th", frame.columns)}</tr></thead><tbody>{rows}</tbody></table>'


def to_latex(frame: pd.DataFrame, caption: str) -> str:
    """A booktabs table; special characters escaped, ± and † as LaTeX symbols."""
    body = frame.astype(str).to_latex(index=False, escape=True, caption=caption)
    return body.replace("±", r"$\pm$").replace("†", r"\dag{}").replace("–", "--").replace("∞", r"$\infty$")


def html_escape(text: str) -> str:
    return html.escape(text, quote=True)
