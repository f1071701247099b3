"""`study verify`: re-run stored cells from their stored configs on this machine and say how far
each result drifts from the stored one, and why it might (DESIGN.md: a trial is a pure function of
its cell, so the stored record alone is enough to re-run it).

Bits are expected to match only where the arithmetic is the same: the same CPU vector extensions
(MKL and oneDNN pick their kernels by them), the same thread count and MKL_CBWR setting, the same
TMAF kernel and torch build, and the same pack (cells packed together share batched products whose
summation order depends on the pack). Elsewhere the statistics across seeds are what should
reproduce; a single run drifts. Each check says which of these differ.

A packed cell is re-run in its pack, the other cells of the pack trained with it as they were, in
pack order: the pack a run recorded (the worker's "pack" artifact), or for a run stored before packs
were recorded, the cells its worker claimed in the same transaction that train as one model with it
(`inferred`). `alone=True` re-runs each picked cell by itself (cheaper; not the stored arithmetic).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from tmafbench.core import TrialConfig
from tmafbench.errors import TmafbenchError
from tmafbench.store.records import StoredRun, completed_runs


@dataclass
class CellCheck:
    """One re-run cell against its stored run."""

    cell_id: int
    config_hash: str
    label: str
    seed: int
    metric: str
    pack: str  # how it was re-run: "alone", "in its recorded pack of 16", "in its inferred pack of 16"
    stored_pack: int
    first_loss: tuple[float | None, float | None]  # epoch 1 train loss: stored, re-run
    final: tuple[float | None, float | None]  # the primary metric: stored, re-run
    identical: bool  # every stored final metric and stored epoch train loss equal, bit for bit
    compared: int  # how many stored values the identity check compared
    differences: list[str] = field(default_factory=list)  # environment and pack differences
    status: str = "completed"  # of the re-run

    @property
    def drift(self) -> float:
        """|re-run - stored| / |stored| of the primary metric (inf when one side is missing)."""
        stored, rerun = self.final
        if stored is None or rerun is None or not (math.isfinite(stored) and math.isfinite(rerun)):
            return math.inf
        if stored == rerun:
            return 0.0
        return abs(rerun - stored) / abs(stored) if stored else math.inf

    def within(self, tolerance: float) -> bool:
        return self.identical or self.drift <= tolerance


@dataclass
class Verification:
    """The checks of one `study verify` call."""

    study: str
    url: str
    tolerance: float
    cells_in_study: int
    completed: int
    threads: int
    checks: list[CellCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.within(self.tolerance) for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "checks"}, "ok": self.ok,
                "checks": [{**asdict(c), "drift": c.drift, "within": c.within(self.tolerance)} for c in self.checks]}


def pick(runs: list[StoredRun], count: int | None, cell: str | None, seed: int) -> list[StoredRun]:
    """The runs to re-run: the one named (cell id or a unique config-hash prefix), else `count`
    drawn at random with `seed` (every run when count exceeds them), in cell order."""
    if cell is not None:
        found = [r for r in runs if str(r.cell_id) == cell or r.config_hash.startswith(cell)]
        if not found:
            raise TmafbenchError(f"no completed cell {cell!r} in the study (give a cell id or a config hash)")
        if len(found) > 1:
            raise TmafbenchError(f"{cell!r} names {len(found)} cells; give more of the config hash")
        return found
    if count is None or count < 1:
        raise TmafbenchError(f"--cells must be at least 1, got {count}")
    chosen = random.Random(seed).sample(runs, min(count, len(runs)))
    return sorted(chosen, key=lambda r: r.cell_id)


def verify(url: str, study: str, *, cells: int | None = 3, cell: str | None = None, seed: int = 0,
           tolerance: float = 0.0, alone: bool = False, threads: int | None = None) -> Verification:
    """Re-run cells of `study` (a live database or a shipped .db.gz) and compare; see the module docstring.

    `threads`: torch's thread count for the re-runs; default the stored runs' (when recorded), else
    this process's."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise TmafbenchError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    runs, n_cells = completed_runs(url, study)
    if not runs:
        raise TmafbenchError(f"study {study!r} has no completed run to re-run")
    chosen = pick(runs, cells, cell, seed)
    threads = _set_threads(threads, chosen)
    here = _here()
    result = Verification(study, url, tolerance, n_cells, len(runs), threads)
    cache: dict[tuple[str, ...], list[Any]] = {}
    for run in chosen:
        members = _pack_members(run) if not alone else None
        outcome = _rerun(run, members, cache)
        result.checks.append(_check(run, members, outcome, here, alone))
    return result


