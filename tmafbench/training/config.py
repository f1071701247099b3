"""Typed trial configuration: the stored record alone must rebuild the model (DESIGN.md section 1)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["constant", "step-half", "cosine", "onecycle"]


@dataclass(frozen=True)
class TrainingConfig:
    """How one network is trained. Defaults live here, on the class."""

    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    act_lr: float | None = None  # activation parameters' own lr; None = lr
    act_weight_decay: float | None = None  # None = weight_decay
    schedule: Schedule = "constant"
    epochs: int = 10
    batch_size: int | None = 128  # None = full batch
    grad_clip: float | None = None
    device: str = "auto"  # cpu, cuda, cuda:N or auto
    init_scale: float = 1.0  # multiplies the default weight init of Linear/Conv layers
    val_fraction: float = 0.0  # share of the training set held out for validation (tuning)
    evaluate_test: bool = True  # False while tuning: the test set is never touched
    keep_predictions: bool = True  # 1-D tasks: store predictions on a fixed grid
    keep_activation_params: bool = True  # store learned activation parameters

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None (full batch), got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of: sgd, adam, adamw")
        if self.schedule not in ("constant", "step-half", "cosine", "onecycle"):
            raise ValueError(
                f"unknown schedule {self.schedule!r}; choose one of: constant, step-half, cosine, onecycle"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; valid: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs: task, model, activation, training and the seed."""

    task: str
    model: str
    activation: str
    seed: int = 0
    task_params: dict[str, Any] = field(default_factory=dict)
    model_params: dict[str, Any] = field(default_factory=dict)
    act_params: dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialConfig":
        data = dict(data)
        training = data.pop("training", {}) or {}
        if isinstance(training, dict):
            training = TrainingConfig.from_dict(training)
        return cls(training=training, **data)

    def canonical_json(self, exclude: tuple[str, ...] = ()) -> str:
        data = {k: v for k, v in self.to_dict().items() if k not in exclude}
        return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)

    def config_hash(self) -> str:
        """Stable 16-hex-digit hash of the whole config (seed included)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def group_hash(self) -> str:
        """Hash of everything but the seed: trials in one group differ only by seed."""
        return hashlib.sha256(self.canonical_json(exclude=("seed",)).encode()).hexdigest()[:16]
