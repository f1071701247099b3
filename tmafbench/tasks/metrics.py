"""Evaluation metrics. Inputs are whole evaluation sets: pred [N, K] or [N, 1], target [N]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def regression_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """rel_l2 = ||f - eta|| / ||f|| over the evaluation points, mse and max_abs.

    rel_l2 is our reading of the paper's "approximation error" (Table 3.1) and "error" (Table 3.2):
    the paper gives no formula for either, and a relative L2 error is the natural reading.
    """
    pred = pred.reshape(-1).double()
    target = target.reshape(-1).double()
    error = pred - target
    return {
        "rel_l2": float(error.norm() / target.norm().clamp_min(1e-300)),
        "mse": float(error.pow(2).mean()),
        "max_abs": float(error.abs().max()),
    }


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """accuracy in [0, 1] and the mean cross-entropy of the logits."""
    logits = logits.float()
    return {
        "accuracy": float((logits.argmax(dim=1) == target).float().mean()),
        "cross_entropy": float(F.cross_entropy(logits, target)),
    }
