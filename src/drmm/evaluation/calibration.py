"""The detection calibration metrics, D-ECE and LaECE, and the per-bin statistics behind them; no figures.

Both take detections already matched (:mod:`drmm.evaluation.matching`) and leave
out the ignored ones and those scoring below ``min_score`` (default 0.05: detectors
emit many near-zero boxes that would otherwise fill the lowest bin).

* **Bins**: ``B`` equal-width bins on [0, 1]; bin ``m`` holds the scores ``s`` with
  ``m / B <= s < (m + 1) / B`` (edges computed as ``m / B``), and 1.0 falls in the
  last bin. A score exactly on an edge belongs to the bin above it.
* **D-ECE** (Küppers et al. 2020; paper eq. 9): ``sum_m |B_m| / n * |precision(B_m) -
  mean score(B_m)|`` over ``bins`` bins (default 10), ``n`` the detections counted,
  precision the fraction of them that are correct; the classes pooled.
* **LaECE** (Oksuz et al. 2023): per class ``c``, the accuracy of a correct detection
  is its IoU with its ground truth and of a wrong one 0; ``LaECE_c = sum_m |B_m| / n_c
  * |mean accuracy(B_m) - mean score(B_m)|`` over ``laece_bins`` bins (default 25);
  LaECE is the mean of ``LaECE_c`` over the classes that have detections counted.

Empty bins contribute nothing; with no detection counted the value is NaN. Bins
stay on [0, 1] whatever ``min_score`` is, so values compare across thresholds. The
figures drawn from these statistics are in :mod:`drmm.plotting`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """The bin of each value in [0, 1] (see the module doc): ``m`` with ``m / n_bins <= v < (m + 1) / n_bins``."""
    if n_bins < 1:
        raise ValueError(f"the number of bins must be >= 1, got {n_bins}")
    edges = np.arange(n_bins + 1) / n_bins
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_bins - 1)


@dataclass
class BinStatistics:
    """Values binned on [0, 1]: bin ``m`` is ``[m / B, (m + 1) / B)``, 1.0 in the last; NaN where empty."""

    edges: np.ndarray  # (n_bins + 1,)
    conf: np.ndarray  # (n_bins,) mean value per bin
    acc: np.ndarray  # (n_bins,) mean accuracy (fraction correct, or mean IoU-accuracy) per bin
    count: np.ndarray  # (n_bins,) int


def bin_statistics(values: np.ndarray, accuracy: np.ndarray, n_bins: int) -> BinStatistics:
    """Per-bin mean value, mean accuracy and count of ``values [N]`` with ``accuracy [N]`` (bool or in [0, 1])."""
    values = np.asarray(values, dtype=np.float64).ravel()
    accuracy = np.asarray(accuracy, dtype=np.float64).ravel()
    if values.shape != accuracy.shape:
        raise ValueError(f"values {values.shape} and correct {accuracy.shape} differ in length")
    idx = bin_index(values, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=values, minlength=n_bins) / count
        acc = np.bincount(idx, weights=accuracy, minlength=n_bins) / count
    return BinStatistics(np.arange(n_bins + 1) / n_bins, conf, acc, count)


@dataclass
class CalibrationResult:
    """One calibration error and the per-bin statistics behind it.

    ``bin_conf``/``bin_acc`` are NaN for empty bins. ``n`` counts the detections
    counted (score >= ``min_score``); ``ece`` is NaN when ``n == 0``.
    """

    ece: float
    bin_edges: np.ndarray  # (n_bins + 1,)
    bin_conf: np.ndarray  # (n_bins,) mean score per bin
    bin_acc: np.ndarray  # (n_bins,) mean accuracy per bin
    bin_count: np.ndarray  # (n_bins,) int
    n: int
    min_score: float

    def bins_json(self) -> list[dict]:
        """The bin table as JSON rows: ``lo``, ``hi``, ``count``, ``mean_score``, ``accuracy`` (null where empty)."""
        return [{"lo": float(lo), "hi": float(hi), "count": int(c),
                 "mean_score": float(s) if c else None, "accuracy": float(a) if c else None}
                for lo, hi, c, s, a in zip(self.bin_edges[:-1], self.bin_edges[1:], self.bin_count, self.bin_conf,
                                           self.bin_acc)]


def expected_calibration_error(scores: np.ndarray, accuracy: np.ndarray, n_bins: int = 10,
                               min_score: float = 0.05) -> CalibrationResult:
    """ECE of ``scores [N]`` with ``accuracy [N]`` (correct: bool; or IoU-accuracy) over ``n_bins`` bins on [0, 1].

    Scores < ``min_score`` are left out. With boolean ``accuracy`` this is D-ECE.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    accuracy = np.asarray(accuracy, dtype=np.float64).ravel()
    keep = scores >= min_score
    bins = bin_statistics(scores[keep], accuracy[keep], n_bins)
    n = int(bins.count.sum())
    nz = bins.count > 0
    ece = float(np.sum(bins.count[nz] / n * np.abs(bins.acc[nz] - bins.conf[nz]))) if n else float("nan")
    return CalibrationResult(ece, bins.edges, bins.conf, bins.acc, bins.count, n, float(min_score))


@dataclass
class LaECEResult:
    """LaECE: the class mean, each class's error and bins, and all classes' detections binned together (figures)."""

    laece: float
    per_class: dict[int, CalibrationResult]  # classes with at least one detection counted
    pooled: CalibrationResult  # every class's detections in one set of bins; its ``ece`` is ``laece``


def localisation_aware_ece(scores: np.ndarray, iou: np.ndarray, labels: np.ndarray, n_bins: int = 25,
                           min_score: float = 0.05) -> LaECEResult:
    """LaECE of ``scores [N]`` with ``iou [N]`` (IoU with the matched ground truth, 0 when wrong) and ``labels [N]``.

    See the module doc: per class over ``n_bins`` bins, then the mean over the
    classes with a detection scoring >= ``min_score``.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    iou = np.asarray(iou, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    keep = scores >= min_score
    per_class = {int(c): expected_calibration_error(scores[labels == c], iou[labels == c], n_bins, min_score)
                 for c in np.unique(labels[keep])}
    laece = float(np.mean([r.ece for r in per_class.values()])) if per_class else float("nan")
    pooled = expected_calibration_error(scores, iou, n_bins, min_score)
    pooled.ece = laece
    return LaECEResult(laece, per_class, pooled)
