"""Throughput figures for the closing notes: one training epoch, or one optimiser step.

These print numbers; nothing asserts on them. Timings repeat and report the median, because the
CPUs are shared. Each activation is measured on the same task, model, batch size and seed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from tmafbench import activations, models, tasks
from tmafbench.core import TrainingConfig, TrialConfig
from tmafbench.registries import ACTIVATIONS
from tmafbench.training.optim import build_optimizer
from tmafbench.training.seeding import seed_everything
from tmafbench.training.timing import Timer
from tmafbench.training.trainer import build_setup, resolve_device, train_epoch


@dataclass
class BenchRow:
    """Timings (seconds) of one activation; `ratio` is the median over the first row's median."""

    activation: str
    times_s: list[float]
    num_params: int
    samples: int
    ratio: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.median_s


def bench_epochs(task: str, model: str, activation_names: list[str], *, task_params: dict | None = None,
                 model_params: dict | None = None, act_params: dict | None = None, batch_size: int = 64,
                 repeats: int = 3, threads: int | None = None, device: str = "cpu", seed: int = 0) -> list[BenchRow]:
    """Median time of one full training epoch per activation (data already on the device)."""
    _set_threads(threads)
    rows = []
    for name in activation_names:
        config = TrialConfig(task=task, model=model, activation=name, seed=seed, task_params=dict(task_params or {}),
                             model_params=dict(model_params or {}), act_params=_params_for(name, act_params),
                             training=TrainingConfig(epochs=repeats, batch_size=batch_size, device=device))
        setup = build_setup(config)
        times = []
        for _ in range(repeats):
            with Timer(setup.device) as timer:
                train_epoch(setup)
            times.append(timer.seconds)
        rows.append(BenchRow(name, times, models.count_parameters(setup.model)[0], setup.train[0].shape[0]))
    return _with_ratios(rows)


def bench_steps(task: str, model: str, activation_names: list[str], *, task_params: dict | None = None,
                model_params: dict | None = None, act_params: dict | None = None, batch_size: int = 128,
                repeats: int = 5, warmup: int = 1, threads: int | None = None, device: str = "cpu",
                seed: int = 0) -> list[BenchRow]:
    """Median time of one forward + backward + optimiser step on a random batch, per activation.

    The batch is standard normal noise of the task's input shape, so no data set is read.
    """
    _set_threads(threads)
    dev = resolve_device(device)
    the_task = tasks.create(task, **dict(task_params or {}))
    rows = []
    for name in activation_names:
        generator = seed_everything(seed)
        net = models.create(model, activation=activations.factory(name, **_params_for(name, act_params)),
                            task=the_task, **dict(model_params or {})).to(dev)
        optimizer = build_optimizer(net, TrainingConfig(optimizer="sgd", lr=0.01))
        x = torch.randn(batch_size, *the_task.input_shape, generator=generator).to(dev)  # [B, *input]
        y = (torch.randint(0, the_task.output_size, (batch_size,), generator=generator) if the_task.kind == "classification"
             else torch.randn(batch_size, generator=generator)).to(dev)
        times = []
        for i in range(warmup + repeats):
            with Timer(dev) as timer:
                loss = the_task.loss(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if i >= warmup:
                times.append(timer.seconds)
        rows.append(BenchRow(name, times, models.count_parameters(net)[0], batch_size))
    return _with_ratios(rows)


def _params_for(name: str, act_params: dict | None) -> dict:
    """Activation params apply to the activations that take them (relu takes none)."""
    params = dict(act_params or {})
    names = {p.name for p in ACTIVATIONS.entry(name).params} if name in ACTIVATIONS.available() else set()
    return {k: v for k, v in params.items() if k in names}


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def _with_ratios(rows: list[BenchRow]) -> list[BenchRow]:
    for row in rows:
        row.ratio = row.median_s / rows[0].median_s
    return rows
