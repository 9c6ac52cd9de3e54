"""Which detections are correct: matching detections to ground truth, per image and class, two conventions.

``coco`` (default), as COCOeval matches at one IoU threshold: per image and
category, detections are visited in descending score order (ties: file order);
each takes the not-yet-matched non-crowd ground truth of highest IoU, if that IoU
is >= ``iou`` (one-to-one; between ground truths of equal IoU the later one in the
annotation file, as COCOeval's loop does). A detection that finds none but overlaps
a crowd region of its class by at least ``iou``, measured as the intersection over
the *detection's own area* (COCOeval's crowd IoU), is **ignored**: neither correct
nor wrong, left out of the metrics, as COCOeval leaves it out of AP. Any number of
detections may fall in one crowd region.

``netcal`` (the convention of the netcal library's detection examples): each
detection is compared with the non-crowd ground truth of its class of highest IoU
and is correct when that IoU is >= ``iou``; duplicates of one object are all
correct and nothing is ignored (crowd regions are not used).

IoU is computed on [x, y, w, h] boxes as given (no +1 pixel). The accuracy a
detection contributes to LaECE is its IoU with its matched ground truth (correct)
or 0 (wrong).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from .cocofiles import Detections, GroundTruth

MATCHINGS = ("coco", "netcal")


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas of xywh boxes ``a [N, 4]`` and ``b [M, 4]`` -> ``[N, M]``."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:])
    wh = np.clip(hi - lo, 0.0, None)
    return wh[..., 0] * wh[..., 1]


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xywh boxes ``a [N, 4]``, ``b [M, 4]`` -> ``[N, M]`` (0 where the union is empty)."""
    inter = _intersection(a, b)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def iof_xywh(det: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Intersection over the area of each ``det [N, 4]`` with each ``region [M, 4]`` -> ``[N, M]`` (0 if empty)."""
    inter = _intersection(det, region)
    area = (det[:, 2] * det[:, 3])[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, inter / area, 0.0)


def match_image(boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray, gt_crowd: np.ndarray,
                iou: float = 0.5, matching: str = "coco") -> tuple[np.ndarray, np.ndarray]:
    """Match one image's detections of one class; see the module doc.

    ``boxes [N, 4]`` and ``gt_boxes [G, 4]`` xywh, ``scores [N]``, ``gt_crowd [G]`` bool.
    Returns ``(matched_iou [N], ignored [N])`` in the detections' order:
    ``matched_iou`` is the IoU with the matched ground truth, NaN when unmatched.
    """
    matched = np.full(len(scores), np.nan)
    ignored = np.zeros(len(scores), dtype=bool)
    if matching not in MATCHINGS:
        raise ValueError(f"unknown matching {matching!r}; choose from {', '.join(MATCHINGS)}")
    ious = iou_xywh(boxes, gt_boxes[~gt_crowd])
    if matching == "netcal":
        if ious.shape[1]:
            best = ious.max(axis=1)
            matched[best >= iou] = best[best >= iou]
        return matched, ignored
    iofs = iof_xywh(boxes, gt_boxes[gt_crowd])
    taken = np.zeros(ious.shape[1], dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(taken, -1.0, ious[i])
        if len(cand):
            j = len(cand) - 1 - int(np.argmax(cand[::-1]))  # the last of equal IoUs, as COCOeval
            if cand[j] >= iou:
                taken[j] = True
                matched[i] = cand[j]
                continue
        ignored[i] = iofs.shape[1] > 0 and iofs[i].max() >= iou
    return matched, ignored


@dataclass
class Matches:
    """Per detection (aligned with a :class:`~drmm.evaluation.cocofiles.Detections`): the outcome of matching."""

    iou: np.ndarray  # [N] float64: IoU with the matched ground truth, 0 when unmatched or ignored
    correct: np.ndarray  # [N] bool
    ignored: np.ndarray  # [N] bool (coco matching: only a crowd region overlaps it)


def match(gt: GroundTruth, dets: Detections, iou: float = 0.5, matching: str = "coco") -> Matches:
    """Match every detection of ``dets`` to ``gt``, per image and category (see the module doc)."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(dets.image_id.tolist(), dets.category_id.tolist())):
        groups[key].append(i)
    matched = np.full(len(dets), np.nan)
    ignored = np.zeros(len(dets), dtype=bool)
    for key, idx in groups.items():
        gt_boxes, gt_crowd = gt.get(*key)
        m, ig = match_image(dets.boxes[idx], dets.scores[idx], gt_boxes, gt_crowd, iou, matching)
        matched[idx], ignored[idx] = m, ig
    correct = ~np.isnan(matched)
    return Matches(np.where(correct, matched, 0.0), correct, ignored)


def match_detections(detections: list[dict[str, Tensor]], targets: list[dict[str, Tensor]],
                     iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``coco`` matching of in-memory detections to ground truth without crowd regions.

    ``detections[i]``: ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels [N]``;
    ``targets[i]``: ``boxes [G, 4]`` xyxy, ``labels [G]``. Returns ``(scores, correct)``
    concatenated over images, each image's entries in the detections' order.
    """
    all_scores, all_correct = [], []
    for det, tgt in zip(detections, targets, strict=True):
        scores = det["scores"].detach().double().cpu().numpy()
        labels, gt_labels = det["labels"].cpu().numpy(), tgt["labels"].cpu().numpy()
        boxes, gt_boxes = (_xywh(b["boxes"]) for b in (det, tgt))
        correct = np.zeros(len(scores), dtype=bool)
        for c in np.unique(labels):
            d, g = labels == c, gt_labels == c
            m, _ = match_image(boxes[d], scores[d], gt_boxes[g], np.zeros(int(g.sum()), dtype=bool), iou_threshold)
            correct[d] = ~np.isnan(m)
        all_scores.append(scores)
        all_correct.append(correct)
    if not all_scores:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(all_scores), np.concatenate(all_correct)


def _xywh(boxes: Tensor) -> np.ndarray:
    b = boxes.detach().double().cpu().numpy().reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
