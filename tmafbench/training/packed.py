"""Packed cells: train K small networks of one shape as one model, each as if it trained alone.

The paper's networks are tiny (one or two hidden layers of 10 to 50 neurons): an unpacked step is
almost all per-call overhead. K cells that share a task, a model shape, an activation kind and a
training protocol train here as one model:

- the K MLPs' linear layers become batched products over [K, ...] (`torch.baddbmm`);
- the K activation modules of a layer become one module over K x C features (every activation
  keeps its parameters per feature), with each cell's parameters copied into its slice. A banded
  TMAF couples neighbouring features, so b zero features separate the cells' slices: a zero input
  adds nothing to its neighbours, and the separators' outputs are dropped;
- the optimiser (sgd, adam, adamw) is written over the packed tensors with per-element learning
  rate and weight-decay maps, so each cell keeps its own lr, act_lr, breakpoint_lr, weight decay and
  momentum, and the schedule (constant, step-half, cosine) scales them step by step as torch's
  schedulers do.

Each cell keeps what defines it alone: its model is built by `build_setup` from its own seed
(weights, activation init, data, validation split, data-order generator), so its initial weights
and data order are the unpacked run's. Per step it draws its own batch order, computes its own
loss, clips its own gradient norm; a cell whose epoch loss turns NaN/inf is diverged and stops
updating while the others go on; a cell whose `on_epoch` raises (a pruned tuning trial) stops too.
After every epoch the packed weights are copied back into each cell's own model, which is evaluated
and, at the end, turned into artifacts by the unpacked trainer's own functions. So a packed run
gives each cell the metrics of its unpacked run up to floating-point summation order.

What does not pack trains unpacked, one cell after the other (`train_many`): other models than
`mlp`, activations with parameters shared by the layer, tasks whose training inputs are drawn at
random per batch (augmentation), and the onecycle schedule (which also cycles the momentum).

Timing: each cell's `epoch_time_s` is the packed epoch's wall time divided by the cells still
training in it, so epoch-time ratios between activations stay comparable with unpacked runs; the
pack size is recorded in the result (`pack_size`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from tmafbench import activations
from tmafbench.core import EpochRecord, OnEpoch, Outcome, RunStatus, TrialConfig, TrialResult
from tmafbench.tasks.base import Task
from tmafbench.training.optim import activation_group, group_settings
from tmafbench.training.schedules import schedule_factor
from tmafbench.training.timing import Timer
from tmafbench.training.trainer import Setup, build_setup, collect_artifacts, evaluate_all, train_trial

PACKABLE_MODELS = ("mlp",)
PACKABLE_SCHEDULES = ("constant", "step-half", "cosine")
# Training options each cell may set for itself; every other option must agree within a pack.
PER_CELL_TRAINING = ("lr", "act_lr", "breakpoint_lr", "weight_decay", "act_weight_decay", "momentum", "grad_clip", "init_scale")


def pack_key(config: dict[str, Any]) -> str | None:
    """Cells with equal keys can train as one packed model; None: this cell trains alone.

    Takes the stored config (a dict), so the scheduler can group cells without building anything.
    """
    training = config.get("training", {})
    if config.get("model") not in PACKABLE_MODELS or training.get("schedule", "constant") not in PACKABLE_SCHEDULES:
        return None
    if config.get("act_params", {}).get("share", "feature") != "feature":
        return None
    shared = {k: v for k, v in config.items() if k not in ("seed", "training")}
    shared["training"] = {k: v for k, v in training.items() if k not in PER_CELL_TRAINING}
    return json.dumps(shared, sort_keys=True, default=str)


# --- the packed model -------------------------------------------------------------------------------


@dataclass
class PackedParam:
    """A packed tensor and where each cell's values sit in it."""

    tensor: nn.Parameter
    cell_dim: int  # the dimension that indexes cells (0 for linear layers; the feature dim for activations)
    slot: int  # per cell along cell_dim: 1 for linear layers; C + separators for activations
    used: int  # of the slot, the part that is the cell's own (the rest: separators)
    group: str  # the optimiser group: "weights", "activations" or "breakpoints" (optim.group_settings)

    def cells(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """`t` (default: the tensor) as a [K, ...] view, one row of values per cell (separators included)."""
        t = self.tensor if t is None else t
        if self.slot == 1:
            return t.movedim(self.cell_dim, 0)
        return t.unflatten(self.cell_dim, (-1, self.slot)).movedim(self.cell_dim, 0)

    def cell_slice(self, k: int) -> torch.Tensor:
        """Cell k's own values, in the shape of its unpacked parameter."""
        if self.slot == 1:
            return self.tensor.select(self.cell_dim, k)
        return self.tensor.narrow(self.cell_dim, k * self.slot, self.used)


def _feature_dims(factory: Callable[[int], nn.Module], features: int) -> dict[str, int | None]:
    """For each parameter and buffer of the activation: the dimension that grows with the feature
    count (None: it does not depend on it). Raises ValueError when a tensor grows in no single way."""
    with torch.random.fork_rng():  # probing must not move the cells' random streams
        small = dict(_tensors(factory(features)))
        large = dict(_tensors(factory(features + 1)))
    dims: dict[str, int | None] = {}
    for name, t in small.items():
        grown = [d for d, (a, b) in enumerate(zip(t.shape, large[name].shape)) if a != b]
        if not grown and t.shape == large[name].shape:
            dims[name] = None
        elif len(grown) == 1 and t.shape[grown[0]] == features and large[name].shape[grown[0]] == features + 1:
            dims[name] = grown[0]
        else:
            raise ValueError(f"activation tensor {name!r} does not grow along one feature dimension")
    return dims


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))


