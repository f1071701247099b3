"""Throughput figures for the closing notes: one training epoch, or one optimiser step.

These print numbers; nothing asserts on them. Timings repeat and report the median, because the
CPUs are shared. Each activation is measured on the same task, model, batch size and seed.

Epochs are interleaved: after `warmup` untimed epochs of each setup, every round times one epoch of
each (activation, thread count), so a change in the machine's load hits all of them alike.
`under_load=N` runs the whole measurement beside N busy processes of our own
(bench.activations.busy_processes): with threads [1, 2] it shows what a second thread costs or
gains on busy cores.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from tmafbench.errors import InputError
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
    threads: int | None = None
    load: int = 0  # busy processes of our own running meanwhile

    def to_dict(self) -> dict[str, Any]:
        return {"activation": self.activation, "threads": self.threads, "load": self.load, "median_s": self.median_s,
                "times_s": self.times_s, "ratio": self.ratio, "samples": self.samples,
                "samples_per_s": self.samples_per_s, "num_params": self.num_params, **self.extra}

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.median_s


def bench_epochs(task: str, model: str, activation_names: list[str | tuple[str, str, dict]], *, task_params: dict | None = None,
                 model_params: dict | None = None, act_params: dict | None = None, batch_size: int = 64,
                 repeats: int = 3, threads: int | list[int] | None = None, device: str = "cpu", seed: int = 0,
                 warmup: int = 1, under_load: int = 0) -> list[BenchRow]:
    """Median time of one full training epoch per activation and thread count (data already on the
    device), interleaved round by round (module docstring)."""
    from tmafbench.bench.activations import busy_processes

    if repeats < 1 or warmup < 0 or under_load < 0:
        raise InputError(f"need repeats >= 1, warmup >= 0 and under_load >= 0; got {repeats}, {warmup}, {under_load}")
    counts = [int(t) for t in ([threads] if isinstance(threads, int) else threads or [])] or [torch.get_num_threads()]
    if min(counts) < 1:
        raise InputError(f"threads must be >= 1, got {counts}")
    setups = []
    labels = []
    for item in activation_names:
        # a name, or (label, name, params): one activation with parameters of its own (they override
        # act_params), so that one run can time several settings of an activation side by side
        label, name, own = (item, item, {}) if isinstance(item, str) else item
        labels.append(label)
        config = TrialConfig(task=task, model=model, activation=name, seed=seed, task_params=dict(task_params or {}),
                             model_params=dict(model_params or {}), act_params={**_params_for(name, act_params), **own},
                             training=TrainingConfig(epochs=warmup + repeats * len(counts), batch_size=batch_size,
                                                     device=device))
        setups.append(build_setup(config))
    previous = torch.get_num_threads()
    times: dict[tuple[int, int], list[float]] = {(i, t): [] for t in counts for i in range(len(setups))}
    try:
        with busy_processes(under_load):
            for setup in setups:
                for _ in range(warmup):
                    train_epoch(setup)
            for _ in range(repeats):
                for t in counts:
                    torch.set_num_threads(t)
                    for i, setup in enumerate(setups):
                        with Timer(setup.device) as timer:
                            train_epoch(setup)
                        times[(i, t)].append(timer.seconds)
    finally:
        torch.set_num_threads(previous)
    rows = [BenchRow(name, times[(i, t)], models.count_parameters(setups[i].model)[0], setups[i].train[0].shape[0],
                     threads=t, load=under_load)
            for t in counts for i, name in enumerate(labels)]
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
