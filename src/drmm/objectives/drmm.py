"""The D-RMM objective: sum over stages of NLL + beta * MCM (paper Section 3.3)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..mixture import COORD_DISTS, STOP_GRAD_PARTS, mixture_losses
from ..structures import StageOutput, pad_targets


class DRMMObjective(nn.Module):
    """Mixture NLL + ``beta`` x MCM for every stage; no matching, no Hungarian step.

    Returns ``{"nll.s": ..., "mcm.s": ...}`` per stage ``s`` (0-based); the ``mcm``
    entries are already multiplied by ``beta`` so the total loss is the sum of the
    values, as with torchvision's detection models. ``reduction="sum"`` sums over
    all ground truths of the batch (released code); ``"mean"`` divides by their
    number.
    """

    def __init__(
        self,
        beta: float = 0.5,
        reduction: str = "sum",
        coord_dist: str = "cauchy",
        stop_grad: tuple[str, ...] | list[str] = ("coord",),
        min_scale_ratio: float = 0.04,
    ) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if coord_dist not in COORD_DISTS:
            raise ValueError(f"coord_dist must be one of {COORD_DISTS}, got {coord_dist!r}")
        if set(stop_grad) - STOP_GRAD_PARTS:
            raise ValueError(f"stop_grad must be a subset of {sorted(STOP_GRAD_PARTS)}, got {list(stop_grad)}")
        self.beta = beta
        self.reduction = reduction
        self.coord_dist = coord_dist
        self.stop_grad = tuple(stop_grad)
        self.min_scale_ratio = min_scale_ratio

    def per_stage(self, stages: list[StageOutput], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``(nll [B,G], mcm [B,G], valid [B,G])`` for every stage, unreduced."""
        gt_boxes, gt_labels, gt_valid = pad_targets(targets, stages[0].boxes.device)
        out = []
        for s in stages:
            nll, mcm = mixture_losses(
                s.boxes, s.raw_scale, s.objectness_logit, s.class_logits, gt_boxes, gt_labels, gt_valid,
                min_scale_ratio=self.min_scale_ratio, coord_dist=self.coord_dist, stop_grad=self.stop_grad,
            )
            out.append((nll, mcm, gt_valid))
        return out

    def forward(self, stages: list[StageOutput], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        losses = {}
        for i, (nll, mcm, valid) in enumerate(self.per_stage(stages, targets)):
            denom = valid.sum().clamp(min=1) if self.reduction == "mean" else 1
            losses[f"nll.{i}"] = nll.sum() / denom
            losses[f"mcm.{i}"] = self.beta * mcm.sum() / denom
        return losses


def build_objective(cfg) -> nn.Module:
    """Objective from an :class:`~drmm.config.ObjectiveConfig`."""
    if cfg.name == "drmm":
        return DRMMObjective(cfg.beta, cfg.reduction, cfg.coord_dist, tuple(cfg.stop_grad), cfg.min_scale_ratio)
    raise ValueError(f"unknown objective {cfg.name!r}; available: 'drmm'")
