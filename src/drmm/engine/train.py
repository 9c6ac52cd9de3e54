"""Training loop: AdamW, warm-up + step schedule, clipping, AMP, DDP, exact resume.

Reproducibility: data order comes from a generator seeded with (seed, epoch) and
every sample's augmentation from a generator seeded with (seed, epoch, index)
(:mod:`drmm.engine.sampling`), so a run is the same with any number of workers;
checkpoints hold the model, optimizer, scheduler, scaler and RNG states plus the
position in the epoch, so ``resume`` continues exactly where the run stopped.
Callbacks (:mod:`drmm.engine.callbacks`: the run log, EMA, early stopping,
TensorBoard) hook into steps, log rows, validations, checkpoints and resumes.
"""
from __future__ import annotations

import logging
import math
import os
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoints import atomic_save, load_checkpoint, restore_training_state, training_checkpoint
from ..checkpoints.init_from import init_model
from ..config import Config, save_config
from ..data import UnreadableImageError, build_dataset, build_transforms, collate_fn
from ..data.formats import training_splits
from ..evaluation.cocofiles import ground_truth_from_coco
from ..evaluation.evaluate import score_detections
from ..evaluation.inference import run_inference
from ..hardware import resolve_amp
from ..models import build_detector
from .callbacks import EMA, build_callbacks
from .distributed import init_distributed, on_any_rank, on_every_rank, shutdown_distributed, sync_batchnorm
from .sampling import EpochBatchSampler, SeededSamples, TaggedBatches, loader_workers
from .schedule import lr_factor

logger = logging.getLogger("drmm.train")


@dataclass
class DataPaths:
    """Annotation files and image folders of a training run (validation optional)."""

    train_ann: Path
    train_images: Path
    val_ann: Path | None = None
    val_images: Path | None = None

    @classmethod
    def from_dir(cls, root: str | os.PathLike, fmt: str | None = None) -> "DataPaths":
        """COCO ``root/annotations/{train,val}.json`` + ``root/{train,val}/``, or a YOLO or VOC layout.

        ``fmt`` (``data.format``): coco, yolo or voc; None detects it (:mod:`drmm.data.formats`).
        """
        return cls(*training_splits(root, fmt))


