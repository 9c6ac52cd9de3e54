"""The learning-rate schedule: linear warm-up, then steps."""
from __future__ import annotations

from ..config import TrainConfig


def lr_factor(step: int, train: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at iteration ``step``.

    Linear warm-up from ``warmup_factor`` over ``warmup_iters`` iterations, then
    x ``lr_gamma`` at each entry of ``lr_steps`` (in iterations, or in epochs of
    ``steps_per_epoch`` iterations when ``lr_steps_unit == "epoch"``).
    """
    warm = 1.0
    if step < train.warmup_iters:
        a = step / train.warmup_iters
        warm = train.warmup_factor * (1 - a) + a
    scale = steps_per_epoch if train.lr_steps_unit == "epoch" else 1
    passed = sum(step >= s * scale for s in train.lr_steps)
    return warm * train.lr_gamma**passed
