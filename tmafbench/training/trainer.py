"""Fit one trial: `train_trial(config) -> TrialResult`.

Data stays in memory as tensors on the device; each epoch draws one randperm and slices batches
straight from it (no DataLoader). Evaluation runs under inference_mode in large batches and is
timed apart from training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from tmafbench import activations, models, tasks
from tmafbench.tasks.base import Task, TaskData
from tmafbench.training import artifacts
from tmafbench.core import EpochRecord, RunStatus, TrialConfig, TrialResult
from tmafbench.training.optim import build_optimizer
from tmafbench.training.schedules import build_scheduler
from tmafbench.training.seeding import seed_everything
from tmafbench.training.timing import Timer
from tmafbench.errors import InputError

EVAL_ELEMENTS = 1 << 22  # inputs per evaluation batch (4M floats: all of MNIST's test set in 6 batches)
STREAM_VAL = 11  # generator stream of the validation split
Pair = tuple[torch.Tensor, torch.Tensor]


def resolve_device(name: str) -> torch.device:
    """cpu, cuda, cuda:N or auto (cuda when available); ValueError when CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or auto")
    return device


@dataclass
class Setup:
    """Everything one trial's loop touches, built (and validated) before any training."""

    config: TrialConfig
    task: Task
    model: nn.Module
    device: torch.device
    train: Pair
    val: Pair | None
    test: Pair | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    order: torch.Generator  # data order and augmentation
    batch_size: int
    eval_batch: int


def build_setup(config: TrialConfig) -> Setup:
    """Task, data, model, optimiser and schedule for `config`; bad config raises ValueError here."""
    cfg = config.training
    device = resolve_device(cfg.device)
    task = tasks.create(config.task, **config.task_params)
    act_factory = activations.factory(config.activation, **config.act_params)
    data = task.load(config.seed)
    order = seed_everything(config.seed)  # after data: weight init does not depend on data loading
    model = models.create(config.model, activation=act_factory, task=task, **config.model_params)
    scale_init(model, cfg.init_scale)
    model.to(device)
    train, val = split_validation(data, cfg.val_fraction, config.seed)
    batch_size = min(cfg.batch_size or train[0].shape[0], train[0].shape[0])
    steps = cfg.epochs * math.ceil(train[0].shape[0] / batch_size)
    optimizer = build_optimizer(model, cfg)
    per_sample = max(1, math.prod(task.input_shape))
    return Setup(
        config=config, task=task, model=model, device=device,
        train=_to(train, device, task), val=_to(val, device, task) if val else None,
        test=_to((data.x_test, data.y_test), device, task) if cfg.evaluate_test else None,
        optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg.schedule, steps), order=order,
        batch_size=batch_size, eval_batch=max(batch_size, EVAL_ELEMENTS // per_sample),
    )


def _to(pair: Pair, device: torch.device, task: Task) -> Pair:
    return _staged(pair[0], device, task), pair[1].to(device)


# Staged sets of this process, by what they were staged from: the cells of one worker (a pack, or
# one cell after another) share the task's cached data, so staging MNIST (about 0.3 s a time on
# these CPUs) happens once. A few entries: a training and a test set, of one or two tasks.
_STAGED: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> (the source, kept alive; its staged set)
_STAGED_MAX = 4


def _staged(x: torch.Tensor, device: torch.device, task: Task) -> torch.Tensor:
    """task.stage(x on device), reused while x (the same tensor, unchanged) and the task's staging are the same.

    The entry keeps x alive, so no other tensor can take its id while it is cached.
    """
    key = (id(x), x._version, str(device), type(task), repr(task.stage_key()))
    entry = _STAGED.get(key)
    if entry is None:
        if len(_STAGED) >= _STAGED_MAX:
            _STAGED.pop(next(iter(_STAGED)))
        entry = _STAGED[key] = (x, task.stage(x.to(device)))
    return entry[1]


def scale_init(model: nn.Module, scale: float) -> None:
    """Multiply the default init of every Linear/Conv weight by `scale` (1.0: unchanged)."""
    if scale == 1.0:
        return
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                module.weight.mul_(scale)


def split_validation(data: TaskData, fraction: float, seed: int) -> tuple[Pair, Pair | None]:
    """Carve a seeded validation share off the training set (none when fraction is 0)."""
    x, y = data.x_train, data.y_train
    if fraction <= 0:
        return (x, y), None
    n_val = max(1, round(x.shape[0] * fraction))
    if n_val >= x.shape[0]:
        raise InputError(f"val_fraction={fraction} leaves no training samples out of {x.shape[0]}")
    index = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed * 1_000_003 + STREAM_VAL))
    return (x[index[n_val:]], y[index[n_val:]]), (x[index[:n_val]], y[index[:n_val]])