class PackedActivation(nn.Module):
    """One activation module over K cells' features of one layer, separated by `bandwidth` zeros."""

    def __init__(self, modules: list[nn.Module], factory: Callable[[int], nn.Module]):
        super().__init__()
        cells, features = len(modules), modules[0].num_features
        self.cells, self.features = cells, features
        self.separators = int(getattr(modules[0], "bandwidth", 0))  # banded TMAF couples b neighbours
        self.slot = features + self.separators
        dims = _feature_dims(factory, features)
        with torch.random.fork_rng():
            self.inner = factory(cells * self.slot)
        self.packed: dict[str, PackedParam] = {}
        own = [dict(_tensors(m)) for m in modules]
        for name, target in _tensors(self.inner):
            dim = dims[name]
            with torch.no_grad():
                if dim is None:  # one value for the layer: the same in every cell (checked), kept as is
                    if any(not torch.equal(o[name], own[0][name]) for o in own):
                        raise ValueError(f"activation tensor {name!r} differs between cells but is not per feature")
                    target.copy_(own[0][name])
                    continue
                target.zero_()  # separators: zero values, zero inputs
                for k, o in enumerate(own):
                    target.narrow(dim, k * self.slot, features).copy_(o[name])
            if isinstance(target, nn.Parameter):
                self.packed[name] = PackedParam(target, dim, self.slot, features, activation_group(name))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [K, B, C] -> [K, B, C], each cell through its own slice of the activation."""
        k, b, c = h.shape
        if self.separators:
            h = F.pad(h, (0, self.separators))
        flat = h.transpose(0, 1).reshape(b, k * self.slot)  # [B, K*(C+s)]: features on dim 1
        out = self.inner(flat).view(b, k, self.slot).transpose(0, 1)
        return out[..., :c] if self.separators else out

    def write_back(self, modules: list[nn.Module]) -> None:
        """Copy each cell's slice into its own activation module."""
        with torch.no_grad():
            for name, p in self.packed.items():
                for k, m in enumerate(modules):
                    getattr(m, name).copy_(p.cell_slice(k))
            for name, buf in self.inner.named_buffers(recurse=False):
                dim = _dim_of(buf, modules[0], name, self.slot)
                for k, m in enumerate(modules):
                    own = getattr(m, name)
                    own.copy_(buf if dim is None else buf.narrow(dim, k * self.slot, own.shape[dim]))


def _dim_of(packed: torch.Tensor, module: nn.Module, name: str, slot: int) -> int | None:
    own = getattr(module, name)
    grown = [d for d, (a, b) in enumerate(zip(own.shape, packed.shape)) if a != b]
    return grown[0] if grown else None


