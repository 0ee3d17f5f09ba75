"""Moved to `factorportrait.training.config`; this module keeps the old import path working."""

from .training.config import (  # noqa: F401
    RESUMABLE_CHANGES,
    STAGES,
    TINY_PRESET,
    TrainConfig,
    TrainConfigError,
    load_train_config,
    parse_mixture,
    stage_defaults,
)
