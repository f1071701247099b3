"""The tuned path of `tmafbench study run|worker|cells|delete` (a study file with `[tune]`).

Not a command module of its own: tmafbench/cli/study.py calls these when a study has a tuning
phase. Parsing stays in the CLI; the work is tmafbench.study.tuning's.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from tmafbench.cli.common import counts_detail, exit_for_outcome, progress_bar

console = Console(stderr=True)


def describe(tuned: Any) -> str:
    """One line: budget, seeds, metric, pruner and the space, for `study cells` / `--dry-run`."""
    from tmafbench.study.tuning import groups_of

    tune = tuned.tune
    groups = groups_of(tuned, tuned.spec.name)
    spaces = "; ".join(f"{g.label}: {', '.join(g.space) or '(nothing)'}" for g in groups)
    return (f"tuning: {len(groups)} groups x {tune.trials} trials (TPE, sampler seed {tune.sampler_seed}, pruner "
            f"{tune.pruner}) on {tune.metric} with val_fraction {tune.val_fraction:g}, tuning seeds "
            f"{tune.tune_seed_list()}; the table shows the evaluation cells (seeds {tune.eval_seed_list()}) before "
            f"their settings are chosen. Space per group: {spaces}")


class TunedProgress:
    """Slots, then evaluation cells, done / running / failed / pending."""

    def __init__(self, info: Any):
        self.progress = progress_bar(console)
        # Totals are set from the database counts on the first update.
        self.tasks = {"tune": self.progress.add_task("tuning slots", total=None, detail=""),
                      "eval": self.progress.add_task("evaluation cells", total=None, detail="")}

    def __call__(self, phase: str, counts: Any) -> None:
        self.progress.update(self.tasks[phase], total=counts.total, completed=counts.completed + counts.failed,
                             detail=counts_detail(counts))


def run(tuned: Any, url: str, devices: list[str], options: Any, *, new_name: str | None, force: bool) -> None:
    """Both phases with local workers; exit 1 when something is left, 130 when interrupted."""
    from tmafbench.store.database import redact
    from tmafbench.study.tuning import prepare_tuned

    if force:
        raise typer.BadParameter("--force is not offered for a tuned study: use --new-name NAME, or delete the study")
    info = prepare_tuned(tuned, url, new_name=new_name)
    console.print(f"{info.message} in {redact(url)}; {len(devices)} worker(s) on {', '.join(sorted(set(devices)))}")
    _run_info(info, url, devices, options)


def worker(name: str, url: str, devices: list[str], options: Any) -> None:
    """Join a tuned study (both phases) from this machine."""
    from tmafbench.study.tuning import load_info

    _tuned, info = load_info(name, url)
    _run_info(info, url, devices, options)


def _run_info(info: Any, url: str, devices: list[str], options: Any) -> None:
    from tmafbench.study.tuning import run_tuned_local

    view = TunedProgress(info)
    with view.progress:
        outcome = run_tuned_local(info, url, devices, options, progress=view)
    t, e = outcome.tune_counts, outcome.eval_counts
    console.print(f"study {info.name!r}: tuning {t.completed}/{t.total} slots done ({t.failed} failed); evaluation "
                  f"{e.completed}/{e.total} cells done ({e.diverged} diverged, {e.failed} failed); {outcome.wall_s:.1f} s")
    exit_for_outcome(console, outcome.exit_codes, outcome.interrupted, outcome.done,
                     "run the same command again to resume (finished trials are kept)")


def delete_optuna_groups(name: str, url: str) -> int:
    """Delete the per-group Optuna studies `<name>/tune/...` (ours cascade from the main study)."""
    import optuna

    from tmafbench.study.scheduler import optuna_storage
    from tmafbench.study.tuning import TUNE_SUFFIX

    storage = optuna_storage(url)
    names = [s.study_name for s in storage.get_all_studies() if s.study_name.startswith(name + TUNE_SUFFIX + "/")]
    for study_name in names:
        optuna.delete_study(study_name=study_name, storage=storage)
    storage.engine.dispose()
    return len(names)