class PackedMLP(nn.Module):
    """K MLPs of one shape: x [K, B, in] -> [K, B, out], layer by layer as the cells' own MLPs."""

    def __init__(self, models: list[nn.Module], factory: Callable[[int], nn.Module]):
        super().__init__()
        bodies = [list(m.body) for m in models]
        self.layers = nn.ModuleList()
        self.linears: list[tuple[nn.Parameter, nn.Parameter]] = []
        self.acts: list[PackedActivation] = []
        for i, first in enumerate(bodies[0]):
            column = [body[i] for body in bodies]
            if isinstance(first, nn.Linear):
                weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in column]))  # [K, in, out]
                bias = nn.Parameter(torch.stack([m.bias.detach().unsqueeze(0) for m in column]))  # [K, 1, out]
                self.register_parameter(f"weight{i}", weight)
                self.register_parameter(f"bias{i}", bias)
                self.linears.append((weight, bias))
                self.layers.append(nn.Identity())
            else:
                act = PackedActivation(column, factory)
                self.acts.append(act)
                self.layers.append(act)
        self.kinds = [isinstance(b, nn.Linear) for b in bodies[0]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(2)  # [K, B, *input_shape] -> [K, B, in]
        linear = iter(self.linears)
        for is_linear, layer in zip(self.kinds, self.layers):
            if is_linear:
                weight, bias = next(linear)
                h = torch.baddbmm(bias, h, weight)
            else:
                h = layer(h)
        return h

    def packed_params(self) -> list[PackedParam]:
        out = [PackedParam(t, 0, 1, 1, "weights") for pair in self.linears for t in pair]
        return out + [p for act in self.acts for p in act.packed.values()]

    def write_back(self, models: list[nn.Module]) -> None:
        """Copy each cell's weights into its own MLP (for its evaluation and artifacts)."""
        bodies = [list(m.body) for m in models]
        linear, act = iter(self.linears), iter(self.acts)
        with torch.no_grad():
            for i, is_linear in enumerate(self.kinds):
                column = [body[i] for body in bodies]
                if is_linear:
                    weight, bias = next(linear)
                    for k, m in enumerate(column):
                        m.weight.copy_(weight[k].t())
                        m.bias.copy_(bias[k, 0])
                else:
                    next(act).write_back(column)


# --- the optimiser ---------------------------------------------------------------------------------


class PackedOptimizer:
    """sgd / adam / adamw over packed tensors, each element with its own cell's hyperparameters.

    The same formulas as torch.optim's (no amsgrad, no nesterov, no dampening; Adam's betas
    (0.9, 0.999), eps 1e-8): only the order of floating-point operations differs. Multi-tensor
    (`torch._foreach_*`) operations keep a step at a few calls whatever the number of tensors.
    """

    BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

    def __init__(self, params: list[PackedParam], setups: list[Setup], kind: str):
        self.params, self.kind = params, kind
        self.tensors = [p.tensor for p in params]
        self.step_count = 0  # optimiser steps taken (the schedule's clock)
        self.steps = [0] * len(self.tensors)  # each tensor's own step count, as torch.optim keeps
        maps = [[_cell_map(p, values) for values in zip(*(_hyper(s.config, p.group) for s in setups))]
                for p in params]
        self.lr, self.wd, self.momentum = (list(m) for m in zip(*maps))
        self.decay = any(bool(w.any()) for w in self.wd)
        self.first = [torch.zeros_like(t) for t in self.tensors]  # sgd: momentum buffer; adam: m
        self.second = [torch.zeros_like(t) for t in self.tensors]  # adam: v
        self.active_lr = list(self.lr)

    def set_active(self, active: list[bool]) -> None:
        """Freeze the cells that stopped (diverged, pruned): their learning rate becomes 0."""
        self.active_lr = [lr * _cell_map(p, active) for p, lr in zip(self.params, self.lr)]

    @torch.no_grad()
    def step(self, factor: float) -> None:
        """One update of every active cell; `factor` is the schedule's multiplier of the base lr.

        As torch.optim does, a tensor without a gradient (e.g. PWLU's values, frozen while it
        gathers its range statistics) is left alone, state included, and Adam's bias correction
        counts each tensor's own steps.
        """
        self.step_count += 1
        live = [i for i, t in enumerate(self.tensors) if t.grad is not None]
        if not live:
            return
        for i in live:
            self.steps[i] += 1
        params, grads = [self.tensors[i] for i in live], [self.tensors[i].grad for i in live]
        first, second = [self.first[i] for i in live], [self.second[i] for i in live]
        lr = torch._foreach_mul([self.active_lr[i] for i in live], factor)
        wd = [self.wd[i] for i in live]
        if self.kind == "sgd":
            if self.decay:
                grads = torch._foreach_add(grads, torch._foreach_mul(wd, params))
            # A buffer is zero until its tensor's first step, so momentum * 0 + grad is torch's
            # first-step copy of the gradient, bit for bit.
            torch._foreach_mul_(first, [self.momentum[i] for i in live])
            torch._foreach_add_(first, grads)
            torch._foreach_sub_(params, torch._foreach_mul(first, lr))
            return
        if self.decay and self.kind == "adamw":
            torch._foreach_sub_(params, torch._foreach_mul(torch._foreach_mul(lr, wd), params))
        elif self.decay:
            grads = torch._foreach_add(grads, torch._foreach_mul(wd, params))
        steps = [self.steps[i] for i in live]
        torch._foreach_lerp_(first, grads, 1 - self.BETA1)
        torch._foreach_mul_(second, self.BETA2)
        torch._foreach_addcmul_(second, grads, grads, 1 - self.BETA2)
        denom = torch._foreach_sqrt(second)
        torch._foreach_div_(denom, [math.sqrt(1 - self.BETA2**t) for t in steps])
        torch._foreach_add_(denom, self.EPS)
        update = torch._foreach_div(first, denom)
        torch._foreach_mul_(update, lr)
        torch._foreach_mul_(update, [1 / (1 - self.BETA1**t) for t in steps])
        torch._foreach_sub_(params, update)

    def zero_grad(self) -> None:
        for t in self.tensors:
            t.grad = None


def _hyper(config: TrialConfig, group: str) -> tuple[float, float, float]:
    lr, wd = group_settings(config.training, group)
    return float(lr), float(wd), float(config.training.momentum)


def _cell_map(p: PackedParam, values: Any) -> torch.Tensor:
    """A tensor of p's shape holding each cell's value on its elements (separators too: they get no
    gradient, so they never move)."""
    out = torch.zeros_like(p.tensor, requires_grad=False)
    cells = p.cells(out)
    for k, value in enumerate(values):
        cells[k].fill_(float(value))
    return out


def clip_per_cell(params: list[PackedParam], max_norms: list[float | None]) -> None:
    """torch's clip_grad_norm_ for each cell on its own gradients (cells without a limit untouched)."""
    limits = [n if n else math.inf for n in max_norms]
    if all(math.isinf(n) for n in limits):
        return
    squares = sum(p.cells(p.tensor.grad).flatten(1).pow(2).sum(1) for p in params if p.tensor.grad is not None)
    total = squares.sqrt()  # [K]
    coef = (torch.tensor(limits, dtype=total.dtype) / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.tensor.grad is not None:
            grad = p.cells(p.tensor.grad)
            grad.mul_(coef.view(-1, *([1] * (grad.dim() - 1))))


# --- training ------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One cell of a pack while it trains."""

    setup: Setup
    result: TrialResult
    on_epoch: OnEpoch
    outcome: BaseException | None = None  # what stopped it early (a pruned trial), if anything
    active: bool = True


def train_many(configs: list[TrialConfig], on_epochs: list[OnEpoch] | None = None) -> list[Outcome]:
    """Train every config; those that pack train as one model. Returns each cell's TrialResult, or
    the exception that ended it (a bad config, a pruned trial), in the order given."""
    on_epochs = on_epochs or [None] * len(configs)
    outcomes: list[Outcome | None] = [None] * len(configs)
    for members in pack_groups(configs):
        packed = train_packed([configs[i] for i in members], [on_epochs[i] for i in members]) \
            if len(members) > 1 else None
        for j, i in enumerate(members):
            outcomes[i] = packed[j] if packed is not None else _alone(configs[i], on_epochs[i])
    return outcomes  # type: ignore[return-value]


def pack_groups(configs: list[TrialConfig]) -> list[list[int]]:
    """The indices of `configs` that `train_many` trains as one model, group by group, in order."""
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        key = pack_key(config.to_dict())
        groups.setdefault(key if key is not None else f"alone-{i}", []).append(i)
    return list(groups.values())


def record_packs(configs: list[TrialConfig], outcomes: list[Any], names: list[str]) -> None:
    """Add to each TrialResult in `outcomes` its artifact "pack": {"size": cells trained as one model,
    "cells": the names (cell hashes) of those cells in pack order, "position": its index there}.

    `outcomes` come from `train_many(configs)` or a stand-in that trains one by one (pack_size 1).
    Tuning slots are grouped by their base config: a pack that their sampled settings split (a
    sampled batch size) records its size with "cells" null.
    """
    for members in pack_groups(configs):
        for i in members:
            out = outcomes[i]
            if not isinstance(out, TrialResult):
                continue
            together = members if out.pack_size > 1 else [i]
            known = len(together) == out.pack_size
            out.artifacts = {**(out.artifacts or {}), "pack": {
                "size": out.pack_size, "cells": [names[m] for m in together] if known else None,
                "position": together.index(i) if known else None}}


def _alone(config: TrialConfig, on_epoch: OnEpoch) -> Outcome:
    try:
        return train_trial(config, on_epoch=on_epoch)
    except Exception as exc:  # noqa: BLE001 - the caller decides what a failed cell means
        return exc


def train_packed(configs: list[TrialConfig], on_epochs: list[OnEpoch]) -> list[Outcome]:
    """Train K compatible configs (equal `pack_key`) as one packed model; see the module docstring.

    Falls back to training them one by one when their activation or task cannot pack.
    """
    setups = [build_setup(c) for c in configs]
    task = setups[0].task
    factory = activations.factory(configs[0].activation, **configs[0].act_params)
    try:
        if getattr(task, "random_prepare", False):
            raise ValueError("the task draws random training inputs per batch")
        model = PackedMLP([s.model for s in setups], factory).to(setups[0].device)
    except ValueError:  # an activation that keeps one value per layer, augmentation, ...
        return [_alone(c, f) for c, f in zip(configs, on_epochs)]
    return _PackedRun(setups, on_epochs, model).run()


class _PackedRun:
    """The epochs of one pack: train packed, then evaluate and report each cell on its own."""

    def __init__(self, setups: list[Setup], on_epochs: list[OnEpoch], model: PackedMLP):
        self.setups, self.model = setups, model
        self.cfg = setups[0].config.training
        self.task: Task = setups[0].task
        self.device = setups[0].device
        self.cells = [Cell(s, _empty_result(s, len(setups)), f) for s, f in zip(setups, on_epochs)]
        self.params = model.packed_params()
        self.optimizer = PackedOptimizer(self.params, setups, self.cfg.optimizer)
        n = setups[0].train[0].shape[0]
        self.n, self.batch = n, setups[0].batch_size
        self.total_steps = self.cfg.epochs * math.ceil(n / self.batch)
        self.x, self.y, self.shared = _stack_data([s.train for s in setups])
        if not self.cfg.evaluate_train:  # else each cell's own set is evaluated after every epoch
            for s in setups:
                s.train = None  # type: ignore[assignment]  # the packed copy is the one used now

    def run(self) -> list[Outcome]:
        for epoch in range(1, self.cfg.epochs + 1):
            if not any(c.active for c in self.cells):
                break
            self._epoch(epoch)
        self.model.write_back([s.model for s in self.setups])
        return [self._finish(c) for c in self.cells]

    def _epoch(self, epoch: int) -> None:
        factor = schedule_factor(self.cfg.schedule, self.optimizer.step_count, self.total_steps)
        lr_before = [c.setup.config.training.lr * factor for c in self.cells]
        active = [c.active for c in self.cells]
        self.optimizer.set_active(active)
        with Timer(self.device) as timer:
            losses = self._train_epoch(torch.tensor(active))
        self.model.write_back([s.model for s in self.setups])
        per_cell_s = timer.seconds / max(1, sum(active))
        for k, cell in enumerate(self.cells):
            if active[k]:
                self._report(cell, epoch, float(losses[k]), per_cell_s, lr_before[k])

    def _train_epoch(self, active: torch.Tensor) -> torch.Tensor:
        """One pass over every active cell's training set; returns each cell's mean loss [K]."""
        k_cells, n, bs = len(self.cells), self.n, self.batch
        self.model.train()
        perms = torch.stack([torch.randperm(n, generator=c.setup.order) if bs < n else torch.arange(n)
                             for c in self.cells]).to(self.device)  # [K, n]: each cell's own order
        total = torch.zeros(k_cells, device=self.device)
        weights = active.to(self.device, torch.float32)
        clip = [c.setup.config.training.grad_clip for c in self.cells]
        for start in range(0, n, bs):
            index = perms[:, start:start + bs]  # [K, B]
            xb, yb = _gather(self.x, self.y, index, self.shared)
            pred = self.model(self.task.prepare(xb.flatten(0, 1), train=True).unflatten(0, index.shape))
            loss = self.task.loss(pred, yb, self.cfg.loss_reduction)  # [K]: each cell's loss as alone
            self.optimizer.zero_grad()
            (loss * weights).sum().backward()
            clip_per_cell(self.params, clip)
            self.optimizer.step(schedule_factor(self.cfg.schedule, self.optimizer.step_count, self.total_steps))
            total += loss.detach() * (1 if self.cfg.loss_reduction == "sum" else index.shape[1])  # the batch's sum
        return (total / n).cpu()

    def _report(self, cell: Cell, epoch: int, loss: float, seconds: float, lr: float) -> None:
        """The cell's epoch as the unpacked trainer records it: evaluate, check divergence, call on_epoch."""
        metrics: dict[str, float] = {}
        eval_timer = Timer(self.device)
        if math.isfinite(loss):
            with eval_timer:
                metrics = evaluate_all(cell.setup)
        record = EpochRecord(epoch=epoch, train_loss=loss, metrics=metrics, epoch_time_s=seconds,
                             eval_time_s=eval_timer.seconds, samples_per_s=self.n / max(seconds, 1e-12), lr=lr)
        cell.result.epochs.append(record)
        cell.result.total_train_time_s += seconds
        if not math.isfinite(loss):
            cell.result.status = RunStatus.DIVERGED
            cell.result.error = f"training loss became {loss} in epoch {epoch}"
            cell.active = False
            return
        if cell.on_epoch is not None:
            try:
                cell.on_epoch(record)
            except Exception as exc:  # noqa: BLE001 - e.g. optuna.TrialPruned: this cell stops, the pack goes on
                cell.outcome, cell.active = exc, False

    def _finish(self, cell: Cell) -> Outcome:
        if cell.outcome is not None:
            return cell.outcome
        result = cell.result
        last = result.epochs[-1]
        result.final_metrics = {**last.metrics, "train_loss": last.train_loss}
        if result.status == RunStatus.COMPLETED:
            result.artifacts = collect_artifacts(cell.setup)
        return result


def _empty_result(setup: Setup, pack_size: int) -> TrialResult:
    from tmafbench import models

    total, act = models.count_parameters(setup.model)
    return TrialResult(status=RunStatus.COMPLETED, metric_name=setup.task.metric_name,
                       metric_direction=setup.task.metric_direction, num_params=total, num_act_params=act,
                       device=str(setup.device), pack_size=pack_size)


def _stack_data(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The cells' training sets as one tensor: shared when every cell has the same set (one copy),
    else stacked [K, n, ...]."""
    x0, y0 = pairs[0]
    if all((x is x0 or torch.equal(x, x0)) and (y is y0 or torch.equal(y, y0)) for x, y in pairs[1:]):
        return x0, y0, True
    return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs]), False


def _gather(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cell's batch: x [K, B, ...], y [K, B] for index [K, B]."""
    if shared:
        return x[index], y[index]
    rows = torch.arange(index.shape[0], device=index.device).unsqueeze(1)
    return x[rows, index], y[rows, index]

