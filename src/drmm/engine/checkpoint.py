"""Checkpoints: everything a run needs, written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts::

    {"model": state_dict, "config": Config.to_dict(), "class_names": [...],
     "cat_ids": [...],            # dataset category id of each contiguous label
     "version": "0.2.0", "step": int, "epoch": int,
     # training state (absent in exported weights):
     "optimizer", "scheduler", "scaler", "rng", "best_metric", ...,
     # the callbacks' state (drmm.engine.callbacks), where turned on:
     "ema": state_dict, "ema_updates": int,   # train.ema: the averaged weights (eval / predict load these)
     "early_stopping": {"best", "bad"}}       # train.patience
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def make_checkpoint(model: torch.nn.Module, config: dict, class_names: list[str] | None,
                    cat_ids: list[int] | None, **extra: Any) -> dict[str, Any]:
    """The dict saved for a model; ``extra`` adds training state (optimizer, step, ...)."""
    model = getattr(model, "module", model)  # unwrap DDP
    return {
        "model": model.state_dict(),
        "config": config,
        "class_names": list(class_names) if class_names else None,
        "cat_ids": list(cat_ids) if cat_ids else None,
        "version": __version__,
        **extra,
    }


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
