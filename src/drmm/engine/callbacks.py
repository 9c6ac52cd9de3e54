"""Callbacks of the Trainer: the work around the loop that a config turns on (issue 24).

A :class:`Callback` gets ``on_step_end`` after each iteration, ``on_log`` for each
row of the run's log (rank 0: ``{"type": "train" | "val" | "stop", "step", ...}``),
``on_validation`` after each validation during training (rank 0; returning True stops
the run, with ``stop_reason`` logged), ``on_resume`` after ``--resume`` restored the
state and ``on_fit_end`` when training is over. ``state_dict`` entries go into every
checkpoint (top-level keys) and come back through ``load_state_dict`` on ``--resume``,
so a resumed run continues exactly. :func:`build_callbacks` makes the list from
``cfg.train``: the run log (``log.jsonl`` + ``loss.png``, always on rank 0), EMA,
early stopping, TensorBoard.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..plotting import loss_curve, reliability_diagram
from .runlog import append_row, cut_log

logger = logging.getLogger("drmm.train")


class Callback:
    """Hooks called by :class:`drmm.engine.train.Trainer`; each does nothing by default."""

    stop_reason: str = ""  # why on_validation asked to stop (the log's "stop" row)

    def on_step_end(self, trainer: Any, row: dict[str, float] | None) -> None:
        """After each iteration; ``row`` is None where the optimizer did not step (non-finite or fp16 overflow)."""

    def on_validation(self, trainer: Any, metrics: dict[str, float]) -> bool:
        """After a validation during training (rank 0); True: stop training (final eval and checkpoint follow).

        ``trainer.val_calibration`` holds the validation's calibration summary (bins for the figures)."""
        return False

    def on_log(self, trainer: Any, row: dict[str, Any]) -> None:
        """Each row of the run's log, as written to ``log.jsonl`` (rank 0)."""

    def on_resume(self, trainer: Any) -> None:
        """After ``--resume`` restored the model, optimizer and callbacks, on every rank (the run log and TensorBoard
        exist on rank 0 only; early stopping must stop every rank alike); ``trainer.step`` is the checkpoint's."""

    def on_fit_end(self, trainer: Any) -> None:
        """Training is over, the final validation and checkpoint written (rank 0)."""

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

    def on_resume(self, trainer: Any) -> None:
        if self.bad >= self.patience:  # the run had stopped early: it stays stopped (final eval and checkpoint)
            self.stop_reason = (f"early stopping: the resumed run had stopped after {self.bad} validations without "
                                f"a better AP (train.patience={self.patience}); raise train.patience to go on")
            trainer.stopping = True
            logger.warning("%s", self.stop_reason)

    def state_dict(self) -> dict[str, Any]:
        return {"early_stopping": {"best": self.best, "bad": self.bad}}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        state = ckpt.get("early_stopping") or {}
        self.best, self.bad = float(state.get("best", -math.inf)), int(state.get("bad", 0))


class RunLog(Callback):
    """``log.jsonl`` (one JSON row per line, :mod:`drmm.engine.runlog`) and its plot ``loss.png``.

    On ``--resume`` the rows past the checkpoint go (the resumed run writes them again)."""

    def __init__(self, out: Path) -> None:
        self.path, self.plot = out / "log.jsonl", out / "loss.png"

    def on_log(self, trainer: Any, row: dict[str, Any]) -> None:
        append_row(self.path, row)

    def on_resume(self, trainer: Any) -> None:
        rows, removed = cut_log(self.path, trainer.step)
        if removed:
            logger.info("log.jsonl: removed %d row(s) past iteration %d", removed, trainer.step)
        trainer.last_val_step = max((r["step"] for r in rows if r.get("type") == "val"), default=-1)
        self.plot.unlink(missing_ok=True)
        if rows:
            loss_curve(self.path, self.plot)

    def on_fit_end(self, trainer: Any) -> None:
        if self.path.exists():
            loss_curve(self.path, self.plot)


class TensorBoard(Callback):
    """TensorBoard event files in ``RUN/tensorboard/``: every number of every log row, the reliability diagram.

    Scalars are named ``train/<key>`` (loss terms per stage, lr, grad norm, data and step
    time, memory on GPUs) and ``val/<key>`` (AP..., ECE, LaECE and the other calibration
    errors); after each validation, the final one included, the D-ECE reliability diagram is
    an image (``val/reliability``). A resumed run purges the events past its checkpoint.
    """

    def __init__(self, out: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's writer needs the tensorboard package
            raise ImportError("train.tensorboard needs the tensorboard package: pip install 'drmm[tensorboard]' "
                              "(or pip install tensorboard), or turn it off with --set train.tensorboard=false"
                              ) from e
        self._make = SummaryWriter
        self.dir, self.purge_step, self.writer, self.drawn = out / "tensorboard", None, None, -1

    def _writer(self) -> Any:
        if self.writer is None:
            self.writer = self._make(log_dir=str(self.dir), purge_step=self.purge_step)
        return self.writer

    def on_resume(self, trainer: Any) -> None:
        self.purge_step = trainer.step + 1  # events after the checkpoint are written again

    def on_log(self, trainer: Any, row: dict[str, Any]) -> None:
        kind = row.get("type", "train")
        for key, value in row.items():
            if key not in ("type", "step") and isinstance(value, (int, float)) and math.isfinite(value):
                self._writer().add_scalar(f"{kind}/{key}", value, row["step"])

    def on_validation(self, trainer: Any, metrics: dict[str, float]) -> bool:
        self._diagram(trainer, metrics.get("AP"))
        self._writer().flush()
        return False

    def _diagram(self, trainer: Any, ap: float | None) -> None:
        cal = getattr(trainer, "val_calibration", None)
        if cal is not None and cal.d_ece.n and self.drawn != trainer.step:
            png = self.dir / "reliability.png"
            reliability_diagram(cal.d_ece, png, f"validation, iteration {trainer.step}", ap)
            with Image.open(png) as im:
                self._writer().add_image("val/reliability", np.asarray(im.convert("RGB")), trainer.step,
                                         dataformats="HWC")
            self.drawn = trainer.step

    def on_fit_end(self, trainer: Any) -> None:
        if trainer.last_val_step == trainer.step:  # the final validation (the trainer's last "val" row)
            self._diagram(trainer, trainer.val_metrics.get("AP"))
        if self.writer is not None:
            self.writer.close()


def build_callbacks(cfg: Any, model: nn.Module, out: Path | None = None) -> list[Callback]:
    """The callbacks ``cfg.train`` turns on: EMA (``train.ema``), early stopping (``train.patience``), and with
    ``out`` (the run folder, rank 0 only) the run log and TensorBoard (``train.tensorboard``)."""
    t = cfg.train
    callbacks: list[Callback] = []
    if out is not None:
        callbacks.append(RunLog(out))
        if t.tensorboard:
            callbacks.append(TensorBoard(out))
    if t.ema:
        callbacks.append(EMA(model, t.ema_decay, t.ema_warmup))
    if t.patience < 0:
        raise ValueError(f"train.patience must be >= 0 (0 = off), got {t.patience}")
    if t.patience:
        callbacks.append(EarlyStopping(t.patience))
    return callbacks
