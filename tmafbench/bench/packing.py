"""`tmafbench bench pack`: cells per hour, packed against one cell at a time, on the same cores.

Both sides run as a study's workers would: one process per core, each with one torch thread. One
cell at a time: each process trains its share of the cells with `train_trial`, one after the
other. Packed: each process trains its share as packs of K with `train_many`. Every cell trains the
same epochs on the same data, so cells per hour compare directly. Data loading and process start
are outside the timed region (every process loads its data and builds nothing before the clock).

A third column is what a user would write instead of packing: a `torch.func` ensemble, K copies of
the cell's model stacked with `stack_module_state` and trained as one by `vmap(grad(loss))` and
one Adam over the stacked parameters (Adam is elementwise, so each copy follows its own run); each
copy draws its own batch order. Only the training steps are timed there (no evaluation), so it
is, if anything, favoured. An activation that vmap cannot run gives its one-line reason instead.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any

from tmafbench.core import TrainingConfig, TrialConfig
from tmafbench.errors import InputError

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
    vmap_s: float | None = None  # wall time, torch.func ensembles of `pack` per process
    vmap_error: str | None = None  # why the ensemble cannot run this activation

    @property
    def alone_per_hour(self) -> float:
        return self.cells * 3600 / self.alone_s

    @property
    def packed_per_hour(self) -> float:
        return self.cells * 3600 / self.packed_s

    @property
    def speedup(self) -> float:
        return self.alone_s / self.packed_s

    @property
    def vmap_per_hour(self) -> float | None:
        return self.cells * 3600 / self.vmap_s if self.vmap_s else None

    @property
    def packed_vs_vmap(self) -> float | None:
        return self.vmap_s / self.packed_s if self.vmap_s else None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "alone_per_hour": self.alone_per_hour, "packed_per_hour": self.packed_per_hour,
                "vmap_per_hour": self.vmap_per_hour, "speedup": self.speedup, "packed_vs_vmap": self.packed_vs_vmap}


def setting_configs(setting: str, activation: str, cells: int, epochs: int, device: str = "cpu") -> list[TrialConfig]:
    """`cells` configs of a setting, seeds 0..cells-1 (artifacts off: they are the same work either way)."""
    s = SETTINGS[setting]
    act = s["grid"] if activation.startswith("tmaf") else {}
    training = TrainingConfig(epochs=epochs, batch_size=s["batch_size"], device=device, keep_predictions=False,
                              keep_activation_params=False)
    return [TrialConfig(task=s["task"], model="mlp", activation=activation, seed=seed, task_params=dict(s["task_params"]),
                        model_params=dict(s["model_params"]), act_params=dict(act), training=training)
            for seed in range(cells)]


def train_vmap_ensemble(configs: list[TrialConfig]) -> None:
    """Train the cells as one `torch.func` ensemble (module docstring): same model, task, data size,
    batch size, epochs and lr for all; each copy starts from its own cell's initialisation."""
    import copy

    import torch
    from torch.func import functional_call, grad, stack_module_state, vmap

    from tmafbench.training.trainer import build_setup

    setups = [build_setup(c) for c in configs]
    first = setups[0]
    params, buffers = stack_module_state([s.model for s in setups])  # each [K, ...]
    skeleton = copy.deepcopy(first.model).to("meta")

    def loss(p: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return first.task.loss(functional_call(skeleton, (p, b), (x,)), y)

    step = vmap(grad(loss))
    optimizer = torch.optim.Adam(list(params.values()), lr=first.config.training.lr)
    xs = torch.stack([s.train[0] for s in setups])  # [K, N, ...]
    ys = torch.stack([s.train[1] for s in setups])
    k, n = xs.shape[0], xs.shape[1]
    rows = torch.arange(k, device=xs.device)[:, None]
    for _ in range(first.config.training.epochs):
        order = torch.stack([torch.randperm(n, generator=s.order, device="cpu") for s in setups]).to(xs.device)
        for i in range(0, n, first.batch_size):
            idx = order[:, i:i + first.batch_size]  # [K, B]: each copy's own batch
            grads = step(params, buffers, xs[rows, idx], ys[rows, idx])
            for name, p in params.items():
                p.grad = grads[name]
            optimizer.step()


def _work(configs: list[TrialConfig], pack: int, start: Any, out: Any, mode: str = "train") -> None:
    """One worker process: wait for the common start, train, report its wall time (or the error that
    stopped a vmap ensemble)."""
    import torch

    from tmafbench.training import train_trial
    from tmafbench.training.packed import train_many

    torch.set_num_threads(1)
    # Before the clock: load (and cache) the data, and warm the code paths up on a small copy of the
    # cells (the first call of a path pays for lazy initialisation that no study pays per cell).
    small = [c.replace(task_params={**c.task_params, "train_size": 256, "test_size": 64}) for c in configs[:2]]
    try:
        if mode == "vmap":
            train_vmap_ensemble([c.replace(training=c.training.replace(epochs=1)) for c in small])
        else:
            train_many(small)
            train_trial(small[0])
            train_trial(configs[0].replace(training=configs[0].training.replace(epochs=1)))
    except RuntimeError as exc:  # vmap cannot run this activation: say why
        start.wait()
        out.put(str(exc).strip().splitlines()[0][:300])
        return
    start.wait()
    t0 = time.perf_counter()
    if mode == "vmap":
        for i in range(0, len(configs), pack):
            train_vmap_ensemble(configs[i:i + pack])
    elif pack > 1:
        for i in range(0, len(configs), pack):
            train_many(configs[i:i + pack])
    else:
        for config in configs:
            train_trial(config)
    out.put(time.perf_counter() - t0)


def _run(configs: list[TrialConfig], pack: int, processes: int, mode: str = "train") -> float | str:
    """Wall seconds for `processes` spawn processes to train `configs` between them (mode "vmap":
    as torch.func ensembles of `pack`), or the reason a vmap ensemble cannot run."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    shares = [configs[i::processes] for i in range(processes)]
    procs = [ctx.Process(target=_work, args=(share, pack, start, out, mode)) for share in shares]
    for p in procs:
        p.start()
    time.sleep(1.0)
    start.set()
    walls = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    errors = [w for w in walls if isinstance(w, str)]
    return errors[0] if errors else max(walls)


def bench_pack(settings: list[str], activations: list[str], pack: int = 16, epochs: int = 1,
               processes: int | None = None, device: str = "cpu", vmap: bool = True) -> list[PackFigure]:
    """Cells per hour of each setting and activation, packed (K = `pack`) against one cell at a time."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise InputError(f"unknown setting(s) {unknown}; choose from: {', '.join(SETTINGS)}")
    processes = processes or os.cpu_count() or 1
    figures = []
    for setting in settings:
        for activation in activations:
            configs = setting_configs(setting, activation, pack * processes, epochs, device)
            packed = _run(configs, pack, processes)
            alone = _run(configs, 1, processes)
            ensemble = _run(configs, pack, processes, "vmap") if vmap else "not measured"
            figures.append(PackFigure(setting, activation, pack, len(configs), processes, epochs, float(alone),
                                      float(packed), *((ensemble, None) if isinstance(ensemble, float) else (None, ensemble))))
    return figures
