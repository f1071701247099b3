"""`tmafbench bench pack`: cells per hour, packed against one cell at a time, on the same cores.

Both sides run as a study's workers would: one process per core, each with one torch thread. One
cell at a time: each process trains its share of the cells with `train_trial`, one after the
other. Packed: each process trains its share as packs of K with `train_many`. Every cell trains the
same epochs on the same data, so cells per hour compare directly. Data loading and process start
are outside the timed region (every process loads its data and builds nothing before the clock).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any

from tmafbench.core import TrainingConfig, TrialConfig

# The settings the issue names: the paper's Table 3.2 network, sine-sum n = 2, MNIST 784-10-10.
SETTINGS: dict[str, dict[str, Any]] = {
    "table-3-2": dict(task="oscillatory", task_params={"train_size": 20000, "test_size": 2000},
                      model_params={"depth": 1, "width": 20}, grid={"intervals": 100}, batch_size=64),
    "sine-sum": dict(task="sine-sum", task_params={"n": 2, "train_size": 20000, "test_size": 2000},
                     model_params={"depth": 1, "width": 20}, grid={}, batch_size=64),
    "mnist": dict(task="mnist", task_params={}, model_params={"depth": 1, "width": 10}, grid={}, batch_size=64),
}


@dataclass
class PackFigure:
    setting: str
    activation: str
    pack: int
    cells: int
    processes: int
    epochs: int
    alone_s: float  # wall time, one cell at a time per process
    packed_s: float  # wall time, packs of `pack` per process

    @property
    def alone_per_hour(self) -> float:
        return self.cells * 3600 / self.alone_s

    @property
    def packed_per_hour(self) -> float:
        return self.cells * 3600 / self.packed_s

    @property
    def speedup(self) -> float:
        return self.alone_s / self.packed_s


def setting_configs(setting: str, activation: str, cells: int, epochs: int, device: str = "cpu") -> list[TrialConfig]:
    """`cells` configs of a setting, seeds 0..cells-1 (artifacts off: they are the same work either way)."""
    s = SETTINGS[setting]
    act = s["grid"] if activation.startswith("tmaf") else {}
    training = TrainingConfig(epochs=epochs, batch_size=s["batch_size"], device=device, keep_predictions=False,
                              keep_activation_params=False)
    return [TrialConfig(task=s["task"], model="mlp", activation=activation, seed=seed, task_params=dict(s["task_params"]),
                        model_params=dict(s["model_params"]), act_params=dict(act), training=training)
            for seed in range(cells)]


def _work(configs: list[TrialConfig], pack: int, start: Any, out: Any) -> None:
    """One worker process: wait for the common start, train, report its wall time."""
    import torch

    from tmafbench.training import train_trial
    from tmafbench.training.packed import train_many

    torch.set_num_threads(1)
    # Before the clock: load (and cache) the data, and warm both code paths up on a small copy of the
    # cells (the first call of a path pays for lazy initialisation that no study pays per cell).
    small = [c.replace(task_params={**c.task_params, "train_size": 256, "test_size": 64}) for c in configs[:2]]
    train_many(small)
    train_trial(small[0])
    train_trial(configs[0].replace(training=configs[0].training.replace(epochs=1)))
    start.wait()
    t0 = time.perf_counter()
    if pack > 1:
        for i in range(0, len(configs), pack):
            train_many(configs[i:i + pack])
    else:
        for config in configs:
            train_trial(config)
    out.put(time.perf_counter() - t0)


def _run(configs: list[TrialConfig], pack: int, processes: int) -> float:
    """Wall seconds for `processes` spawn processes to train `configs` between them."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    shares = [configs[i::processes] for i in range(processes)]
    procs = [ctx.Process(target=_work, args=(share, pack, start, out)) for share in shares]
    for p in procs:
        p.start()
    time.sleep(1.0)
    start.set()
    walls = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return max(walls)


def bench_pack(settings: list[str], activations: list[str], pack: int = 16, epochs: int = 1,
               processes: int | None = None) -> list[PackFigure]:
    """Cells per hour of each setting and activation, packed (K = `pack`) against one cell at a time."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; choose from: {', '.join(SETTINGS)}")
    processes = processes or os.cpu_count() or 1
    figures = []
    for setting in settings:
        for activation in activations:
            configs = setting_configs(setting, activation, pack * processes, epochs)
            packed = _run(configs, pack, processes)
            alone = _run(configs, 1, processes)
            figures.append(PackFigure(setting, activation, pack, len(configs), processes, epochs, alone, packed))
    return figures
