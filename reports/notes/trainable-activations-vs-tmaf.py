"""Each activation against diagonal TMAF, seed by seed: paired t, Holm-corrected across each study's
rows. The notes of reports/trainable-activations quote these figures; recompute them from the shipped
runs (tmafbench installed):

    python reports/notes/trainable-activations-vs-tmaf.py reports/trainable-activations/runs.csv [BASELINE]

BASELINE (default tmaf) may name another activation, e.g. relu, the report's own baseline.
"""

import sys

import pandas as pd
from scipy import stats

from tmafbench.reports.stats import holm

HIGHER_IS_BETTER = {"accuracy": True, "rel_l2": False}


def against(study: pd.DataFrame, base: str) -> pd.DataFrame:
    rows = []
    for n, part in study.groupby("n"):
        wide = part.pivot_table(index="seed", columns="activation", values="value")
        up = HIGHER_IS_BETTER[part.metric_name.iloc[0]]
        for act in wide.columns.drop(base):
            pair = wide[[act, base]].dropna()
            better = int(((pair[act] > pair[base]) if up else (pair[act] < pair[base])).sum())
            rows.append({"n": n, "activation": act, "mean": pair[act].mean(), f"{base} mean": pair[base].mean(),
                         f"better than {base}": f"{better}/{len(pair)}", "p": stats.ttest_rel(pair[act], pair[base]).pvalue})
    table = pd.DataFrame(rows)
    table["p (Holm)"] = holm(list(table.p))
    return table


def main(path: str, base: str = "tmaf") -> None:
    runs = pd.read_csv(path)
    runs = runs[runs.status == "completed"].copy()  # runs.csv holds the evaluation runs only
    runs["value"] = [row[name] for name, (_, row) in zip(runs.metric_name, runs.iterrows())]
    runs["n"] = runs["axis_n"].fillna(0) if "axis_n" in runs else 0
    for name, study in runs.groupby("study"):
        table = against(study, base)
        print(f"== {name}: against {base} (paired t, Holm across its {len(table)} rows)")
        print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main(*sys.argv[1:3])
