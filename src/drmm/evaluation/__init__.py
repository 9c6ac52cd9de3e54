"""Evaluation: COCO metrics, the calibration metric (D-ECE), diagnostics, the NMS / WTA ablations, tables.

``evaluate`` ties them together (one inference pass, then metrics.json, detections.json
and the figures of :mod:`drmm.plotting`); each piece is usable on its own.
"""
from .ablations import NMS_IOUS, WTA_IOU, ablation_variants, nms_per_class, winner_take_all
from .calibration import BinStatistics, CalibrationResult, bin_statistics, expected_calibration_error, match_detections
from .coco import METRIC_NAMES, coco_evaluate, to_coco_results
from .diagnostics import accumulate_stage_losses, diagnostics_rows
from .evaluate import evaluate, score_detections
from .inference import run_inference
from .jsonio import write_json
from .tables import format_diagnostics_table, format_metrics_table, format_nms_sweep_table

__all__ = [
    "METRIC_NAMES",
    "NMS_IOUS",
    "WTA_IOU",
    "BinStatistics",
    "CalibrationResult",
    "ablation_variants",
    "accumulate_stage_losses",
    "bin_statistics",
    "coco_evaluate",
    "diagnostics_rows",
    "evaluate",
    "expected_calibration_error",
    "format_diagnostics_table",
    "format_metrics_table",
    "format_nms_sweep_table",
    "match_detections",
    "nms_per_class",
    "run_inference",
    "score_detections",
    "to_coco_results",
    "winner_take_all",
    "write_json",
]
