"""The detection calibration metric (D-ECE) and the per-bin statistics behind it; no figures.

ECE (paper eq. 9) is ``sum_m |B_m| / n * |acc(B_m) - conf(B_m)|`` over equal-width
confidence bins on [0, 1]. For detection, "accuracy" needs a notion of a correct
prediction; our convention (D-ECE):

* a prediction is correct when it is matched to a not-yet-matched ground truth
  of the same class with IoU >= 0.5, matching greedily in descending score order
  per image (each ground truth matched at most once);
* ``acc(B_m)`` is the fraction of correct predictions in bin ``m`` and
  ``conf(B_m)`` their mean score;
* predictions scoring below ``min_score`` (default 0.05) are left out, since
  detectors emit many near-zero boxes that would otherwise dominate the lowest bin.

The figures drawn from these statistics are in :mod:`drmm.plotting`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou


def match_detections(
    detections: list[dict], targets: list[dict], iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy per-image matching of detections to ground truth.

    ``detections[i]``: ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels [N]``;
    ``targets[i]``: ``boxes [G, 4]``, ``labels [G]``. Detections are visited in
    descending score order; each takes the unmatched same-class ground truth of
    highest IoU if that IoU is >= ``iou_threshold``. Returns ``(scores, correct)``
    concatenated over images, each image's entries in the detections' original
    order (so they stay aligned with any other per-detection array, e.g. class
    probability and objectness).
    """
    all_scores, all_correct = [], []
    for det, tgt in zip(detections, targets, strict=True):
        scores = det["scores"].detach().float().cpu()
        correct = np.zeros(len(scores), dtype=bool)
        gt_boxes = tgt["boxes"].detach().float().cpu()
        if len(scores) and len(gt_boxes):
            iou = box_iou(det["boxes"].detach().float().cpu(), gt_boxes)
            same = det["labels"].cpu()[:, None] == tgt["labels"].cpu()[None, :]
            # Candidate pairs: same class and enough overlap; -1 marks "never".
            iou = torch.where(same & (iou >= iou_threshold), iou, -1.0).numpy()
            taken = np.zeros(len(gt_boxes), dtype=bool)
            for i in torch.sort(scores, descending=True, stable=True).indices.tolist():
                cand = np.where(taken, -1.0, iou[i])
                j = int(cand.argmax())
                if cand[j] >= 0:
                    taken[j] = correct[i] = True
        all_scores.append(scores.numpy())
        all_correct.append(correct)
    if not all_scores:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool)
    return np.concatenate(all_scores), np.concatenate(all_correct)


@dataclass
class BinStatistics:
    """Values binned on [0, 1]: bin ``m`` is ``[edges[m], edges[m+1])``, 1.0 in the last; NaN where empty."""

    edges: np.ndarray  # (n_bins + 1,)
    conf: np.ndarray  # (n_bins,) mean value per bin
    acc: np.ndarray  # (n_bins,) fraction correct per bin
    count: np.ndarray  # (n_bins,) int


def bin_statistics(values: np.ndarray, correct: np.ndarray, n_bins: int) -> BinStatistics:
    """Per-bin mean value, accuracy and count of ``values [N]`` with ``correct [N]`` over equal-width bins."""
    values = np.asarray(values, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if values.shape != correct.shape:
        raise ValueError(f"values {values.shape} and correct {correct.shape} differ in length")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=values, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return BinStatistics(edges, conf, acc, count)


@dataclass
class CalibrationResult:
    """Per-bin statistics behind an ECE value.

    ``bin_conf``/``bin_acc`` are NaN for empty bins. ``n`` counts the predictions
    kept (score >= ``min_score``); ``ece`` is NaN when ``n == 0``.
    """

    ece: float
    bin_edges: np.ndarray  # (n_bins + 1,)
    bin_conf: np.ndarray  # (n_bins,) mean score per bin
    bin_acc: np.ndarray  # (n_bins,) fraction correct per bin
    bin_count: np.ndarray  # (n_bins,) int
    n: int
    min_score: float


def expected_calibration_error(
    scores: np.ndarray, correct: np.ndarray, n_bins: int = 10, min_score: float = 0.05
) -> CalibrationResult:
    """ECE of ``scores [N]`` with ``correct [N]`` over ``n_bins`` equal-width bins on [0, 1].

    Scores < ``min_score`` are ignored. Bins stay on [0, 1] whatever ``min_score``
    is, so values are comparable across thresholds; empty bins contribute nothing.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    keep = scores >= min_score
    bins = bin_statistics(scores[keep], correct[keep], n_bins)
    n = int(bins.count.sum())
    nz = bins.count > 0
    ece = float(np.sum(bins.count[nz] / n * np.abs(bins.acc[nz] - bins.conf[nz]))) if n else float("nan")
    return CalibrationResult(ece, bins.edges, bins.conf, bins.acc, bins.count, n, float(min_score))
