"""What one trial produces. The results store persists exactly this."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["completed", "diverged", "failed", "interrupted"]


@dataclass
class EpochRecord:
    """One epoch: train loss, evaluation metrics and timings."""

    epoch: int  # 1-based
    train_loss: float
    metrics: dict[str, float]  # test metrics ("rel_l2", "accuracy", ...); "val_"-prefixed when validating
    epoch_time_s: float  # training only; evaluation timed apart
    eval_time_s: float
    samples_per_s: float
    lr: float


@dataclass
class TrialResult:
    """The outcome of `train_trial(config)`."""

    status: Status
    metric_name: str  # the task's primary metric, e.g. "rel_l2" or "accuracy"
    metric_direction: Literal["minimize", "maximize"]
    epochs: list[EpochRecord] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    total_train_time_s: float = 0.0
    num_params: int = 0
    num_act_params: int = 0
    device: str = "cpu"
    error: str | None = None
    # Small JSON-able arrays for the reports: "predictions" ({"x", "target", "prediction"} on a
    # fixed grid, 1-D tasks) and "activation_params" ({module_name: {param_name: nested list}}).
    artifacts: dict[str, Any] = field(default_factory=dict)

    @property
    def final_metric(self) -> float | None:
        return self.final_metrics.get(self.metric_name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
