"""A detector as trained and with its best post-hoc calibrator, fitted on one half of the images, measured on the other.

The honest comparison of issue 26 (``drmm reproduce``, ``docs/results.md``): the images
are split by :func:`~drmm.evaluation.calibration_summary.split_halves` (even / odd
positions of the sorted image ids); every candidate calibrator is fitted on the first
half and measured on the second, with the detector's raw scores measured on the same
second half. Candidates: temperature, Platt and isotonic (:mod:`~drmm.evaluation.posthoc`),
one map for all classes or one per class, each fitted to one of two targets:

* ``correct``: 1 for a detection correct at IoU >= 0.5, else 0, over the detections
  D-ECE counts (score >= ``min_score``): what D-ECE measures;
* ``iou``: the IoU of the detection's match at IoU >= 0 (0 for a false positive),
  over all detections: what LaECE_0 / LaACE_0 measure (Kuzucu et al. 2024 fit their
  calibrators to this localisation-aware target).

"Best" is the candidate with the lowest value on the measured half of the metric its
target serves (LaECE_0 for ``iou``, D-ECE for ``correct``): the choice sees the half it is
reported on, which flatters every detector alike. AP is computed (pycocotools) with the
calibrated scores: monotone maps keep each class's ranking, but flat isotonic steps tie
scores, which can move AP a little.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .calibration_summary import CalibrationOptions, calibration_summary, count, split_halves
from .cocofiles import Detections, GroundTruth
from .eccv_calibration import eccv_targets
from .posthoc import METHODS, ClassCalibrators, fit_calibrators

TARGETS = {"correct": "d_ece", "iou": "laece_0"}  # fit target -> the metric it serves (and chooses the best by)


def fit_on(gt: GroundTruth, dets: Detections, method: str, target: str, per_class: bool,
           options: CalibrationOptions = CalibrationOptions()) -> ClassCalibrators:
    """A ``method`` calibrator fitted on ``dets`` to ``target`` (``correct`` or ``iou``; see the module doc)."""
    if target == "correct":
        c = count(gt, dets, options)
        scores, y, labels = c.scores, c.correct, c.labels
    elif target == "iou":
        t = eccv_targets(gt, dets)
        scores, y, labels = t.scores, t.iou, t.labels
    else:
        raise ValueError(f"unknown calibration target {target!r}; choose from {', '.join(TARGETS)}")
    return fit_calibrators(method, scores, y, labels, gt.categories if per_class else None)


def average_precision(coco_gt: COCO, dets: Detections, image_ids: list[int]) -> float:
    """COCO AP (IoU 0.5:0.95, 100 detections) of ``dets`` on ``image_ids``; 0 without detections."""
    if not len(dets):
        return 0.0
    results = [{"image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
               for i, c, b, s in zip(dets.image_id, dets.category_id, dets.boxes, dets.scores)]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return float(ev.stats[0])


def measure(gt: GroundTruth, dets: Detections, coco_gt: COCO, image_ids: list[int],
            options: CalibrationOptions = CalibrationOptions()) -> dict[str, float]:
    """AP, D-ECE, LaECE, LaECE_0, LaACE_0 and mean oLRP of ``dets`` on ``image_ids`` (their ground truth only)."""
    s = calibration_summary(gt.subset(image_ids), dets, options)
    return {"AP": average_precision(coco_gt, dets, image_ids), "d_ece": s.d_ece.ece, "laece": s.laece.laece,
            "laece_0": s.eccv.laece_0, "laace_0": s.eccv.laace_0, "lrp": s.eccv.lrp, "n": len(dets)}


def heldout_calibration(gt: GroundTruth, dets: Detections, coco_gt: COCO,
                        options: CalibrationOptions = CalibrationOptions()) -> dict[str, Any]:
    """Every candidate fitted on the first half and measured on the second, the raw scores, the best per target.

    Returns JSON-ready ``{"as_trained", "candidates": [...], "best": {"iou": ..., "correct": ...}, "split", ...}``;
    each candidate is ``{"target", "method", "per_class", "params", metrics...}``.
    """
    fit, report = split_halves(gt, dets)
    fit_gt = gt.subset(sorted(gt.image_ids)[0::2])  # each half is matched against its own images only
    ids = sorted(gt.image_ids)[1::2]
    out: dict[str, Any] = {"as_trained": measure(gt, report, coco_gt, ids, options), "candidates": [],
                           "n_fit": len(fit), "n_report": len(report),
                           "split": "fitted on the val images at even positions of the sorted image ids, "
                                    "measured on the odd ones"}
    for target in TARGETS:
        for method in METHODS:
            for per_class in (False, True):
                cal = fit_on(fit_gt, fit, method, target, per_class, options)
                calibrated = replace(report, scores=np.clip(cal(report.scores, report.category_id), 0.0, 1.0))
                out["candidates"].append({"target": target, "method": method, "per_class": per_class,
                                          "params": cal.params, "fallbacks": len(cal.fallbacks()),
                                          **measure(gt, calibrated, coco_gt, ids, options)})
    out["best"] = {t: min((c for c in out["candidates"] if c["target"] == t), key=lambda c: _key(c[m]))
                   for t, m in TARGETS.items()}
    return out


def _key(v: float) -> float:
    return v if v == v else float("inf")  # NaN last
