"""The Sparse R-CNN baseline objective: Hungarian matching + focal, L1 and GIoU losses.

Per stage, every ground truth is matched to one proposal by minimising::

    cost = w_cls * focal_cost + w_l1 * L1(normalised boxes) + w_giou * (-GIoU)

and the stage loss is ``w_cls`` x sigmoid focal loss over all proposals and classes
(one-hot targets on matched proposals) + ``w_l1`` x L1 + ``w_giou`` x (1 - GIoU) on
matched pairs, each divided by the number of ground truths (averaged over
processes). With the released top-k pruning (a stage's ``kept`` mask) only the kept
proposals are matched and enter the focal loss. Boxes are normalised by each image's (w, h) for the L1 terms only;
GIoU is scale-free. The cost of the whole batch is built in one operation, as in
DETR's matcher, then solved with one ``linear_sum_assignment`` per image.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from ..structures import StageOutput
from .matching import hungarian_match
from .normalization import num_boxes_per_process


def focal_cost(class_logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """``[M, G]`` focal matching cost of predictions ``[M, C]`` for ground-truth labels ``[G]``.

    ``alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` with ``p`` the
    sigmoid score of the ground truth's class (Sparse R-CNN / Deformable DETR);
    ``-log p`` and ``-log(1-p)`` are computed as softplus of the logit, without eps.
    """
    x = class_logits[:, labels].float()
    p = x.sigmoid()
    pos = alpha * (1 - p).pow(gamma) * F.softplus(-x)
    neg = (1 - alpha) * p.pow(gamma) * F.softplus(x)
    return pos - neg


class HungarianObjective(nn.Module):
    """Sparse R-CNN's set-prediction loss on every stage (the baseline D-RMM replaces).

    Returns ``{"cls.s", "l1.s", "giou.s"}`` per stage ``s`` (0-based), already
    weighted, so the total loss is the sum of the values.
    """

    head = "box"  # the head it trains (drmm.models.heads.HEADS)

    def __init__(
        self,
        cls_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.cls_weight, self.l1_weight, self.giou_weight = cls_weight, l1_weight, giou_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    @torch.no_grad()
    def cost_matrix(self, stage: StageOutput, labels: Tensor, boxes: Tensor, image_wh: Tensor, gt_wh: Tensor) -> Tensor:
        """``[B, K, Gtot]`` matching cost of all predictions against all ground truths of the batch.

        ``labels [Gtot]``, ``boxes [Gtot, 4]`` pixels; ``image_wh [B, 4]`` and
        ``gt_wh [Gtot, 4]`` the (w, h, w, h) of each prediction's / ground truth's image.
        """
        B, K, C = stage.class_logits.shape
        logits = stage.class_logits.flatten(0, 1)
        pred = stage.boxes.float().flatten(0, 1)
        pred_norm = (stage.boxes.float() / image_wh[:, None]).flatten(0, 1)
        cost = (
            self.cls_weight * focal_cost(logits, labels, self.focal_alpha, self.focal_gamma)
            + self.l1_weight * torch.cdist(pred_norm, boxes / gt_wh, p=1)
            - self.giou_weight * generalized_box_iou(pred, boxes)
        )
        return cost.view(B, K, -1)

    def stage_losses(
        self, stage: StageOutput, targets: list[dict[str, Tensor]], image_wh: Tensor, num_boxes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Unweighted ``(focal, l1, giou)`` of one stage, divided by ``num_boxes``."""
        device = stage.boxes.device
        sizes = [len(t["labels"]) for t in targets]
        labels = torch.cat([t["labels"] for t in targets]).to(device)
        boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=torch.promote_types(stage.boxes.dtype, torch.float32))
        gt_wh = image_wh.repeat_interleave(torch.tensor(sizes, device=device), dim=0)

        cost = self.cost_matrix(stage, labels, boxes, image_wh, gt_wh)
        if stage.kept is not None:  # released top-k pruning: only the kept proposals are matched and scored
            cost = cost.masked_fill(~stage.kept[..., None], math.inf)
        matches = hungarian_match(cost, sizes)
        offsets = [0] + np.cumsum(sizes).tolist()
        b_idx = torch.cat([torch.full_like(p, b) for b, (p, _) in enumerate(matches)]).to(device)
        p_idx = torch.cat([p for p, _ in matches]).to(device)
        g_idx = torch.cat([g + offsets[b] for b, (_, g) in enumerate(matches)]).to(device)

        logits = stage.class_logits.float()
        onehot = torch.zeros_like(logits)
        onehot[b_idx, p_idx, labels[g_idx]] = 1.0
        if stage.kept is None:
            focal = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum")
        else:
            focal = (sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="none")
                     * stage.kept[..., None]).sum()

        pred = stage.boxes.float()[b_idx, p_idx]
        l1 = (pred / image_wh[b_idx] - boxes[g_idx] / gt_wh[g_idx]).abs().sum()
        giou = generalized_box_iou_loss(pred, boxes[g_idx], reduction="sum")  # 1 - GIoU, pairwise
        return focal / num_boxes, l1 / num_boxes, giou / num_boxes

    def forward(self, stages: list[StageOutput], targets: list[dict[str, Tensor]],
                image_sizes: list[tuple[int, int]] | None = None) -> dict[str, Tensor]:
        """``image_sizes`` are the (h, w) of each model input, needed for the L1 normalisation."""
        if image_sizes is None:
            raise ValueError("HungarianObjective needs image_sizes (h, w) to normalise boxes for the L1 terms")
        device = stages[0].boxes.device
        image_wh = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=torch.float32, device=device)
        num_boxes = num_boxes_per_process(sum(len(t["labels"]) for t in targets), device)
        losses = {}
        for i, stage in enumerate(stages):
            focal, l1, giou = self.stage_losses(stage, targets, image_wh, num_boxes)
            losses[f"cls.{i}"] = self.cls_weight * focal
            losses[f"l1.{i}"] = self.l1_weight * l1
            losses[f"giou.{i}"] = self.giou_weight * giou
        return losses
