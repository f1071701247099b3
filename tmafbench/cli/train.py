"""`tmafbench train`: train one network and print its result."""

from __future__ import annotations

import json
import statistics
from typing import Any, Optional, get_args

import typer
from rich.console import Console
from rich.table import Table

from tmafbench.cli.common import model_params, parse_params
from tmafbench.core import TrainingConfig, TrialConfig, TrialResult


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


def _default(option: str) -> Any:
    """TrainingConfig's default for `option`: the class is the one place the defaults live."""
    return TrainingConfig.model_fields[option].default


def _choices(option: str) -> str:
    """'sgd, adam or adamw': the values a `Literal` option of TrainingConfig takes."""
    values = [str(v) for v in get_args(TrainingConfig.model_fields[option].annotation)]
    return ", ".join(values[:-1]) + " or " + values[-1]


def train(
    task: str = typer.Option(..., "--task", help="task name (see `tmafbench tasks`)"),
    model: str = typer.Option("mlp", "--model", help="model name (see `tmafbench models`)"),
    activation: str = typer.Option("relu", "--activation", "-a", help="activation name (see `tmafbench activations`)"),
    depth: Optional[int] = typer.Option(None, help="mlp: hidden layers (shorthand for --model-param depth=)"),
    width: Optional[int] = typer.Option(None, help="hidden width / channels (shorthand for --model-param width=)"),
    act_param: Optional[list[str]] = typer.Option(None, "--act-param", help="activation parameter k=v (repeatable)"),
    task_param: Optional[list[str]] = typer.Option(None, "--task-param", help="task parameter k=v (repeatable)"),
    model_param: Optional[list[str]] = typer.Option(None, "--model-param", help="model parameter k=v (repeatable)"),
    epochs: int = typer.Option(_default("epochs"), help="training epochs"),
    seed: int = typer.Option(TrialConfig.model_fields["seed"].default, help="trial seed: weight init, data order and sampled sets"),
    lr: float = typer.Option(_default("lr"), help="learning rate"),
    optimizer: str = typer.Option(_default("optimizer"), help=_choices("optimizer")),
    momentum: float = typer.Option(_default("momentum"), help="sgd momentum"),
    weight_decay: float = typer.Option(_default("weight_decay"), help="weight decay"),
    act_lr: Optional[float] = typer.Option(_default("act_lr"), help="learning rate of the activation parameters (default: --lr)"),
    act_weight_decay: Optional[float] = typer.Option(_default("act_weight_decay"), help="weight decay of the activation parameters"),
    breakpoint_lr: Optional[float] = typer.Option(_default("breakpoint_lr"), help=(
        "learning rate of trainable breakpoints (--act-param train_breakpoints=true; default: the activation lr)")),
    schedule: str = typer.Option(_default("schedule"), help=_choices("schedule")),
    batch_size: str = typer.Option(str(_default("batch_size")), "--batch-size", "-b", help="batch size; 0 or 'full' for full batch"),
    grad_clip: Optional[float] = typer.Option(_default("grad_clip"), help="clip the gradient norm to this value"),
    init_scale: float = typer.Option(_default("init_scale"), help="multiply the default Linear/Conv init by this"),
    loss_reduction: str = typer.Option(_default("loss_reduction"), "--loss-reduction",
                                       help=f"{_choices('loss_reduction')} over the batch; sum is the paper's eq. 1.2"),
    evaluate_train: bool = typer.Option(_default("evaluate_train"), "--evaluate-train",
                                        help="also measure the task's metrics on the training set (train_rel_l2, ...)"),
    device: str = typer.Option(_default("device"), help="cpu, cuda, cuda:N or auto"),
    as_json: bool = typer.Option(False, "--json", help="print the whole result as JSON on stdout"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a per-epoch progress bar"),
) -> None:
    """Train one network and print its final metrics."""
    from tmafbench.training import train_trial

    config = TrialConfig.build(dict(
        task=task, model=model, activation=activation, seed=seed,
        task_params=parse_params(task_param, "--task-param"),
        model_params=model_params(depth, width, model_param),
        act_params=parse_params(act_param, "--act-param"),
        training=TrainingConfig.build(dict(
            optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, act_lr=act_lr,
            act_weight_decay=act_weight_decay, breakpoint_lr=breakpoint_lr, schedule=schedule, epochs=epochs,
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


def register(app: typer.Typer) -> None:
    app.command("train")(train)
