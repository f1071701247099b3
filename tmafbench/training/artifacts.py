"""Small JSON-able arrays for the reports (names and shapes per tmafbench/store/schema.py)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tmafbench.activations.base import Activation

CURVE_RANGE = (-6.0, 6.0)
CURVE_POINTS = 241  # step 0.05: resolves unit-interval grids and h = 0.1 grids
CURVE_FEATURES = 8


def activation_modules(model: nn.Module) -> list[tuple[str, Activation]]:
    """Activation modules that carry parameters or buffers (ReLU has none: nothing to store)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, Activation) and (any(True for _ in m.parameters()) or any(True for _ in m.buffers()))]


def activation_params(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module_name: {param_or_buffer_name: nested list}} of every activation module."""
    return {
        name: {key: value.detach().float().cpu().tolist()
               for key, value in list(module.named_parameters()) + list(module.named_buffers())}
        for name, module in activation_modules(model)
    }


@torch.inference_mode()
def learned_breakpoints(model: nn.Module) -> dict[str, Any]:
    """{"modules": {name: {"initial": [s_1..s_m], "learned": [[s_1..s_m] per feature, first <= 8]}}}
    for every activation module that trains its breakpoints (empty otherwise)."""
    modules = {}
    for name, module in activation_modules(model):
        if getattr(module, "train_breakpoints", False):
            learned = module.breakpoints()[:CURVE_FEATURES]  # [Cb, m], Cb = 1 when shared
            modules[name] = {"initial": list(module.grid.breakpoints), "learned": learned.double().cpu().tolist()}
    return {"modules": modules} if modules else {}


@torch.inference_mode()
def activation_curves(model: nn.Module, device: torch.device) -> dict[str, Any]:
    """{"s": [...], "modules": {name: [[y(s) for s] per feature, first <= 8 features]}}.

    Each module is fed s on every feature at once: input [S, C], output [S, C].
    """
    s = torch.linspace(*CURVE_RANGE, CURVE_POINTS, device=device)
    modules = {}
    for name, module in activation_modules(model):
        x = s[:, None].expand(-1, module.num_features).contiguous()  # [S, C]
        y = module(x)[:, :CURVE_FEATURES]  # [S, <=8]
        modules[name] = y.t().float().cpu().tolist()
    return {"s": s.cpu().tolist(), "modules": modules}


@torch.inference_mode()
def predictions(model: nn.Module, grid: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """{"x", "target", "prediction"} on a 1-D task's fixed grid (x [G, 1], target [G])."""
    x, target = grid
    pred = model(x.to(device)).reshape(-1)
    return {"x": x.reshape(-1).tolist(), "target": target.tolist(), "prediction": pred.float().cpu().tolist()}
