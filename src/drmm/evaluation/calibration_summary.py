"""One detector's calibration from its COCO results: matching, D-ECE, LaECE, post-hoc calibration, calibration.json.

The one code path behind ``drmm calibration`` and the ECE / LaECE of ``drmm eval``:
:func:`calibration_summary` matches a results file to its annotation file
(:mod:`~drmm.evaluation.matching`), keeps the detections the metrics count (not
ignored, score >= ``min_score``) and computes D-ECE and LaECE
(:mod:`~drmm.evaluation.calibration`) over all classes and per class.
:func:`posthoc_comparison` fits a calibrator (:mod:`~drmm.evaluation.posthoc`) on one
set of detections and measures another before and after; the detections counted
after calibration are those counted before (chosen by their original score), so the
two numbers describe the same detections. :func:`split_halves` splits one set by
image for that.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .calibration import CalibrationResult, LaECEResult, expected_calibration_error, localisation_aware_ece
from .cocofiles import Detections, GroundTruth
from .eccv_calibration import EccvCalibration, eccv_calibration
from .matching import MATCHINGS, match
from .posthoc import ClassCalibrators, fit_calibrators


@dataclass(frozen=True)
class CalibrationOptions:
    """The choices behind the numbers (written to calibration.json with them)."""

    iou: float = 0.5
    min_score: float = 0.05
    bins: int = 10
    laece_bins: int = 25
    matching: str = "coco"

    def __post_init__(self) -> None:
        if not 0 < self.iou <= 1:
            raise ValueError(f"--iou must be in (0, 1], got {self.iou}")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"--min-score must be in [0, 1], got {self.min_score}")
        if self.bins < 1 or self.laece_bins < 1:
            raise ValueError(f"--bins and --laece-bins must be >= 1, got {self.bins} and {self.laece_bins}")
        if self.matching not in MATCHINGS:
            raise ValueError(f"--matching must be one of {', '.join(MATCHINGS)}, got {self.matching!r}")


@dataclass
class Counted:
    """The detections the metrics count, in file order, and what was left out."""

    scores: np.ndarray  # [n] float64
    correct: np.ndarray  # [n] bool
    iou: np.ndarray  # [n] IoU with the matched ground truth, 0 when wrong
    labels: np.ndarray  # [n] category ids
    keep: np.ndarray  # [N] bool over the Detections entries: which are counted
    ignored: int  # detections ignored by the matching (only a crowd region overlaps them)
    below_min_score: int  # the others scoring < min_score


def count(gt: GroundTruth, dets: Detections, options: CalibrationOptions) -> Counted:
    """Match ``dets`` to ``gt`` and keep what the metrics count (not ignored, score >= ``min_score``)."""
    m = match(gt, dets, options.iou, options.matching)
    keep = ~m.ignored & (dets.scores >= options.min_score)
    return Counted(dets.scores[keep], m.correct[keep], m.iou[keep], dets.category_id[keep], keep,
                   int(m.ignored.sum()), int((~m.ignored & ~keep).sum()))


@dataclass
class CalibrationSummary:
    """D-ECE and LaECE of the counted detections, pooled and per class."""

    d_ece: CalibrationResult
    laece: LaECEResult
    per_class_d_ece: dict[int, CalibrationResult]
    counted: Counted
    options: CalibrationOptions
    eccv: EccvCalibration | None = None  # LaECE_0, LaACE_0, LRP over all detections (calibration_summary only)

    def to_json(self, gt: GroundTruth | None = None, dets: Detections | None = None) -> dict[str, Any]:
        """The calibration.json content: ``d_ece``, ``laece``, ``n``, counts, ``per_class``, ``bins``, ``options``."""
        c = self.counted
        names = gt.categories if gt is not None else {}
        per_class = {str(k): {"name": names.get(k, str(k)), "n": r.n, "n_correct": int(c.correct[c.labels == k].sum()),
                              "d_ece": r.ece, "laece": self.laece.per_class[k].ece}
                     for k, r in self.per_class_d_ece.items()}
        out = {"d_ece": self.d_ece.ece, "laece": self.laece.laece, "n": self.d_ece.n,
               "n_correct": int(c.correct.sum()), "n_classes": len(per_class),
               "left_out": {"ignored_crowd": c.ignored, "below_min_score": c.below_min_score,
                            "skipped_entries": dict(dets.skipped) if dets is not None else {}},
               "per_class": per_class,
               "bins": {"d_ece": self.d_ece.bins_json(), "laece_pooled": self.laece.pooled.bins_json(),
                        "laece_per_class": {str(k): r.bins_json() for k, r in self.laece.per_class.items()}},
               "options": asdict(self.options)}
        if self.eccv is not None:
            out.update(laece_0=self.eccv.laece_0, laace_0=self.eccv.laace_0, lrp=self.eccv.lrp,
                       lrp_thresholds=self.eccv.thresholds(), eccv=self.eccv.to_json(names))
        if dets is not None:
            out["detections"] = dets.source
        if gt is not None:
            out["annotations"] = gt.source
        return out


def summarize(counted: Counted, options: CalibrationOptions, scores: np.ndarray | None = None) -> CalibrationSummary:
    """The metrics of ``counted``, or of the same detections with other ``scores [n]`` (e.g. calibrated)."""
    if scores is not None:
        counted = replace(counted, scores=np.asarray(scores, dtype=np.float64))
    s, lab = counted.scores, counted.labels

    def ece(values, accuracy, n_bins) -> CalibrationResult:  # the counted set is already chosen
        return replace(expected_calibration_error(values, accuracy, n_bins, min_score=-np.inf),
                       min_score=options.min_score)

    laece = localisation_aware_ece(s, counted.iou, lab, options.laece_bins, min_score=-np.inf)
    laece.pooled.min_score = options.min_score
    for r in laece.per_class.values():
        r.min_score = options.min_score
    per_class = {int(k): ece(s[lab == k], counted.correct[lab == k], options.bins) for k in np.unique(lab)}
    return CalibrationSummary(ece(s, counted.correct, options.bins), laece, per_class, counted, options)


def calibration_summary(gt: GroundTruth, dets: Detections,
                        options: CalibrationOptions = CalibrationOptions()) -> CalibrationSummary:
    """D-ECE and LaECE of ``dets`` against ``gt`` (see the module doc), and LaECE_0, LaACE_0, LRP of all of them."""
    return replace(summarize(count(gt, dets, options), options), eccv=eccv_calibration(gt, dets, options.laece_bins))


@dataclass
class PosthocComparison:
    """A calibrator fitted on one set of detections and the metrics of another before and after it."""

    calibrator: ClassCalibrators
    n_fit: int
    before: CalibrationSummary
    after: CalibrationSummary

    def to_json(self) -> dict[str, Any]:
        """``method``, ``params``, ``n_fit`` and the after-calibration ``d_ece``, ``laece``, ``per_class``, ``bins``."""
        after = self.after.to_json()
        return {"method": self.calibrator.method, "params": self.calibrator.params, "n_fit": self.n_fit,
                **{k: after[k] for k in ("d_ece", "laece", "n", "per_class", "bins")}}


def posthoc_comparison(fit: tuple[GroundTruth, Detections], target: tuple[GroundTruth, Detections], method: str,
                       options: CalibrationOptions = CalibrationOptions(),
                       per_class: bool = False) -> PosthocComparison:
    """Fit a ``method`` calibrator on ``fit`` (ground truth, detections) and measure ``target`` before and after.

    The calibrator is fitted on the counted detections of ``fit`` (correct or not); ``per_class``:
    one map per category of ``fit``'s ground truth (:func:`~drmm.evaluation.posthoc.fit_calibrators`).
    """
    fit_counted = count(*fit, options)
    calibrator = fit_calibrators(method, fit_counted.scores, fit_counted.correct, fit_counted.labels,
                                 fit[0].categories if per_class else None)
    before = calibration_summary(*target, options)
    after = summarize(before.counted, options, calibrator(before.counted.scores, before.counted.labels))
    return PosthocComparison(calibrator, len(fit_counted.scores), before, after)


def split_halves(gt: GroundTruth, dets: Detections) -> tuple[Detections, Detections]:
    """``dets`` split by image: the images at even positions of ``gt``'s sorted ids, then those at odd positions."""
    first = set(sorted(gt.image_ids)[0::2])
    in_first = np.array([i in first for i in dets.image_id.tolist()], dtype=bool)
    return dets.subset(in_first), dets.subset(~in_first)


def split_half_posthoc(gt: GroundTruth, dets: Detections, method: str = "temperature",
                       options: CalibrationOptions = CalibrationOptions()) -> dict[str, Any]:
    """Fit on the even-position images, report on the odd ones (:func:`split_halves`): JSON-ready numbers.

    ``d_ece``/``laece`` before and after on the reported half, the fitted parameters
    and the number of detections fitted on and reported.
    """
    fit, report = split_halves(gt, dets)
    cmp = posthoc_comparison((gt, fit), (gt, report), method, options)
    return {"method": method, "params": cmp.calibrator.params, "n_fit": cmp.n_fit, "n_report": cmp.before.d_ece.n,
            "d_ece_before": cmp.before.d_ece.ece, "d_ece_after": cmp.after.d_ece.ece,
            "laece_before": cmp.before.laece.laece, "laece_after": cmp.after.laece.laece,
            "split": "fit on the val images at even positions of the sorted image ids, reported on the odd ones"}
