"""Learning-rate schedules as plain `torch.optim.lr_scheduler.LambdaLR` objects.

The factors follow the diffusers / transformers convention: lr = base_lr * step / warmup_steps during warmup
(so step 0 runs at lr 0), where `step` counts `scheduler.step()` calls. The lambdas are `functools.partial`s of
module-level functions: the scheduler pickles, and its state_dict holds only counters, so the schedule's
parameters always come from the code that builds it (a resumed run may change total_steps).
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup_factor(step: int, warmup_steps: int) -> float:
    return step / warmup_steps if step < warmup_steps else 1.0


def _constant_factor(step: int, *, warmup_steps: int) -> float:
    return _warmup_factor(step, warmup_steps)


def _cosine_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    if step < warmup_steps:
        return _warmup_factor(step, warmup_steps)
    # Clamped: after total_steps the rate stays at min_ratio instead of climbing back up the cosine.
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant(optimizer: Optimizer, warmup_steps: int) -> LambdaLR:
    """Linear warmup from 0 over `warmup_steps` steps, then the base learning rate."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_constant: warmup_steps must be >= 0, got {warmup_steps}")
    return LambdaLR(optimizer, partial(_constant_factor, warmup_steps=warmup_steps))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> LambdaLR:
    """Linear warmup, then a half cosine from base_lr down to min_ratio * base_lr at total_steps (held after)."""
    if warmup_steps < 0 or total_steps < warmup_steps:
        raise ValueError(
            f"warmup_cosine: need 0 <= warmup_steps <= total_steps, got warmup_steps={warmup_steps}, "
            f"total_steps={total_steps}"
        )
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"warmup_cosine: min_ratio must be in [0, 1], got {min_ratio}")
    return LambdaLR(
        optimizer,
        partial(_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=float(min_ratio)),
    )
