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
target serves (LaECE_0 for ``iou``, D-ECE for ``correct``), or "none" when no candidate
beats the raw scores there: the choice sees the half it is reported on, which flatters
every detector alike. A candidate's scores are the ones a model carrying it gives
(:class:`~drmm.models.score_calibration.ScoreCalibration`, strictly increasing), so AP
(pycocotools) is the raw scores' AP. ``laece_0_thr`` / ``laace_0_thr``: the paper's
protocol, LaECE_0 / LaACE_0 of the detections at or above each class's LRP-optimal
threshold, found on the fit half (under the candidate's map).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from ..models.score_calibration import ScoreCalibration
from .calibration_summary import CalibrationOptions, calibration_summary, count, split_halves
from .coco import coco_evaluate
from .cocofiles import Detections, GroundTruth
from .eccv_calibration import eccv_calibration, eccv_targets
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
    """COCO AP (IoU 0.5:0.95, 100 detections) of ``dets`` on ``image_ids`` (:func:`~drmm.evaluation.coco.coco_evaluate`)."""
    results = [{"image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
               for i, c, b, s in zip(dets.image_id, dets.category_id, dets.boxes, dets.scores)]
    return coco_evaluate(coco_gt, results, image_ids=list(image_ids))["AP"]


def lrp_thresholds(gt: GroundTruth, dets: Detections) -> dict[int, float]:
    """Each class's LRP-optimal score threshold on ``dets`` (classes without one keep every detection)."""
    per = eccv_calibration(gt, dets).per_class
    return {c: r["lrp_threshold"] for c, r in per.items() if r["lrp_threshold"] == r["lrp_threshold"]}


def measure(gt: GroundTruth, dets: Detections, coco_gt: COCO, image_ids: list[int],
            options: CalibrationOptions = CalibrationOptions(),
            thresholds: dict[int, float] | None = None) -> dict[str, float]:
    """AP, D-ECE, LaECE, LaECE_0, LaACE_0 and mean oLRP of ``dets`` on ``image_ids`` (their ground truth only);
    with ``thresholds`` (per category id) also LaECE_0 / LaACE_0 of the detections at or above them
    (``laece_0_thr``, ``laace_0_thr``: the paper's protocol, thresholds fitted on other images)."""
    gt = gt.subset(image_ids)
    s = calibration_summary(gt, dets, options)
    out = {"AP": average_precision(coco_gt, dets, image_ids), "d_ece": s.d_ece.ece, "laece": s.laece.laece,
           "laece_0": s.eccv.laece_0, "laace_0": s.eccv.laace_0, "lrp": s.eccv.lrp, "n": len(dets)}
    if thresholds is not None:
        thr = np.array([thresholds.get(int(c), 0.0) for c in dets.category_id])
        kept = eccv_calibration(gt, dets.subset(dets.scores >= thr))
        out.update(laece_0_thr=kept.laece_0, laace_0_thr=kept.laace_0)
    return out


def shipped_scores(cal: ClassCalibrators, dets: Detections, categories: list[int]) -> np.ndarray:
    """``dets``' scores through ``cal`` as a calibrated model gives them (:class:`ScoreCalibration`: strictly
    increasing, so no two scores tie and AP cannot move), float64 ``[N]``."""
    module = ScoreCalibration(cal.to_spec(), categories)
    label = {c: i for i, c in enumerate(categories)}
    labels = torch.tensor([label[int(c)] for c in dets.category_id], dtype=torch.int64)
    return module(torch.as_tensor(dets.scores)[None], labels[None])[0].numpy()


def heldout_calibration(gt: GroundTruth, dets: Detections, coco_gt: COCO,
                        options: CalibrationOptions = CalibrationOptions()) -> dict[str, Any]:
    """Every candidate fitted on the first half and measured on the second, the raw scores, the best per target.

    Returns JSON-ready ``{"as_trained", "candidates": [...], "best": {"iou": ..., "correct": ...}, "split", ...}``;
    each candidate is ``{"target", "method", "per_class", "params", metrics...}``. A candidate's scores are
    what a model carrying it gives (:func:`shipped_scores`); the LRP-optimal thresholds of ``*_thr`` come
    from the fit half's scores under the same map. The best of a target is "none" when no candidate
    beats the raw scores on its metric.
    """
    fit, report = split_halves(gt, dets)
    fit_gt = gt.subset(sorted(gt.image_ids)[0::2])  # each half is matched against its own images only
    ids, categories = sorted(gt.image_ids)[1::2], sorted(gt.categories)
    raw = measure(gt, report, coco_gt, ids, options, lrp_thresholds(fit_gt, fit))
    out: dict[str, Any] = {"as_trained": raw, "candidates": [], "skipped": [], "n_fit": len(fit),
                           "n_report": len(report),
                           "split": "fitted on the val images at even positions of the sorted image ids, "
                                    "measured on the odd ones"}
    for target in TARGETS:
        for method in METHODS:
            for per_class in (False, True):
                cal = fit_on(fit_gt, fit, method, target, per_class, options)
                name = {"target": target, "method": method, "per_class": per_class}
                try:
                    mapped = replace(report, scores=shipped_scores(cal, report, categories))
                    thr = lrp_thresholds(fit_gt, replace(fit, scores=shipped_scores(cal, fit, categories)))
                except ValueError as e:  # e.g. a Platt slope <= 0, which no model may carry
                    out["skipped"].append({**name, "why": str(e)})
                    continue
                out["candidates"].append({**name, "params": cal.params, "fallbacks": len(cal.fallbacks()),
                                          **measure(gt, mapped, coco_gt, ids, options, thr)})
    out["best"] = {}
    for t, m in TARGETS.items():
        best = min((c for c in out["candidates"] if c["target"] == t), key=lambda c: _key(c[m]), default=None)
        out["best"][t] = best if best is not None and _key(best[m]) < _key(raw[m]) else {
            "target": t, "method": "none", "per_class": False, **raw}
    return out


def _key(v: float) -> float:
    return v if v == v else float("inf")  # NaN last
