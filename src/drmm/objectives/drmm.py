"""The D-RMM objective: sum over stages of NLL + beta * MCM (paper Section 3.3), plus its ablations.

Ablations (paper Tables 2 and 3), chosen with ``nll_mode`` and ``mcm_mode``:

* ``nll_mode="mixture"`` (paper): ``NLL_i = -log sum_k comp_ik``.
* ``nll_mode="max"`` (Table 3 (IV), "NLL only for MAX"): ``NLL_i = -max_k log comp_ik``,
  a mixture-style loss (``pi`` included) on the best component only.
* ``nll_mode="bipartite"`` (Table 2 row 2, "NLL(B)", not a mixture model). Our
  reading, as the paper gives no detail: each image's ground truths are matched one
  to one to components by Hungarian matching on ``-(log F + log P)`` (the pi-free
  component likelihood), ``NLL_i = -(log F + log P)[i, match(i)]`` on matched pairs
  only (ground truths left over when G > K get no loss), and the objectness is
  trained by binary cross-entropy on ``sigmoid(o)`` with target 1 for matched
  components and 0 for all others (returned as ``obj.s``, reduced like the NLL), so
  the inference score ``p * o`` keeps its meaning. Table 2 row 2 is this with
  ``beta=0``.
* ``mcm_mode="max"`` (paper): ``MCM_i = logsumexp_k log comp_ik - max_k log comp_ik``.
* ``mcm_mode="bipartite"`` (Table 2 row 4, "MCM(B)"): the max component is replaced
  by the one Hungarian matching on ``-log comp`` assigns to the ground truth (the
  max component for ground truths left over when G > K).
* ``beta=0``: NLL only (Table 2 row 3, Table 3 (I)); the MCM entries are exact zeros.

``stop_grad`` applies to the MCM term in every mode, never to the NLL. The scale
floor passes gradient to ``mu`` as released unless ``detach_floor``. With the
released top-k ablation a stage's ``kept`` mask restricts every term to the kept
components (``pi`` normalised over all K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..mixture import (
    check_choice,
    check_options,
    combine_log_terms,
    mcm_from_log_comp,
    mixture_log_terms,
    mixture_losses,
    nll_from_log_comp,
)
from ..structures import StageOutput, pad_targets
from .hungarian import HungarianObjective
from .matching import assigned_components, hungarian_match
from .normalization import num_boxes_per_process

NLL_MODES = ("mixture", "max", "bipartite")
MCM_MODES = ("max", "bipartite")
REDUCTIONS = ("sum", "mean")


class DRMMObjective(nn.Module):
    """Mixture NLL + ``beta`` x MCM for every stage; the paper's objective needs no matching.

    Returns ``{"nll.s": ..., "mcm.s": ...}`` per stage ``s`` (0-based), plus
    ``"obj.s"`` with ``nll_mode="bipartite"``; the ``mcm`` entries are already
    multiplied by ``beta`` so the total loss is the sum of the values, as with
    torchvision's detection models. ``reduction="sum"`` sums over all ground truths
    of the batch (released code); ``"mean"`` divides by their number. See the module
    docstring for the ablation modes.
    """

    head = "mixture"  # the head it trains (drmm.models.heads.HEADS)

    def __init__(
        self,
        beta: float = 0.5,
        reduction: str = "sum",
        coord_dist: str = "cauchy",
        stop_grad: tuple[str, ...] | list[str] = ("coord",),
        min_scale_ratio: float = 0.04,
        nll_mode: str = "mixture",
        mcm_mode: str = "max",
        detach_floor: bool = False,
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("nll_mode", nll_mode, NLL_MODES)
        check_choice("mcm_mode", mcm_mode, MCM_MODES)
        self.stop_grad = check_options(coord_dist, stop_grad)
        self.beta = beta
        self.reduction = reduction
        self.coord_dist = coord_dist
        self.min_scale_ratio = min_scale_ratio
        self.nll_mode = nll_mode
        self.mcm_mode = mcm_mode
        self.detach_floor = detach_floor

    def stage_terms(
        self, s: StageOutput, gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(nll [B,G], mcm [B,G], objectness BCE [B,K] or None)`` of one stage, unreduced, 0 on padding."""
        if self.nll_mode == "mixture" and self.mcm_mode == "max":
            nll, mcm = mixture_losses(
                s.boxes, s.raw_scale, s.objectness_logit, s.class_logits, gt_boxes, gt_labels, gt_valid,
                min_scale_ratio=self.min_scale_ratio, coord_dist=self.coord_dist, stop_grad=self.stop_grad,
                detach_floor=self.detach_floor, kept=s.kept,
            )
            return nll, mcm, None
        log_pi, log_coord, log_class = mixture_log_terms(
            s.boxes, s.raw_scale, s.objectness_logit, s.class_logits, gt_boxes, gt_labels, gt_valid,
            min_scale_ratio=self.min_scale_ratio, coord_dist=self.coord_dist, detach_floor=self.detach_floor,
            kept=s.kept,
        )
        if s.kept is not None and "bipartite" in (self.nll_mode, self.mcm_mode):
            raise ValueError("the bipartite ablations match ground truths to all components; with model.topk_ratio"
                             " < 1 they need model.topk_mode: next_stage")
        log_comp = log_pi + log_coord + log_class  # [B, G, K]
        sizes = gt_valid.sum(1).tolist()  # pad_targets puts each image's ground truths first
        zero = log_comp.new_zeros(())
        obj = None
        if self.nll_mode == "mixture":
            nll = nll_from_log_comp(log_comp)
        elif self.nll_mode == "max":
            nll = -log_comp.amax(dim=-1)
        else:  # bipartite: pi-free likelihood on one-to-one matched pairs, objectness by BCE
            log_lik = log_coord + log_class
            matches = hungarian_match(-log_lik.transpose(1, 2), sizes, padded=True)
            comp, matched = assigned_components(matches, torch.zeros_like(gt_labels))
            nll = torch.where(matched, -log_lik.gather(-1, comp.unsqueeze(-1)).squeeze(-1), zero)
            image = torch.arange(len(comp), device=comp.device)[:, None].expand_as(comp)
            target = torch.zeros_like(log_pi[:, 0])  # [B, K]
            target[image[matched], comp[matched]] = 1.0
            obj = F.binary_cross_entropy_with_logits(s.objectness_logit.to(target.dtype), target, reduction="none")

        mixed = combine_log_terms(log_pi, log_coord, log_class, self.stop_grad)
        top = None  # max: the best component
        if self.mcm_mode == "bipartite":  # the component assigned by Hungarian matching on -log comp
            matches = hungarian_match(-log_comp.transpose(1, 2), sizes, padded=True)
            comp, _ = assigned_components(matches, log_comp.detach().argmax(-1))
            top = mixed.gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        mcm = mcm_from_log_comp(mixed, top)
        return torch.where(gt_valid, nll, zero), torch.where(gt_valid, mcm, zero), obj

    def per_stage(self, stages: list[StageOutput], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``(nll [B,G], mcm [B,G], valid [B,G])`` for every stage, unreduced (MCM not multiplied by beta)."""
        gt_boxes, gt_labels, gt_valid = pad_targets(targets, stages[0].boxes.device)
        return [(*self.stage_terms(s, gt_boxes, gt_labels, gt_valid)[:2], gt_valid) for s in stages]

    def forward(self, stages: list[StageOutput], targets: list[dict[str, Tensor]],
                image_sizes: list[tuple[int, int]] | None = None) -> dict[str, Tensor]:
        """``image_sizes`` is accepted for a common objective signature and not used."""
        gt_boxes, gt_labels, gt_valid = pad_targets(targets, stages[0].boxes.device)
        # mean: per ground truth of the whole (possibly distributed) batch
        denom = num_boxes_per_process(int(gt_valid.sum()), gt_valid.device) if self.reduction == "mean" else 1
        losses = {}
        for i, s in enumerate(stages):
            nll, mcm, obj = self.stage_terms(s, gt_boxes, gt_labels, gt_valid)
            losses[f"nll.{i}"] = nll.sum() / denom
            losses[f"mcm.{i}"] = self.beta * mcm.sum() / denom if self.beta else nll.new_zeros(())
            if obj is not None:
                losses[f"obj.{i}"] = obj.sum() / denom
        return losses


def build_objective(cfg) -> nn.Module:
    """Objective from an :class:`~drmm.config.ObjectiveConfig`: ``drmm`` or ``hungarian``."""
    if cfg.name == "drmm":
        return DRMMObjective(
            cfg.beta, cfg.reduction, cfg.coord_dist, tuple(cfg.stop_grad), cfg.min_scale_ratio,
            nll_mode=cfg.nll_mode, mcm_mode=cfg.mcm_mode, detach_floor=cfg.detach_floor,
        )
    if cfg.name == "hungarian":
        return HungarianObjective(cfg.cls_weight, cfg.l1_weight, cfg.giou_weight, cfg.focal_alpha, cfg.focal_gamma)
    raise ValueError(f"unknown objective {cfg.name!r}; available: 'drmm', 'hungarian'")