def train_epoch(setup: Setup) -> float:
    """One pass over the training set; returns the loss per sample over the epoch (may be NaN/inf).

    The gradient follows `loss_reduction` (the batch's mean, or its sum: the paper's eq. 1.2), but
    the returned value is always the mean over the epoch's samples of each sample's loss, so that
    runs with either reduction and any batch size report comparable numbers.
    """
    model, task, opt, cfg = setup.model, setup.task, setup.optimizer, setup.config.training
    x, y = setup.train
    n, bs = x.shape[0], setup.batch_size
    model.train()
    # One permutation per epoch from the trial's generator; full batch needs no shuffling.
    perm = torch.randperm(n, generator=setup.order).to(setup.device) if bs < n else None
    total = torch.zeros((), device=setup.device)
    for start in range(0, n, bs):
        index = perm[start:start + bs] if perm is not None else None
        xb, yb = (x[index], y[index]) if index is not None else (x, y)
        loss = task.loss(model(task.prepare(xb, train=True, generator=setup.order)), yb, cfg.loss_reduction)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        setup.scheduler.step()
        # The batch's summed loss; stays on the device: no sync per batch.
        total += loss.detach() * (1 if cfg.loss_reduction == "sum" else yb.shape[0])
    return float(total) / n


@torch.inference_mode()
def evaluate(setup: Setup, pair: Pair) -> dict[str, float]:
    """The task's metrics on a whole set, predicted in large batches."""
    model, task = setup.model, setup.task
    model.eval()
    x, y = pair
    preds = [model(task.prepare(x[i:i + setup.eval_batch])) for i in range(0, x.shape[0], setup.eval_batch)]
    return task.metrics(torch.cat(preds), y)


def evaluate_all(setup: Setup) -> dict[str, float]:
    """Test metrics (unless evaluate_test is off), "val_"-prefixed validation metrics and, with
    evaluate_train, "train_"-prefixed metrics on the whole training set (the weights at the epoch's
    end, evaluation mode: no augmentation)."""
    metrics = evaluate(setup, setup.test) if setup.test is not None else {}
    if setup.val is not None:
        metrics.update({f"val_{k}": v for k, v in evaluate(setup, setup.val).items()})
    if setup.config.training.evaluate_train:
        metrics.update({f"train_{k}": v for k, v in evaluate(setup, setup.train).items()})
    return metrics


def run_epoch(setup: Setup, epoch: int) -> EpochRecord:
    """Train one epoch, then evaluate (unless the loss diverged); both timed apart."""
    lr = setup.optimizer.param_groups[0]["lr"]
    with Timer(setup.device) as train_timer:
        loss = train_epoch(setup)
    metrics: dict[str, float] = {}
    eval_timer = Timer(setup.device)
    if math.isfinite(loss):
        with eval_timer:
            metrics = evaluate_all(setup)
    n = setup.train[0].shape[0]
    return EpochRecord(epoch=epoch, train_loss=loss, metrics=metrics, epoch_time_s=train_timer.seconds,
                       eval_time_s=eval_timer.seconds, samples_per_s=n / max(train_timer.seconds, 1e-12), lr=lr)


def collect_artifacts(setup: Setup) -> dict:
    """predictions (1-D tasks), activation_params and activation_curves, as the config asks."""
    cfg, out = setup.config.training, {}
    grid = setup.task.prediction_grid() if cfg.keep_predictions else None
    if grid is not None:
        setup.model.eval()
        out["predictions"] = artifacts.predictions(setup.model, grid, setup.device)
    if cfg.keep_activation_params and artifacts.activation_modules(setup.model):
        out["activation_params"] = artifacts.activation_params(setup.model)
        out["activation_curves"] = artifacts.activation_curves(setup.model, setup.device)
        breakpoints = artifacts.learned_breakpoints(setup.model)
        if breakpoints:
            out["breakpoints"] = breakpoints
    return out


def train_trial(config: TrialConfig, *, on_epoch: Callable[[EpochRecord], None] | None = None) -> TrialResult:
    """Train one network as `config` says and return its TrialResult.

    Bad configs raise ValueError before any training. A NaN/inf training loss ends the trial
    with status "diverged". `on_epoch(record)` is called after every epoch that did not diverge
    (progress displays, pruning); exceptions it raises (e.g. optuna.TrialPruned) propagate.
    """
    setup = build_setup(config)
    total, act = models.count_parameters(setup.model)
    result = TrialResult(status=RunStatus.COMPLETED, metric_name=setup.task.metric_name,
                         metric_direction=setup.task.metric_direction, num_params=total,
                         num_act_params=act, device=str(setup.device))
    for epoch in range(1, config.training.epochs + 1):
        record = run_epoch(setup, epoch)
        result.epochs.append(record)
        result.total_train_time_s += record.epoch_time_s
        if not math.isfinite(record.train_loss):
            result.status = RunStatus.DIVERGED
            result.error = f"training loss became {record.train_loss} in epoch {epoch}"
            break
        if on_epoch is not None:
            on_epoch(record)
    last = result.epochs[-1]
    result.final_metrics = {**last.metrics, "train_loss": last.train_loss}
    if result.status == RunStatus.COMPLETED:
        result.artifacts = collect_artifacts(setup)
    return result
