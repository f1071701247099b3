"""The tuning section of a report: each group's history (best so far against trials), the chosen
settings, and how they were chosen (sampler, pruner, metric, seeds).

Reads only the tmaf_* tables (read-only engine): the tune study whose parent is a reported study,
its slot runs and their "tuning" artifacts (tmafbench/study/tuning.py's docstring). The chosen
settings follow the runner's rule exactly (`tmafbench.core.best_trial`, a pure function).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine

from tmafbench.core import SlotState, best_trial, metric_direction
from tmafbench.reports.curves import history_figure
from tmafbench.reports.frames import load_tuning
from tmafbench.reports.labels import axis_text
from tmafbench.reports.plotting import IMAGE_FORMATS, FigureContext, Palette
from tmafbench.reports.section import Section
from tmafbench.reports.tables import Table, fmt

STATES = tuple(SlotState)  # completed, pruned, failed


def history(frame: pd.DataFrame, direction: str) -> pd.DataFrame:
    """Per group, trials in Optuna order with the best completed value so far (NaN before the first)."""
    out = []
    for (study, group), sub in frame.groupby(["study", "group"], sort=False):
        sub = sub.sort_values("trial", na_position="last").reset_index(drop=True)
        best, rows = math.nan, []
        for i, r in sub.iterrows():
            value = r["value"]
            if r["state"] == SlotState.COMPLETED and value is not None and math.isfinite(value):
                better = math.isnan(best) or (value < best if direction == "minimize" else value > best)
                best = value if better else best
            rows.append({"study": study, "group": group, "n": i + 1, "trial": r["trial"], "state": r["state"],
                         "value": value, "best_so_far": best})
        out += rows
    return pd.DataFrame(out)


def chosen(frame: pd.DataFrame, direction: str) -> pd.DataFrame:
    """One row per group: trials by state, the best trial, its value and its settings (one column each)."""
    rows = []
    for (study, group), sub in frame.groupby(["study", "group"], sort=False):
        records = [{"state": r.state, "value": r.value, "trial_number": r.trial, "params": r.params}
                   for r in sub.itertuples()]
        best = best_trial(records, direction)
        counts = sub["state"].value_counts()
        row = {"study": study, "group": group, "trials": len(sub), **{s: int(counts.get(s, 0)) for s in STATES},
               "best_trial": best["trial_number"] if best else None, "best_value": best["value"] if best else None}
        row.update({k: v for k, v in (best["params"] if best else {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def describe(name: str, tune: dict, several: bool, packs: pd.Series | None = None) -> str:
    """How the settings were chosen, in one sentence; `packs`: the slots' pack sizes (sampler_text)."""
    seeds = tune.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
    evals = tune.get("eval_seeds")
    evals = list(range(max(seeds) + 1, max(seeds) + 1 + evals)) if isinstance(evals, int) else evals
    text = (f"{tune['trials']} trials per group, {sampler_text(tune, packs)}, pruner: "
            f"{tune.get('pruner', 'none')}, on {tune.get('metric') or 'the validation metric'} of a "
            f"{tune.get('val_fraction', 0.2):g} validation split of the training data (tuning seeds {seeds}); the "
            f"test set was not read while tuning. The comparison tables show the evaluation seeds {evals} only.")
    return f"{name}: {text}" if several else text


