"""Optional post-processing of one image's detections: per-class NMS and winner-take-all.

D-RMM itself is NMS-free; these exist for the ablations (paper Table 3). Both take
and return a detection dict ``{"boxes": [N, 4] xyxy, "scores": [N], "labels": [N]}``;
any other tensor entry with a leading dimension of N is indexed along, everything
else is passed through. Dtypes and devices are preserved.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou


def _index(det: dict, keep: Tensor) -> dict:
    n = len(det["scores"])
    return {k: v[keep] if isinstance(v, Tensor) and v.dim() and len(v) == n else v
            for k, v in det.items()}


def nms_per_class(det: dict, iou_threshold: float) -> dict:
    """Class-wise NMS (suppress IoU > ``iou_threshold``); kept boxes in descending score order."""
    keep = batched_nms(det["boxes"], det["scores"], det["labels"], iou_threshold)
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
