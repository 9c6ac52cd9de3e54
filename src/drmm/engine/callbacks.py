"""Callbacks of the Trainer: the work around the loop that a config turns on (issue 24).

A :class:`Callback` gets ``on_step_end`` after each iteration and ``on_validation``
after each validation during training (rank 0; returning True stops the run, with
``stop_reason`` logged); ``state_dict`` entries go into every checkpoint (top-level
keys) and come back through ``load_state_dict`` on ``--resume``, so a resumed run
continues exactly. :func:`build_callbacks` makes the list from ``cfg.train``.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("drmm.train")


class Callback:
    """Hooks called by :class:`drmm.engine.train.Trainer`; each does nothing by default."""

    stop_reason: str = ""  # why on_validation asked to stop (the log's "stop" row)

    def on_step_end(self, trainer: Any, row: dict[str, float] | None) -> None:
        """After each iteration; ``row`` is None where the optimizer did not step (non-finite or fp16 overflow)."""

    def on_validation(self, trainer: Any, metrics: dict[str, float]) -> bool:
        """After a validation during training (rank 0); True: stop training (final eval and checkpoint follow)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """Top-level checkpoint entries (tensors, numbers, strings: ``weights_only``-loadable)."""
        return {}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore from a checkpoint (the whole dict; entries this callback did not write may be absent)."""


class EMA(Callback):
    """Exponential moving average of the weights, as RT-DETR's ``ModelEMA``.

    After every optimizer step: ``d = decay * (1 - exp(-updates / warmup))``, then
    ``ema = d * ema + (1 - d) * model`` for floating parameters and buffers (integer
    buffers copied). ``module`` (eval mode, no gradients) is what validation runs;
    checkpoints hold it as ``ema`` (+ ``ema_updates``) next to the raw ``model``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: float = 2000) -> None:
        if not 0 <= decay < 1 or warmup <= 0:
            raise ValueError(f"train.ema_decay must be in [0, 1) and train.ema_warmup > 0, got {decay}, {warmup}")
        self.module = copy.deepcopy(getattr(model, "module", model)).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    def factor(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.factor()
        theirs = getattr(model, "module", model).state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(theirs[k].detach(), alpha=1 - d)
            else:
                v.copy_(theirs[k])

    def on_step_end(self, trainer: Any, row: dict[str, float] | None) -> None:
        if row is not None:
            self.update(trainer.model)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.module.state_dict(), "ema_updates": self.updates}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        if isinstance(ckpt.get("ema"), dict):
            self.module.load_state_dict(ckpt["ema"])
            self.updates = int(ckpt["ema_updates"])
        else:  # train.ema turned on for a resumed run: the average starts from the current weights
            logger.warning("train.ema: the checkpoint has no EMA weights; averaging starts at its weights")
            self.module.load_state_dict(ckpt["model"])
            self.updates = 0


class EarlyStopping(Callback):
    """Stop after ``patience`` validations in a row without a better AP than the best so far."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.bad = patience, -math.inf, 0

    def on_validation(self, trainer: Any, metrics: dict[str, float]) -> bool:
        ap = metrics.get("AP", -math.inf)
        if ap > self.best:
            self.best, self.bad = ap, 0
            return False
        self.bad += 1
        self.stop_reason = (f"early stopping: no better AP in {self.bad} validation{'s' * (self.bad != 1)} "
                            f"(train.patience={self.patience}; best AP {self.best:.4f})")
        return self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"early_stopping": {"best": self.best, "bad": self.bad}}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        state = ckpt.get("early_stopping") or {}
        self.best, self.bad = float(state.get("best", -math.inf)), int(state.get("bad", 0))


def build_callbacks(cfg: Any, model: nn.Module) -> list[Callback]:
    """The callbacks ``cfg.train`` turns on: EMA (``train.ema``), early stopping (``train.patience``)."""
    t = cfg.train
    callbacks: list[Callback] = []
    if t.ema:
        callbacks.append(EMA(model, t.ema_decay, t.ema_warmup))
    if t.patience < 0:
        raise ValueError(f"train.patience must be >= 0 (0 = off), got {t.patience}")
    if t.patience:
        callbacks.append(EarlyStopping(t.patience))
    return callbacks