def sampler_text(tune: dict, packs: pd.Series | None = None) -> str:
    """What proposed the trials: the behaviour the study recorded (`TuneSpec.as_run`), else what the
    slots' pack sizes show. Trials packed together are proposed before any of them finishes, so a pack
    larger than TPE's random start makes the rest of it random proposals too."""
    startup = tune.get("startup_trials") or max(1, min(10, int(tune["trials"]) // 3))
    seed = tune.get("sampler_seed", 0)
    if tune.get("sampler"):
        return (f"Optuna TPE sampler (seed {seed}, {startup} random startup trials; a pack held at most "
                f"{tune.get('max_pack', startup)} tuning slots, so TPE proposed the later trials from finished ones)")
    largest = int(packs.max()) if packs is not None and packs.notna().any() else None
    if largest is not None and largest > startup:
        return (f"Optuna TPE sampler (seed {seed}) in name only: this study ran before tuning packs were capped, and "
                f"up to {largest} tuning slots trained in one pack, proposed together before any of them "
                f"finished, against a random start of {startup} per group: in effect a random search")
    return f"Optuna TPE sampler (seed {seed}, {startup} random startup trials; sampler behaviour not recorded)"


def build_section(engine: Engine, studies: list[str], folder: Path, formats: tuple[str, ...], scale: float = 1.0,
                  palette: Palette | None = None) -> Section | None:
    """The tuning Section, or None when no reported study was tuned. `palette`: the report's colours."""
    specs, frame = load_tuning(engine, studies)
    if not specs:
        return None
    # Each study tuned on its own metric (a report may join an error study and an accuracy one).
    # load_tuning fills in a metric the file left out (from the slot runs), so "val_rel_l2" is only a
    # placeholder while no slot has completed.
    metrics = {name: tune.get("metric") or "val_rel_l2" for name, tune in specs.items()}
    mixed = len(set(metrics.values())) > 1
    metric = "validation metric" if mixed else next(iter(metrics.values()))
    direction = "mixed" if mixed else metric_direction(metric)
    section = Section("tuning", "tuning_", metric, direction, None)
    section.notes = [describe(n, t, len(specs) > 1, frame.loc[frame["study"] == n, "pack"] if "pack" in frame else None)
                     for n, t in specs.items()]
    if frame.empty:
        section.notes.append("No tuning trial has finished yet.")
        return section
    per_study = [(frame[frame["study"] == name], m, metric_direction(m)) for name, m in metrics.items()]
    table = pd.concat([chosen(f, d).assign(**({"metric": m} if mixed else {})) for f, m, d in per_study if not f.empty],
                      ignore_index=True)
    section.tables = [settings_table(table, metric, direction, several=len(specs) > 1)]
    images = tuple(f for f in formats if f in IMAGE_FORMATS)
    if images:
        hist = pd.concat([history(f, d) for f, _, d in per_study if not f.empty], ignore_index=True)
        ctx = FigureContext(None, metric, direction, None, folder / "figures", images, scale, "tuning_", palette)
        section.figures = [history_figure(ctx, hist, facets_of(frame, several=len(specs) > 1))]
    return section


def settings_table(table: pd.DataFrame, metric: str, direction: str, several: bool) -> Table:
    """`direction` "mixed" (studies tuned on metrics of both directions): a metric column says which."""
    mixed = direction == "mixed"
    raw = table if several else table.drop(columns=["study"])
    shown = raw.copy()
    shown["best_value"] = [fmt(v) for v in shown["best_value"]]
    for col in shown.columns:
        if col not in ("study", "group", "best_value", "metric"):
            shown[col] = [_cell(v) for v in shown[col]]
    best = "best value" if mixed else f"best {metric}"
    shown = shown.rename(columns={"best_value": best, "best_trial": "best trial"})
    rule = ("lowest error or highest accuracy, by each study's metric," if mixed else
            f"{'lowest' if direction == 'minimize' else 'highest'} {metric}")
    return Table("tuning_settings", "Tuning: chosen settings per group", raw.reset_index(drop=True), shown.reset_index(drop=True),
                 note=f"Best = {rule} among the completed, "
                      "non-pruned trials (ties: the earliest); its settings were used on the evaluation seeds.")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return fmt(value, 3)
    return str(value)


# Axes that tell activations apart (the colours) rather than problems (the panels).
SERIES_AXES = ("activation", "grid", "intervals", "slot", "seed")


def facets_of(frame: pd.DataFrame, several: bool) -> dict[tuple[str, str], tuple[str, str]]:
    """{(study, group): (panel, series)}: one panel per problem (the axes that vary, e.g. "n=3"), one
    colour per activation (with its grid) inside it."""
    groups = frame.drop_duplicates(["study", "group"])
    keys = list(dict.fromkeys(k for axes in groups["axes"] for k in axes if k not in SERIES_AXES))
    varying = [k for k in keys if groups["axes"].map(lambda a: str(a.get(k))).nunique() > 1]
    out = {}
    for row in groups.itertuples():
        panel = " ".join(f"{k}={axis_text(row.axes[k], k)}" for k in varying if row.axes.get(k) is not None)
        panel = f"{row.study}: {panel}" if several else panel
        series = " ".join(str(v) for v in (row.activation, row.axes.get("grid")) if v)
        out[(row.study, row.group)] = (panel, series or row.group)
    return out

