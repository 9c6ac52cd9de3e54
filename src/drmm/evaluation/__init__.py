"""Evaluation: COCO metrics, the calibration metrics (D-ECE, LaECE) and post-hoc calibrators, diagnostics,
the NMS / WTA ablations, tables.

``evaluate`` ties them together (one inference pass, then metrics.json, detections.json,
calibration.json and the figures of :mod:`drmm.plotting`); ``calibration_summary`` is the
calibration of any detector's COCO results file (``drmm calibration``); each piece is
usable on its own.
"""
from .ablations import NMS_IOUS, WTA_IOU, ablation_variants, nms_per_class, winner_take_all
from .calibration import (BinStatistics, CalibrationResult, LaECEResult, bin_index, bin_statistics,
                          expected_calibration_error, localisation_aware_ece)
from .calibration_summary import (CalibrationOptions, CalibrationSummary, PosthocComparison, calibration_summary,
                                  posthoc_comparison, split_half_posthoc, split_halves)
from .coco import METRIC_NAMES, coco_evaluate, to_coco_results
from .cocofiles import (Detections, GroundTruth, detections_from_results, ground_truth_from_coco, load_detections,
                        load_ground_truth)
from .diagnostics import accumulate_stage_losses, diagnostics_rows
from .evaluate import evaluate, score_detections
from .inference import run_inference
from .jsonio import write_json
from .matching import MATCHINGS, Matches, iof_xywh, iou_xywh, match, match_detections
from .posthoc import METHODS, Calibrator, fit_calibrator, pav
from .tables import format_calibration_table, format_diagnostics_table, format_metrics_table, format_nms_sweep_table

__all__ = [
    "MATCHINGS",
    "METHODS",
    "METRIC_NAMES",
    "NMS_IOUS",
    "WTA_IOU",
    "BinStatistics",
    "CalibrationOptions",
    "CalibrationResult",
    "CalibrationSummary",
    "Calibrator",
    "Detections",
    "GroundTruth",
    "LaECEResult",
    "Matches",
    "PosthocComparison",
    "ablation_variants",
    "accumulate_stage_losses",
    "bin_index",
    "bin_statistics",
    "calibration_summary",
    "coco_evaluate",
    "detections_from_results",
    "diagnostics_rows",
    "evaluate",
    "expected_calibration_error",
    "fit_calibrator",
    "format_calibration_table",
    "format_diagnostics_table",
    "format_metrics_table",
    "format_nms_sweep_table",
    "ground_truth_from_coco",
    "iof_xywh",
    "iou_xywh",
    "load_detections",
    "load_ground_truth",
    "localisation_aware_ece",
    "match",
    "match_detections",
    "nms_per_class",
    "pav",
    "posthoc_comparison",
    "run_inference",
    "score_detections",
    "split_half_posthoc",
    "split_halves",
    "to_coco_results",
    "winner_take_all",
    "write_json",
]
