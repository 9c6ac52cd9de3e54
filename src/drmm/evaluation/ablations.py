"""The paper's post-processing ablations (Figure 7, Table 3): class-wise NMS and winner-take-all.

D-RMM itself is NMS-free (its post-processing is :class:`drmm.models.postprocess.TopKPostProcess`);
these exist only to measure what NMS would change. Both take and return one image's
detection dict ``{"boxes": [N, 4] xyxy, "scores": [N], "labels": [N]}``; any other
tensor entry with a leading dimension of N is indexed along, everything else is
passed through. Dtypes and devices are preserved.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

NMS_IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)
"""Class-wise NMS thresholds of the sweep (paper Figure 7; 1.0 there means no NMS)."""
WTA_IOU = 0.7
"""IoU of the winner-take-all row. The paper (Table 3) does not state it; 0.7 is our choice."""


def _index(det: dict, keep: Tensor) -> dict:
    n = len(det["scores"])
    return {k: v[keep] if isinstance(v, Tensor) and v.dim() and len(v) == n else v
            for k, v in det.items()}


def nms_per_class(det: dict, iou_threshold: float) -> dict:
    """Class-wise NMS (suppress IoU > ``iou_threshold``); kept boxes in descending score order."""
    keep = batched_nms(det["boxes"].to(det["scores"].dtype), det["scores"], det["labels"], iou_threshold)
    return _index(det, keep)


def winner_take_all(det: dict, iou_threshold: float) -> dict:
    """NMS where each kept box absorbs the confidence of the boxes it suppresses.

    Per class, boxes are visited in descending score order as in greedy NMS; a
    kept box suppresses the remaining same-class boxes with IoU > ``iou_threshold``
    and its score becomes ``min(1, own score + sum of their scores)``. Output is
    sorted by the new scores, descending.
    """
    boxes, scores, labels = (det[k].detach().cpu() for k in ("boxes", "scores", "labels"))
    n = len(scores)
    if n == 0:
        return _index(det, torch.zeros(0, dtype=torch.long, device=det["scores"].device))
    overlap = (box_iou(boxes.float(), boxes.float()) > iou_threshold) & (labels[:, None] == labels)
    alive = torch.ones(n, dtype=torch.bool)
    keep, new_scores = [], []
    s64 = scores.double()
    for i in torch.sort(scores, descending=True, stable=True).indices.tolist():
        if not alive[i]:
            continue
        alive[i] = False
        victims = overlap[i] & alive
        alive &= ~victims
        keep.append(i)
        new_scores.append(min(1.0, float(s64[i] + s64[victims].sum())))
    keep_t = torch.tensor(keep, dtype=torch.long)
    new_t = torch.tensor(new_scores, dtype=torch.float64)
    order = torch.sort(new_t, descending=True, stable=True).indices
    out = _index(det, keep_t[order].to(det["scores"].device))
    out["scores"] = new_t[order].to(dtype=det["scores"].dtype, device=det["scores"].device)
    return out


def ablation_variants() -> list[tuple[str, float | None, Callable[[dict], dict]]]:
    """The sweep's rows in order: ``(method, iou, per-image function)``; ``("none", None, identity)`` first."""
    variants: list[tuple[str, float | None, Callable[[dict], dict]]] = [("none", None, lambda d: d)]
    variants += [("nms", iou, partial(nms_per_class, iou_threshold=iou)) for iou in NMS_IOUS]
    variants.append(("wta", WTA_IOU, partial(winner_take_all, iou_threshold=WTA_IOU)))
    return variants
