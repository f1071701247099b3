"""Training: `train_trial(config) -> TrialResult`, configs, results, schedules, seeding, timing."""

from tmafbench.training.config import TrainingConfig, TrialConfig
from tmafbench.training.result import EpochRecord, TrialResult
from tmafbench.training.seeding import seed_everything
from tmafbench.training.trainer import train_trial

__all__ = ["TrainingConfig", "TrialConfig", "EpochRecord", "TrialResult", "seed_everything", "train_trial"]
