"""Trainable breakpoints against the fixed grid they start from, seed by seed: Wilcoxon signed-rank,
Holm-corrected across every (task, n, intervals) row. The notes of reports/trainable-breakpoints
quote these figures; recompute them from the shipped runs (tmafbench installed):

    python reports/notes/trainable-breakpoints-trained-vs-fixed.py reports/trainable-breakpoints/runs.csv
"""

import sys

import pandas as pd
from scipy import stats

from tmafbench.reports.stats import holm


def main(path: str) -> None:
    runs = pd.read_csv(path)
    runs = runs[(runs.status == "completed") & runs.activation.str.startswith("tmaf")].copy()
    runs["form"] = runs.activation.str.replace("tmaf-", "", regex=False)  # fixed | trained
    runs["n"] = runs["axis_n"].fillna(0).astype(int) if "axis_n" in runs else 0
    rows = []
    for (task, n, intervals), part in runs.groupby(["task", "n", "intervals"]):
        wide = part.pivot_table(index="seed", columns="form", values="rel_l2").dropna()
        better = int((wide.trained < wide.fixed).sum())
        rows.append({"task": task, "n": n or "-", "intervals": int(intervals), "seeds": len(wide),
                     "trained mean": wide.trained.mean(), "fixed mean": wide.fixed.mean(),
                     "trained median": wide.trained.median(), "fixed median": wide.fixed.median(),
                     "trained better": f"{better}/{len(wide)}",
                     "p": stats.wilcoxon(wide.trained, wide.fixed).pvalue})
    table = pd.DataFrame(rows)
    table["p (Holm)"] = holm(list(table.p))
    pd.set_option("display.width", 200)
    print(f"trained against fixed breakpoints, rel_l2 (Wilcoxon, Holm across {len(table)} rows)")
    print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1])