def param_groups(model: nn.Module, lr: float, backbone_lr_factor: float = 1.0) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one (the trainable parameters in order), or with ``backbone_lr_factor``
    != 1 the rest at ``lr`` first (the lr the log shows) and the backbone (body + neck) at ``lr x factor``
    (fine-tuning: the pretrained image network moves less, as RT-DETR's recipes)."""
    if backbone_lr_factor <= 0:
        raise ValueError(f"train.backbone_lr_factor must be > 0, got {backbone_lr_factor}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if backbone_lr_factor == 1:
        return [{"params": [p for _, p in named]}]
    return [{"params": [p for n, p in named if not n.startswith("backbone.")]},
            {"params": [p for n, p in named if n.startswith("backbone.")], "lr": lr * backbone_lr_factor}]


class Trainer:
    """One training run in ``out_dir``; see :func:`train`."""

    def __init__(self, cfg: Config, data: DataPaths, out_dir: str | os.PathLike, *, resume: bool = False,
                 device: str | None = None, progress: bool = True, force_amp: bool = False) -> None:
        self.cfg, self.data, self.out = cfg, data, Path(out_dir)
        self.progress = progress
        self.rank, self.world, dist_device = init_distributed(device)
        self.is_main = self.rank == 0
        self.device = torch.device(device) if device else dist_device or torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        t = cfg.train
        if t.threads and self.device.type == "cpu":
            torch.set_num_threads(t.threads)

        show = progress and self.is_main
        self.train_set = build_dataset(cfg.data, data.train_ann, data.train_images, build_transforms(cfg.data, True),
                                       progress=show)
        self.val_set = None
        if data.val_ann is not None:
            self.val_set = build_dataset(cfg.data, data.val_ann, data.val_images, train=False, progress=show)
            if self.val_set.cat_ids != self.train_set.cat_ids:
                raise ValueError(f"{data.val_ann}: categories {self.val_set.cat_ids} differ from "
                                 f"the training set's {self.train_set.cat_ids} (give the validation file "
                                 "of the same dataset, or fix its categories)")
        if cfg.model.num_classes != self.train_set.num_classes:
            logger.info("num_classes set to %d from %s", self.train_set.num_classes, data.train_ann)
            cfg.model.num_classes = self.train_set.num_classes
        cfg.class_names = list(self.train_set.class_names)

        torch.manual_seed(t.seed)
        self.model = build_detector(cfg).to(self.device)
        if t.init_from and not resume:  # a resumed run's weights come from last.pt
            init_model(self.model, cfg.class_names, t.init_from, self.out if self.is_main else None, cfg)
        distributed = dist.is_initialized()  # under torchrun, also with one process
        if distributed and t.sync_bn:
            if self.device.type == "cpu":
                raise ValueError("train.sync_bn needs GPUs: torch runs SyncBatchNorm under DDP on GPUs only "
                                 "(each process then normalises with its own batch statistics); "
                                 "pass --set train.sync_bn=false")
            self.model, n = sync_batchnorm(self.model)
            logger.info("train.sync_bn: %d BatchNorm layers synchronised across %d processes", n, self.world)
        self.ddp = None
        if distributed:
            logger.info("process group: %s, %d processes, this one rank %d on %s", dist.get_backend(), self.world,
                        self.rank, self.device)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # fused: one kernel for every parameter's update (a few ms a step less on CPUs than foreach)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, t.lr, t.backbone_lr_factor), lr=t.lr,
                                           weight_decay=t.weight_decay, fused=True)
        self.sampler = EpochBatchSampler(len(self.train_set), t.batch_size, t.seed, self.rank, self.world)
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = t.max_iters or t.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, t, self.steps_per_epoch))
        t.amp = resolve_amp(t.amp, self.device, forced=force_amp)  # no emulated bf16 unless asked for by name
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.amp]
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a GPU; on the CPU pass --set train.amp=bf16 (or none)")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        # the run log (rank 0), TensorBoard (train.tensorboard, rank 0), EMA (train.ema), early stopping (train.patience)
        self.callbacks = build_callbacks(cfg, self.model, self.out if self.is_main else None)
        self.ema = next((c for c in self.callbacks if isinstance(c, EMA)), None)

        self.loader: DataLoader | None = None
        self.step, self.nonfinite, self.nonfinite_total = 0, 0, 0
        self.best = -math.inf
        self.last_val_step = -1  # the step of the last "val" row in log.jsonl
        self.val_calibration, self.val_metrics = None, {}  # the last validation's (callbacks draw them)
        self._val_gt = None
        self.stopping = False  # a callback asked to stop (early stopping)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        if self.is_main:
            save_config(cfg, self.out / "config.yaml")

    # -- checkpoints
    def _checkpoint(self, name: str, metrics: dict | None = None) -> None:
        if self.is_main:
            atomic_save(training_checkpoint(self, metrics), self.out / name)

    def _resume(self) -> None:
        path = self.out / "last.pt"
        ckpt = load_checkpoint(path, "cpu")  # RNG states must stay CPU tensors; load_state_dict moves the rest
        if "optimizer" not in ckpt:
            raise RuntimeError(f"{path} holds no training state; cannot resume from it (start a new run: "
                               "another --out, without --resume)")
        was = float(ckpt["config"].get("train", {}).get("backbone_lr_factor", 1.0))
        if was != self.cfg.train.backbone_lr_factor:  # the optimizer's groups and lrs come from the checkpoint
            raise ValueError(f"{path} was trained with train.backbone_lr_factor={was:g}; a resumed run keeps it "
                             f"(drop --set train.backbone_lr_factor={self.cfg.train.backbone_lr_factor:g}, or start "
                             "a new run from these weights with --init-from)")
        restore_training_state(self, ckpt)
        logger.info("resumed from %s at iteration %d", path, self.step)
        for cb in self.callbacks:  # the run log drops its rows past the checkpoint, TensorBoard its events
            cb.on_resume(self)

    # -- logging
    def _log(self, row: dict[str, Any]) -> None:
        if self.is_main:
            for cb in self.callbacks:  # log.jsonl, TensorBoard
                cb.on_log(self, row)
            if row["type"] == "val":
                self.last_val_step = row["step"]

    def _loader(self, epoch: int, start: int) -> DataLoader:
        """The training batches from batch ``start`` of ``epoch`` on; one DataLoader whose workers outlive epochs."""
        self.sampler.set_epoch(epoch, start)
        if self.loader is None:
            workers = loader_workers(self.cfg.train.num_workers, self.device)
            g = torch.Generator().manual_seed(self.cfg.train.seed)  # keeps the global RNG untouched
            self.loader = DataLoader(SeededSamples(self.train_set, self.cfg.train.seed), collate_fn=collate_fn,
                                     batch_sampler=TaggedBatches(self.sampler), num_workers=workers, generator=g,
                                     persistent_workers=workers > 0, pin_memory=self.device.type == "cuda")
        return self.loader

    def _interval_due(self, interval: int, epoch_end: bool) -> bool:
        t = self.cfg.train
        if interval <= 0:
            return False
        if t.interval_unit == "iter":
            return self.step % interval == 0
        return epoch_end and (self.step // self.steps_per_epoch) % interval == 0

    # -- one step
    def train_step(self, images, targets) -> dict[str, float] | None:
        model = self.ddp or self.model
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)} for t in targets]
        amp = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        if self.world > 1 and self.cfg.objective.reduction == "sum":
            loss_for_grad = loss * self.world  # DDP averages gradients: undo it to get the global-batch sum
        else:
            loss_for_grad = loss
        self.optimizer.zero_grad(set_to_none=True)
        finite = on_every_rank(bool(torch.isfinite(loss.detach())), self.device, self.world)
        grad_norm = float("nan")
        if finite:
            self.scaler.scale(loss_for_grad).backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_norm))
            if not math.isfinite(grad_norm) and self.scaler.is_enabled():
                # fp16 overflow: the scaler skips this step and lowers its scale; not an error
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                return None
            finite = math.isfinite(grad_norm)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            self.nonfinite_total += 1
            logger.warning("non-finite loss or gradient at iteration %d: step skipped (%d in a row)",
                           self.step, self.nonfinite)
            if self.nonfinite >= self.cfg.train.max_consecutive_nonfinite:
                raise RuntimeError(
                    f"{self.nonfinite} non-finite losses in a row at iteration {self.step}: training stopped. "
                    "Lower the learning rate (--set train.lr=...), check the data for broken boxes, "
                    "or turn AMP off (--set train.amp=none).")
            with warnings.catch_warnings():  # the schedule follows the iteration count, stepped or not
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            return None
        self.nonfinite = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        row = {k: float(v.detach()) for k, v in losses.items()}
        row["loss"] = float(loss.detach())
        row["grad_norm"] = grad_norm
        return row

    # -- evaluation
    def evaluate(self) -> dict[str, float]:
        """COCO metrics on the validation set, computed on rank 0 (empty elsewhere and without one)."""
        if self.val_set is None:
            return {}
        if not self.is_main:  # validation runs on rank 0; the others wait for it
            dist.barrier()
            return {}
        model = self.ema.module if self.ema else self.model  # the averaged weights, with train.ema
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            dets, image_ids, _ = run_inference(model, self.val_set, batch_size=self.cfg.train.batch_size,
                                               device=self.device, progress=False)
        self.model.train()
        if self._val_gt is None:  # the validation file's boxes, read once for every validation's calibration
            self._val_gt = ground_truth_from_coco(self.val_set.coco.dataset, source=str(self.data.val_ann))
        metrics, self.val_calibration, _, _ = score_detections(self.val_set.coco, dets, image_ids,
                                                               self.val_set.cat_ids, gt=self._val_gt)
        self.val_metrics = metrics
        if self.world > 1:
            dist.barrier()
        return metrics

    def _after_interval(self, epoch_end: bool) -> None:
        t = self.cfg.train
        if self._interval_due(t.eval_interval, epoch_end) and self.val_set is not None:
            metrics, stops = self.evaluate(), []
            if self.is_main:
                self._log({"type": "val", "step": self.step, **metrics})
                msg = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in ("AP", "AP50", "AR100"))
                tqdm.write(f"iteration {self.step}: {msg}")
                if metrics.get("AP", -1) > self.best:
                    self.best = metrics["AP"]
                    self._checkpoint("best.pt", metrics)
                stops = [cb.stop_reason for cb in self.callbacks if cb.on_validation(self, metrics)]
                if stops:
                    self._log({"type": "stop", "step": self.step, "reason": stops[0]})
                    tqdm.write(f"iteration {self.step}: stopped ({stops[0]}); final evaluation and checkpoint")
            self.stopping = on_any_rank(bool(self.is_main and stops), self.device, self.world)
        if self._interval_due(t.checkpoint_interval, epoch_end):
            self._checkpoint("last.pt")

    def fit(self) -> dict[str, Any]:
        self.model.train()
        start_time = time.time()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.progress and self.is_main),
                   desc="train", dynamic_ncols=True)
        try:
            self._train_loop(bar, start_time)
        except UnreadableImageError as e:
            traceback.clear_frames(e.__traceback__)  # frees the DataLoader's workers now, not at a later gc
            raise
        finally:
            self.loader = None  # ends the workers
            bar.close()
        # Final evaluation and checkpoint, whatever the intervals say.
        metrics = self.evaluate() if self.val_set is not None else {}
        if self.is_main:
            if metrics and self.last_val_step != self.step:  # not again for a resumed finished run
                self._log({"type": "val", "step": self.step, **metrics})
                if metrics.get("AP", -1) > self.best:
                    self.best = metrics["AP"]
                    self._checkpoint("best.pt", metrics)
            self._checkpoint("last.pt", metrics)
            for cb in self.callbacks:  # loss.png, TensorBoard's files closed
                cb.on_fit_end(self)
        return {"step": self.step, "metrics": metrics, "nonfinite_steps": self.nonfinite_total,
                "seconds": time.time() - start_time}

    def _train_loop(self, bar: tqdm, start_time: float) -> None:
        """Iterations until ``total_steps`` or the time limit, with the interval work in between."""
        t = self.cfg.train
        deadline = start_time + t.time_limit_minutes * 60 if t.time_limit_minutes else None
        stopped_early = self.stopping  # a resumed run that had stopped early (train.patience)
        waited = busy = 0.0  # seconds waiting for batches / in train_step since the last log row
        steps = 0
        while self.step < self.total_steps and not stopped_early:
            epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
            tick = time.perf_counter()
            for images, targets in self._loader(epoch, in_epoch):
                got = time.perf_counter()
                row = self.train_step(images, targets)  # synchronises the device (it reads the loss)
                waited, busy, steps = waited + got - tick, busy + time.perf_counter() - got, steps + 1
                self.step += 1
                for cb in self.callbacks:  # EMA update; self.step counts this step
                    cb.on_step_end(self, row)
                bar.update(1)
                if row is not None and (self.step % t.log_interval == 0 or self.step == 1):
                    row.update(type="train", step=self.step, epoch=epoch, lr=self.optimizer.param_groups[0]["lr"],
                               time=round(time.time() - start_time, 2), data_time=round(waited / steps, 5),
                               step_time=round(busy / steps, 5))
                    if self.device.type == "cuda":  # peak since the start, parameters and AdamW state included
                        row["max_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
                    waited = busy = 0.0
                    steps = 0
                    self._log(row)
                    bar.set_postfix(loss=f"{row['loss']:.2f}", lr=f"{row['lr']:.2e}")
                epoch_end = self.step % self.steps_per_epoch == 0
                if self.step >= self.total_steps:
                    break
                self._after_interval(epoch_end)
                if self.stopping:
                    stopped_early = True
                    break
                if deadline and on_any_rank(time.time() > deadline, self.device, self.world):
                    logger.info("time limit of %.1f min reached at iteration %d", t.time_limit_minutes, self.step)
                    stopped_early = True
                    break
                tick = time.perf_counter()


def train(cfg: Config, data: DataPaths, out_dir: str | os.PathLike, *, resume: bool = False,
          device: str | None = None, progress: bool = True, force_amp: bool = False) -> dict[str, Any]:
    """Train ``cfg`` on ``data`` into ``out_dir`` (config.yaml, log.jsonl, loss.png, last.pt, best.pt).

    ``force_amp``: keep ``train.amp=bf16`` on a CPU without bf16 instructions (else fp32, with a warning).
    """
    result = Trainer(cfg, data, out_dir, resume=resume, device=device, progress=progress,
                     force_amp=force_amp).fit()
    shutdown_distributed()
    return result
