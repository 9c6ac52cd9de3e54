"""LaECE_0, LaACE_0, LRP and the LRP-optimal thresholds (Kuzucu, Oksuz et al., ECCV 2024), pure numpy.

Definitions follow the authors' code, github.com/fiveai/detection_calibration
(``src/detection_calibration/``): ``coco_calibration.py`` (``CalibrationCOCO.prepare_input``,
``compute_single_errors``, ``accumulate_errors``, ``compute_LRP``, ``evaluate_calibration``)
and ``pycocotools_lrp/cocoeval.py`` (``COCOeval.evaluateImg``, ``accumulate``: oLRP, ``lrp_opt_thr``).

* **Matching** (``evaluateImg`` with ``iouThrs = [tau]``): COCOeval's greedy one-to-one
  matching per image and class, a match needing IoU >= ``tau``. It is drmm's ``coco``
  matching (:func:`drmm.evaluation.matching.match`), reused at ``tau``. ``tau = 0``
  (``DetectionCalibration``'s default; their code prints "LaECE_0" / "LaACE_0" only when
  ``tau == 0``): the subscript 0 is this IoU threshold. So a detection takes the
  remaining ground truth of highest IoU *whatever the IoU, 0 included*; a detection
  left with none is a false positive, or ignored if a crowd region of its class is in
  the image (as their code at ``tau = 0``). Ignored detections count nowhere.
* **Target** of a detection: its IoU with its ground truth if a true positive, else 0.
* **Classes** (``prepare_input``): only classes with a non-crowd ground truth in the
  annotation file (``npig > 0``); detections of other classes are left out of everything.
* **LaECE_0** (``compute_single_errors``): per class, 25 equal-width bins on [0, 1]
  (``np.linspace``), bin 0 = ``[0, 1/B]``, bin m = ``(m/B, (m+1)/B]`` (right-closed, unlike
  drmm's D-ECE bins); ``sum_m |B_m| / n_c |mean target - mean score|``; then the mean over
  classes with a detection (``accumulate_errors``).
* **LaACE_0**: adaptive (equal-mass) bins; their code uses one detection per bin, so per
  class the mean of ``|target - score|``; then the mean over classes. :func:`adaptive_bins`
  also makes ``B`` equal-count bins (the figure).
* **LRP** (``compute_LRP``, ``accumulate``): ``(sum_TP (1 - IoU) / (1 - tau) + FP + FN) /
  (TP + FP + FN)``, ``FN = n_gt - TP``; 1 for a class without a true positive. **oLRP**: its
  minimum over score thresholds (detections sorted by descending score, cumulated), and the
  **LRP-optimal threshold** the score where it is reached (none without a true positive).
  ``lrp`` in calibration.json is the mean oLRP over classes with ground truth.

No score threshold (``min_score``) is applied: every detection of the file counts. The
paper evaluates calibration *after* removing detections below each class's LRP-optimal
threshold, fitted on a validation set; :func:`eccv_calibration` reports that too
(``*_at_lrp_thresholds``), with thresholds from the same detections (in-sample).

Deliberate differences from their code: (1) a class whose error is exactly 0 counts as
0 (their ``accumulate_errors`` turns 0 into NaN and drops it, so a perfectly calibrated
detector got NaN); (2) LaACE_0 leaves ignored (crowd) detections out as LaECE_0 does
(their ``cl_dets = np.logical_or(tps.sum(), fps.sum())`` is one boolean, which selects
every detection, ignored ones with target 0); (3) oLRP is only evaluated after the last of
detections with equal scores, so it is exactly the LRP of the detections scoring >= the
threshold; (4) no per-image cap of 100 detections per class (``maxDets``): drmm's
detectors emit top-k per image already.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .calibration import CalibrationResult
from .cocofiles import Detections, GroundTruth
from .matching import match

TAU = 0.0  # the IoU a true positive needs (their DetectionCalibration default; the "0" of LaECE_0)


def equal_width_bins(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each score in [0, 1] ``[N] -> [N]``: bin 0 is ``[0, 1/B]``, bin m ``(m/B, (m+1)/B]`` (their bins)."""
    if n_bins < 1:
        raise ValueError(f"the number of bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, scores, side="left") - 1, 0, n_bins - 1)


def adaptive_bins(scores: np.ndarray, n_bins: int | None = None) -> np.ndarray:
    """Equal-count bin of each score ``[N] -> [N]``: sorted ascending (stable), position p -> ``p * B // N``.

    ``n_bins=None`` (or >= N): one detection per bin (LaACE_0). Bin sizes differ by at most one.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = len(scores)
    b = n if n_bins is None else min(int(n_bins), n)
    if n_bins is not None and n_bins < 1:
        raise ValueError(f"the number of bins must be >= 1, got {n_bins}")
    out = np.zeros(n, dtype=np.int64)
    out[np.argsort(scores, kind="stable")] = np.arange(n) * b // max(n, 1)
    return out


def binned_error(scores: np.ndarray, target: np.ndarray, bins: np.ndarray,
                 n_bins: int) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """``sum_m |B_m| / N |mean target(B_m) - mean score(B_m)|`` of ``scores [N]``, ``target [N]`` in bins ``bins [N]``.

    Returns ``(error, mean score [n_bins], mean target [n_bins], count [n_bins])``; NaN where empty, and
    an error of NaN for ``N == 0``.
    """
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(bins, weights=scores, minlength=n_bins) / count
        acc = np.bincount(bins, weights=target, minlength=n_bins) / count
    nz = count > 0
    err = float(np.sum(count[nz] / len(scores) * np.abs(acc[nz] - conf[nz]))) if len(scores) else float("nan")
    return err, conf, acc, count


def laece_0_class(scores: np.ndarray, target: np.ndarray, n_bins: int = 25) -> float:
    """LaECE of one class's ``scores [N]`` with IoU targets ``target [N]`` over their equal-width bins."""
    return binned_error(scores, target, equal_width_bins(scores, n_bins), n_bins)[0]


def laace_0_class(scores: np.ndarray, target: np.ndarray, n_bins: int | None = None) -> float:
    """LaACE of one class over equal-count bins (default one detection per bin: mean ``|target - score|``)."""
    b = len(scores) if n_bins is None else min(n_bins, len(scores))
    return binned_error(scores, target, adaptive_bins(scores, b), b)[0]


@dataclass
class LRPResult:
    """oLRP of one class, the LRP-optimal threshold and the components there (NaN where undefined)."""

    olrp: float
    threshold: float  # the lowest score kept; NaN without a true positive
    loc: float  # mean (1 - IoU) of the true positives
    fp: float  # FP / (TP + FP)
    fn: float  # FN / n_gt


def lrp(tp: np.ndarray, iou: np.ndarray, n_gt: int, tau: float = TAU) -> float:
    """LRP of a set of detections: ``tp [N]`` bool, ``iou [N]`` (of the TPs), ``n_gt`` ground truths (> 0)."""
    n_tp, n_fp = int(tp.sum()), int((~tp).sum())
    if n_tp == 0:
        return 1.0
    loc = float(np.sum(1.0 - iou[tp]))
    return (loc / (1.0 - tau) + n_fp + n_gt - n_tp) / (n_fp + n_gt)


def optimal_lrp(scores: np.ndarray, tp: np.ndarray, iou: np.ndarray, n_gt: int, tau: float = TAU) -> LRPResult:
    """oLRP over thresholds ``score >= t`` of one class: ``scores [N]``, ``tp [N]`` bool, ``iou [N]``, ``n_gt > 0``.

    LRP at each distinct score (after the last detection with that score, descending); the first minimum.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, t = np.asarray(scores, dtype=np.float64)[order], np.asarray(tp, dtype=bool)[order]
    if not t.any():
        return LRPResult(1.0, float("nan"), float("nan"), float("nan"), 1.0)
    n_tp, n_fp = np.cumsum(t), np.cumsum(~t)
    loc = n_tp - np.cumsum(np.where(t, np.asarray(iou, dtype=np.float64)[order], 0.0))
    n_fn = n_gt - n_tp
    curve = (loc / (1.0 - tau) + n_fp + n_fn) / (n_tp + n_fp + n_fn)
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # the last of each run of equal scores
    i = ends[int(np.argmin(curve[ends]))]
    with np.errstate(invalid="ignore", divide="ignore"):
        return LRPResult(float(curve[i]), float(s[i]), float(loc[i] / n_tp[i]), float(n_fp[i] / (i + 1)),
                         float(n_fn[i] / n_gt))


@dataclass
class EccvTargets:
    """Detections as the ECCV 2024 metrics see them (file order, ignored ones and classes without GT left out)."""

    scores: np.ndarray  # [n] float64
    tp: np.ndarray  # [n] bool
    iou: np.ndarray  # [n] float64: the target (IoU with the matched ground truth, 0 for a false positive)
    labels: np.ndarray  # [n] category ids
    n_gt: dict[int, int]  # per category with a non-crowd ground truth: how many


def eccv_targets(gt: GroundTruth, dets: Detections, tau: float = TAU) -> EccvTargets:
    """Match ``dets`` to ``gt`` at IoU >= ``tau`` (COCOeval's rule) and keep what the metrics use (module doc)."""
    if not 0 <= tau < 1:
        raise ValueError(f"the IoU threshold tau of LaECE_0 / LRP must be in [0, 1), got {tau}")
    n_gt: dict[int, int] = {}
    for (_, cat), crowd in gt.crowd.items():
        n_gt[cat] = n_gt.get(cat, 0) + int((~crowd).sum())
    n_gt = {c: n for c, n in sorted(n_gt.items()) if n > 0}
    m = match(gt, dets, tau, "coco")
    keep = ~m.ignored & np.isin(dets.category_id, list(n_gt))
    return EccvTargets(dets.scores[keep], m.correct[keep], m.iou[keep], dets.category_id[keep], n_gt)


def pooled_bins(scores: np.ndarray, target: np.ndarray, n_bins: int, adaptive: bool, error: float) -> CalibrationResult:
    """All classes' detections in one table (figures); ``error`` (the class mean) goes in ``ece``.

    Adaptive bins get contiguous edges: 0, the midpoints between neighbouring bins' scores, 1.
    """
    if adaptive and len(scores):
        b = min(n_bins, len(scores))
        idx = adaptive_bins(scores, b)
        lo = np.array([scores[idx == k].min() for k in range(b)])
        hi = np.array([scores[idx == k].max() for k in range(b)])
        edges = np.concatenate([[0.0], (hi[:-1] + lo[1:]) / 2, [1.0]])
    else:
        b = n_bins
        idx = equal_width_bins(scores, b)
        edges = np.linspace(0.0, 1.0, b + 1)
    _, conf, acc, count = binned_error(scores, target, idx, b)
    return CalibrationResult(error, edges, conf, acc, count, len(scores), 0.0)


@dataclass
class EccvCalibration:
    """LaECE_0, LaACE_0, mean oLRP and per class; the pooled bins (figures); the same at the LRP thresholds."""

    laece_0: float
    laace_0: float
    lrp: float  # mean oLRP over classes with ground truth
    per_class: dict[int, dict[str, Any]]
    bins_laece_0: CalibrationResult
    bins_laace_0: CalibrationResult
    laece_0_at_lrp_thresholds: float
    laace_0_at_lrp_thresholds: float
    n: int
    tau: float

    def thresholds(self) -> dict[str, float | None]:
        """``{category id: LRP-optimal threshold}`` (None: the class has no true positive)."""
        return {str(c): (None if np.isnan(r["lrp_threshold"]) else r["lrp_threshold"])
                for c, r in self.per_class.items()}

    def to_json(self, names: dict[int, str] | None = None) -> dict[str, Any]:
        """The ``eccv`` object of calibration.json: values, per class, bin tables, the choices."""
        names = names or {}
        per_class = {str(c): {"name": names.get(c, str(c)), **{k: (None if isinstance(v, float) and np.isnan(v) else v)
                                                              for k, v in r.items()}}
                     for c, r in self.per_class.items()}
        return {"laece_0": self.laece_0, "laace_0": self.laace_0, "lrp": self.lrp, "n": self.n, "tau": self.tau,
                "laece_0_at_lrp_thresholds": self.laece_0_at_lrp_thresholds,
                "laace_0_at_lrp_thresholds": self.laace_0_at_lrp_thresholds, "per_class": per_class,
                "bins": {"laece_0_pooled": self.bins_laece_0.bins_json(),
                         "laace_0_pooled": self.bins_laace_0.bins_json()},
                "definitions": "Kuzucu, Oksuz et al. ECCV 2024 (github.com/fiveai/detection_calibration); "
                               "see drmm/evaluation/eccv_calibration.py"}


def _class_means(t: EccvTargets, keep: np.ndarray, n_bins: int) -> tuple[float, float, dict[int, tuple[float, float]]]:
    per = {}
    for c in t.n_gt:
        sel = keep & (t.labels == c)
        if sel.any():
            per[c] = (laece_0_class(t.scores[sel], t.iou[sel], n_bins), laace_0_class(t.scores[sel], t.iou[sel]))
    if not per:
        return float("nan"), float("nan"), per
    return float(np.mean([v[0] for v in per.values()])), float(np.mean([v[1] for v in per.values()])), per


def eccv_calibration(gt: GroundTruth, dets: Detections, n_bins: int = 25, tau: float = TAU) -> EccvCalibration:
    """LaECE_0 (``n_bins`` equal-width bins per class), LaACE_0, oLRP and LRP-optimal thresholds of ``dets``."""
    t = eccv_targets(gt, dets, tau)
    laece, laace, per = _class_means(t, np.ones(len(t.scores), dtype=bool), n_bins)
    per_class: dict[int, dict[str, Any]] = {}
    keep_thr = np.zeros(len(t.scores), dtype=bool)
    for c, n_gt in t.n_gt.items():
        sel = t.labels == c
        r = optimal_lrp(t.scores[sel], t.tp[sel], t.iou[sel], n_gt, tau)
        keep_thr[sel] = t.scores[sel] >= r.threshold if not np.isnan(r.threshold) else True  # none: all kept
        la, lac = per.get(c, (float("nan"), float("nan")))
        per_class[c] = {"n": int(sel.sum()), "n_tp": int(t.tp[sel].sum()), "n_gt": n_gt, "laece_0": la,
                        "laace_0": lac, "olrp": r.olrp, "lrp_threshold": r.threshold, "olrp_loc": r.loc,
                        "olrp_fp": r.fp, "olrp_fn": r.fn}
    laece_thr, laace_thr, _ = _class_means(t, keep_thr, n_bins)
    mean_lrp = float(np.mean([r["olrp"] for r in per_class.values()])) if per_class else float("nan")
    return EccvCalibration(laece, laace, mean_lrp, per_class, pooled_bins(t.scores, t.iou, n_bins, False, laece),
                           pooled_bins(t.scores, t.iou, n_bins, True, laace), laece_thr, laace_thr,
                           len(t.scores), tau)
