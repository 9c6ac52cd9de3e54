"""A run's state in its checkpoint: what :class:`drmm.engine.train.Trainer` needs to resume exactly.

RNG states as ``weights_only``-loadable objects, the optimizer, schedule, scaler,
counters, and the callbacks' state (:mod:`drmm.engine.callbacks`); the layout is in
:mod:`drmm.checkpoints`.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from .files import make_checkpoint


def rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and Python as weights_only-loadable objects."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": _python_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    random.setstate(_python_state_from_list(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_list(s: tuple) -> list:
    version, internal, gauss = s
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _python_state_from_list(s: list) -> tuple:
    version, internal, gauss = s
    return (version, tuple(int(x) for x in internal.tolist()), gauss)


def training_checkpoint(trainer: Any, metrics: dict | None = None) -> dict[str, Any]:
    """Everything a :class:`drmm.engine.train.Trainer` needs to resume exactly, plus its callbacks' state."""
    t = trainer
    ckpt = make_checkpoint(
        t.model, t.cfg.to_dict(), t.train_set.class_names, t.train_set.cat_ids,
        step=t.step, epoch=t.step // t.steps_per_epoch,
        optimizer=t.optimizer.state_dict(), scheduler=t.scheduler.state_dict(),
        scaler=t.scaler.state_dict(), rng=rng_state(), best_metric=t.best,
        nonfinite=t.nonfinite, nonfinite_total=t.nonfinite_total, metrics=metrics or {},
    )
    for cb in t.callbacks:  # "ema", "ema_updates", "early_stopping"
        ckpt.update(cb.state_dict())
    return ckpt


def restore_training_state(trainer: Any, ckpt: dict[str, Any]) -> None:
    """The inverse of :func:`training_checkpoint` (``ckpt`` loaded on the CPU: RNG states stay CPU tensors)."""
    t = trainer
    t.model.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    t.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    for cb in t.callbacks:
        cb.load_state_dict(ckpt)
    t.step, t.best = ckpt["step"], ckpt["best_metric"]
    t.nonfinite, t.nonfinite_total = ckpt["nonfinite"], ckpt["nonfinite_total"]