def _set_threads(threads: int | None, chosen: list[StoredRun]) -> int:
    import torch

    if threads is None:
        stored = {r.environment.get("details", {}).get("threads") for r in chosen} - {None}
        threads = stored.pop() if len(stored) == 1 else None
    if threads is not None:
        if threads < 1:
            raise TmafbenchError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def _here() -> dict[str, Any]:
    from tmafbench.activations.kernels import kernel_on
    from tmafbench.store.environment import collect

    return asdict(collect("cpu", kernel_on("cpu")))


def _pack_members(run: StoredRun) -> tuple[list[str], list[dict[str, Any]], str] | None:
    """(hashes, configs, "recorded"|"inferred") of the run's pack when it trained packed and the pack
    is known; None when it trained alone or its pack cannot be told."""
    if run.pack_size <= 1:
        return None
    if run.pack and all(h in run.pack_configs for h in run.pack):
        return run.pack, [run.pack_configs[h] for h in run.pack], "recorded"
    if run.pack is None and run.claimed_with:
        from tmafbench.training.packed import pack_key  # the worker's grouping rule

        mine = pack_key(run.config)
        members = [(h, c) for h, c in run.claimed_with if pack_key(c) == mine]
        if len(members) == run.pack_size and run.config_hash in [h for h, _ in members]:
            return [h for h, _ in members], [c for _, c in members], "inferred"
    return None


def _rerun(run: StoredRun, members: tuple[list[str], list[dict[str, Any]], str] | None,
           cache: dict[tuple[str, ...], list[Any]]) -> Any:
    """This machine's result for the run's cell: in its pack (trained once per pack), else alone."""
    from tmafbench.training.packed import train_many

    if members is None:
        key: tuple[str, ...] = ("alone", run.config_hash)
        configs = [_on_cpu(run.config)]
        index = 0
    else:
        key = tuple(members[0])
        configs = [_on_cpu(c) for c in members[1]]
        index = members[0].index(run.config_hash)
    if key not in cache:
        cache[key] = train_many(configs)
    return cache[key][index]


def _on_cpu(config: dict[str, Any]) -> TrialConfig:
    trial = TrialConfig.from_dict(config)
    return trial.replace(training=trial.training.replace(device="cpu"))


def _check(run: StoredRun, members: Any, outcome: Any, here: dict[str, Any], alone: bool) -> CellCheck:
    from tmafbench.store.environment import differences

    failed = isinstance(outcome, BaseException)
    finals = {} if failed else outcome.final_metrics
    losses = {} if failed else {e.epoch: e.train_loss for e in outcome.epochs}
    compared = [(v, finals.get(k)) for k, v in run.finals.items()] + \
               [(v, losses.get(epoch)) for epoch, v in run.train_loss.items()]
    identical = not failed and all(_same(a, b) for a, b in compared)
    if members is None:
        how = ("alone" if run.pack_size <= 1 else f"alone, as asked (stored in a pack of {run.pack_size})" if alone
               else f"alone (stored in a pack of {run.pack_size} whose cells are not known)")
    else:
        how = f"in its {members[2]} pack of {len(members[0])}"
    notes = differences({"cpu": run.environment.get("cpu"), "torch": run.environment.get("torch"),
                         "details": run.environment.get("details")}, here) if run.environment else \
        ["the stored run recorded no environment"]
    if members is None and run.pack_size > 1:
        notes.append(f"pack: {run.pack_size} cells there, 1 here")
    return CellCheck(run.cell_id, run.config_hash, run.label, run.seed, run.metric_name, how, run.pack_size,
                     (run.train_loss.get(1), losses.get(1)), (run.finals.get(run.metric_name), finals.get(run.metric_name)),
                     identical, len(compared), notes,
                     status="failed: " + (str(outcome).splitlines() or [type(outcome).__name__])[0] if failed else str(outcome.status))


def _same(stored: float | None, rerun: float | None) -> bool:
    """Equal bit for bit; NaN (stored as NULL) equals NaN."""
    def norm(v: float | None) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    return norm(stored) == norm(rerun)
