"""`tmafbench train`: train one network and print its result; `tmafbench bench epoch|step`."""

from __future__ import annotations

import json
import statistics
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from tmafbench.cli.common import parse_params
from tmafbench.core import TrialResult


def parse_batch_size(text: str) -> int | None:
    """'64' -> 64; '0' or 'full' -> None (full batch)."""
    if text.strip().lower() in ("0", "full", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--batch-size expects a positive integer, 0 or 'full', got {text!r}") from None
    if value < 0:
        raise ValueError(f"--batch-size expects a positive integer, 0 or 'full', got {text!r}")
    return value


def model_params(depth: int | None, width: int | None, items: list[str] | None) -> dict[str, Any]:
    """--model-param k=v, with --depth/--width as shorthands."""
    params = parse_params(items, "--model-param")
    params.update({k: v for k, v in (("depth", depth), ("width", width)) if v is not None})
    return params


def train(
    task: str = typer.Option(..., "--task", help="task name (see `tmafbench tasks`)"),
    model: str = typer.Option("mlp", "--model", help="model name (see `tmafbench models`)"),
    activation: str = typer.Option("relu", "--activation", "-a", help="activation name (see `tmafbench activations`)"),
    depth: Optional[int] = typer.Option(None, help="mlp: hidden layers (shorthand for --model-param depth=)"),
    width: Optional[int] = typer.Option(None, help="hidden width / channels (shorthand for --model-param width=)"),
    act_param: Optional[list[str]] = typer.Option(None, "--act-param", help="activation parameter k=v (repeatable)"),
    task_param: Optional[list[str]] = typer.Option(None, "--task-param", help="task parameter k=v (repeatable)"),
    model_param: Optional[list[str]] = typer.Option(None, "--model-param", help="model parameter k=v (repeatable)"),
    epochs: int = typer.Option(10, help="training epochs"),
    seed: int = typer.Option(0, help="trial seed: weight init, data order and sampled sets"),
    lr: float = typer.Option(1e-3, help="learning rate"),
    optimizer: str = typer.Option("adam", help="sgd, adam or adamw"),
    momentum: float = typer.Option(0.9, help="sgd momentum"),
    weight_decay: float = typer.Option(0.0, help="weight decay"),
    act_lr: Optional[float] = typer.Option(None, help="learning rate of the activation parameters (default: --lr)"),
    act_weight_decay: Optional[float] = typer.Option(None, help="weight decay of the activation parameters"),
    schedule: str = typer.Option("constant", help="constant, step-half, cosine or onecycle"),
    batch_size: str = typer.Option("128", "--batch-size", "-b", help="batch size; 0 or 'full' for full batch"),
    grad_clip: Optional[float] = typer.Option(None, help="clip the gradient norm to this value"),
    init_scale: float = typer.Option(1.0, help="multiply the default Linear/Conv init by this"),
    loss_reduction: str = typer.Option("mean", "--loss-reduction",
                                       help="mean or sum over the batch; sum is the paper's eq. 1.2"),
    evaluate_train: bool = typer.Option(False, "--evaluate-train",
                                        help="also measure the task's metrics on the training set (train_rel_l2, ...)"),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto"),
    as_json: bool = typer.Option(False, "--json", help="print the whole result as JSON on stdout"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a per-epoch progress bar"),
) -> None:
    """Train one network and print its final metrics."""
    from tmafbench.training import TrainingConfig, TrialConfig, train_trial

    config = TrialConfig.build(dict(
        task=task, model=model, activation=activation, seed=seed,
        task_params=parse_params(task_param, "--task-param"),
        model_params=model_params(depth, width, model_param),
        act_params=parse_params(act_param, "--act-param"),
        training=TrainingConfig.build(dict(
            optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, act_lr=act_lr,
            act_weight_decay=act_weight_decay, schedule=schedule, epochs=epochs,
            batch_size=parse_batch_size(batch_size), grad_clip=grad_clip, device=device, init_scale=init_scale,
            loss_reduction=loss_reduction, evaluate_train=evaluate_train,
        )),
    ))
    with EpochProgress(progress and not as_json, epochs) as on_epoch:
        result = train_trial(config, on_epoch=on_epoch)
    if as_json:
        typer.echo(json.dumps({"config": config.to_dict(), **result.to_dict()}))
    else:
        print_result(result, config.to_dict())


class EpochProgress:
    """A rich per-epoch progress bar on stderr (or nothing when disabled); yields the on_epoch callback."""

    def __init__(self, enabled: bool, epochs: int):
        self.enabled, self.epochs, self.bar, self.task_id = enabled, epochs, None, None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("epoch"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=Console(stderr=True), transient=False)
        self.bar.start()
        self.task_id = self.bar.add_task("", total=self.epochs)
        return self.advance

    def advance(self, record: Any) -> None:
        name, value = next(iter(record.metrics.items()), (None, None))  # the task's primary metric comes first
        text = f"loss {record.train_loss:.4g}" + (f"  {name} {value:.4g}" if name is not None else "")
        self.bar.update(self.task_id, advance=1, description=text)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_result(result: TrialResult, config: dict[str, Any]) -> None:
    """Final metrics, parameter counts and timings as a small table."""
    table = Table(title=f"{config['task']} / {config['model']} / {config['activation']} (seed {config['seed']})",
                  show_header=False)
    table.add_column("key")
    table.add_column("value")
    table.add_row("status", result.status + (f" ({result.error})" if result.error else ""))
    table.add_row("parameters", f"{result.num_params:,} (activation: {result.num_act_params:,})")
    for name, value in result.final_metrics.items():
        marker = " *" if name == result.metric_name else ""
        table.add_row(name + marker, f"{value:.6g}")
    if result.epochs:
        median = statistics.median(e.epoch_time_s for e in result.epochs)
        table.add_row("train time", f"{result.total_train_time_s:.3f} s total, {median:.3f} s median epoch")
        table.add_row("samples/s", f"{statistics.median(e.samples_per_s for e in result.epochs):,.0f}")
    table.add_row("device", result.device)
    Console(width=120).print(table)


def activation_spec(text: str) -> tuple[str, str, dict]:
    """'tmaf:intervals=100,train_breakpoints=true' -> (the text, 'tmaf', {'intervals': 100, 'train_breakpoints': True})."""
    name, _, rest = text.partition(":")
    return text, name.strip(), parse_params([p for p in rest.split(",") if p.strip()], f"--activation {text!r}")


def bench_epoch(
    task: str = typer.Option("mnist", "--task"),
    model: str = typer.Option("mlp", "--model"),
    activation: Optional[list[str]] = typer.Option(None, "--activation", "-a", help="repeatable; first is the baseline; "
                                                   "NAME:key=value,... gives one its own parameters"),
    depth: Optional[int] = typer.Option(None), width: Optional[int] = typer.Option(None),
    act_param: Optional[list[str]] = typer.Option(None, "--act-param"),
    task_param: Optional[list[str]] = typer.Option(None, "--task-param"),
    model_param: Optional[list[str]] = typer.Option(None, "--model-param"),
    batch_size: int = typer.Option(64, "--batch-size", "-b"),
    repeats: int = typer.Option(3, help="epochs timed per activation; the median is shown"),
    threads: Optional[list[int]] = typer.Option(None, help="torch CPU threads; repeat it to time several counts"),
    warmup: int = typer.Option(1, "--warmup", help="untimed epochs per activation first"),
    under_load: int = typer.Option(0, "--under-load", help="run beside N busy processes started for the run"),
    device: str = typer.Option("cpu"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the machine's record and the rows) instead of a table."),
) -> None:
    """Time one training epoch per activation (median of --repeats, interleaved) and the ratio to the first."""
    from tmafbench.training.benchmark import bench_epochs

    rows = bench_epochs(task, model, [activation_spec(a) for a in activation or ["relu", "tmaf"]],
                        task_params=parse_params(task_param, "--task-param"),
                        model_params=model_params(depth, width, model_param),
                        act_params=parse_params(act_param, "--act-param"), batch_size=batch_size,
                        repeats=repeats, threads=threads, device=device, warmup=warmup, under_load=under_load)
    if as_json:
        from tmafbench.activations.benchmark import machine_record

        settings = {"task": task, "model": model, "task_params": parse_params(task_param, "--task-param"),
                    "model_params": model_params(depth, width, model_param), "act_params": parse_params(act_param, "--act-param"),
                    "batch_size": batch_size, "repeats": repeats, "warmup": warmup, "under_load": under_load, "device": device}
        typer.echo(json.dumps({"machine": machine_record(), "settings": settings, "rows": [r.to_dict() for r in rows]}, indent=2))
        return
    load = f", beside {under_load} busy processes" if under_load else ""
    print_bench(f"one epoch: {task} / {model}, batch {batch_size}{load}", rows)


def bench_step(
    task: str = typer.Option("cifar10", "--task"),
    model: str = typer.Option("resnet18-cifar", "--model"),
    activation: Optional[list[str]] = typer.Option(None, "--activation", "-a", help="repeatable; first is the baseline"),
    act_param: Optional[list[str]] = typer.Option(None, "--act-param"),
    model_param: Optional[list[str]] = typer.Option(None, "--model-param"),
    batch_size: int = typer.Option(128, "--batch-size", "-b"),
    repeats: int = typer.Option(5, help="steps timed per activation after one warm-up; the median is shown"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    device: str = typer.Option("cpu"),
) -> None:
    """Time one forward+backward+SGD step on a random batch per activation, and the ratio to the first."""
    from tmafbench.training.benchmark import bench_steps

    rows = bench_steps(task, model, activation or ["relu", "tmaf"], model_params=parse_params(model_param, "--model-param"),
                       act_params=parse_params(act_param, "--act-param"), batch_size=batch_size, repeats=repeats,
                       threads=threads, device=device)
    print_bench(f"one step: {task} / {model}, batch {batch_size}", rows)


def print_bench(title: str, rows: list) -> None:
    table = Table(title=title)
    for column in ("activation", "threads", "median s", "min s", "max s", "samples/s", "ratio", "params"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.activation, str(row.threads or "-"), f"{row.median_s:.4f}", f"{min(row.times_s):.4f}",
                      f"{max(row.times_s):.4f}", f"{row.samples_per_s:,.0f}", f"{row.ratio:.2f}x", f"{row.num_params:,}")
    Console(width=120).print(table)


def bench_pack(
    setting: Optional[list[str]] = typer.Option(None, "--setting", help="table-3-2 | sine-sum | mnist (repeatable; default all)."),
    activation: Optional[list[str]] = typer.Option(None, "--activation", "-a", help="repeatable (default: relu and tmaf)."),
    pack: int = typer.Option(16, "--pack", help="Cells per pack."),
    epochs: int = typer.Option(1, "--epochs", help="Epochs every cell trains."),
    processes: Optional[int] = typer.Option(None, "--processes", help="Worker processes, one thread each (default: one per core)."),
    vmap: bool = typer.Option(True, "--vmap/--no-vmap", help="Also time torch.func (vmap) ensembles of K."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (one process per GPU then: pass --processes)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Cells per hour: packs of K cells against one cell at a time and against vmap ensembles, on the same cores (MNIST needs its data)."""
    from tmafbench.training.pack_benchmark import bench_pack as run

    figures = run(setting or ["table-3-2", "sine-sum", "mnist"], activation or ["relu", "tmaf"], pack, epochs, processes,
                  device, vmap)
    if as_json:
        typer.echo(json.dumps([f.to_dict() for f in figures], indent=2))
        return
    table = Table(title=f"cells per hour on {figures[0].processes} process(es), one thread each, {epochs} epoch(s) a cell")
    for column in ("setting", "activation", "cells", "one at a time", f"packs of {pack}", "speed-up", f"vmap of {pack}",
                   "packed / vmap"):
        table.add_column(column, justify="left" if column in ("setting", "activation") else "right", overflow="fold")
    for f in figures:
        ensemble = (f"{f.vmap_per_hour:,.0f}", f"{f.packed_vs_vmap:.1f}x") if f.vmap_s else (f.vmap_error or "-", "-")
        table.add_row(f.setting, f.activation, str(f.cells), f"{f.alone_per_hour:,.0f}", f"{f.packed_per_hour:,.0f}",
                      f"{f.speedup:.1f}x", *ensemble)
    Console(width=140).print(table)


def bench_gpu(
    out: str = typer.Option("gpu-check.json", "--out", help="Where to write the JSON (rewritten after every section)."),
    device: str = typer.Option("cuda", "--device", help="cuda, or cpu for the CPU stand-in of every section that has one."),
    budget: float = typer.Option(480.0, "--budget", help="Seconds for the whole run; sections that do not fit are skipped."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes: checks the code paths in seconds (the tests use it)."),
    section: Optional[list[str]] = typer.Option(None, "--section", help="Run only these sections (repeatable)."),
) -> None:
    """Prove the GPU path: CUDA tests, kernel agreement, packed vs unpacked, bench activations and pack, a CIFAR-10 ResNet18 epoch, a 2-GPU study."""
    from pathlib import Path

    from tmafbench.training.gpu_benchmark import run_gpu_check

    report = run_gpu_check(Path(out), device=device, budget_s=budget, quick=quick, sections=section or None)
    for name, result in report["sections"].items():
        typer.echo(f"{name:18s} {result['status']}" + (f"  ({result['seconds']} s)" if "seconds" in result else ""))
    typer.echo(f"wrote {out} ({report['wall_s']} s)")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    try:
        from tmafbench.cli.bench import bench_app  # the `bench` sub-app, written by a colleague
    except ImportError:
        return
    bench_app.command("epoch")(bench_epoch)
    bench_app.command("step")(bench_step)
    bench_app.command("pack")(bench_pack)
    bench_app.command("gpu")(bench_gpu)
