"""Evaluation on a COCO-format dataset: COCO AP/AR, D-ECE, LaECE, figures and the paper's analyses.

``evaluate`` runs the model once over the dataset and writes, under ``out_dir``:

* ``metrics.json``   flat ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ECE, LaECE`` in
  [0, 1] (``null`` where undefined, e.g. APl without large objects), then ``laece_0, laace_0,
  lrp`` and ``lrp_thresholds`` (:mod:`~drmm.evaluation.eccv_calibration`, all detections);
* ``detections.json`` COCO results (top-100 per image, the dataset's category ids);
* ``calibration.json`` what ``drmm calibration`` writes for ``detections.json``
  (D-ECE, LaECE, per class, the bin tables, the options);
* ``reliability.png`` reliability diagram (D-ECE and AP in the title; paper Figure 8)
  and ``reliability_laece.png`` (mean IoU-accuracy per bin, LaECE in the title), ``reliability_laace_0.png``
  (every detection in equal-count bins, LaACE_0 in the title);
* ``confidence_histograms.png`` class probability p, objectness o and p*o (Figure 9)
  of the detections ECE counts (correctness as for ECE); only the score for heads
  without a mixture;
* optionally ``diagnostics.json`` (Tables 4, 9): per stage, the mean validation NLL
  and exp(-MCM) over ground truths, on the model-input coordinates used in training;
* optionally ``nms_sweep.json`` (Figure 7, Table 3): AP/AP50/AR100/ECE without NMS,
  with class-wise NMS at IoU 0.5..0.9 and with winner-take-all at IoU ``WTA_IOU``.

COCO metrics use the dataset's annotation file (crowd regions as COCOeval handles
them). ECE (D-ECE) and LaECE are computed by the code of ``drmm calibration``
(:mod:`drmm.evaluation.calibration_summary`) on the COCO results that become
``detections.json`` and the annotation file as it is: ``coco`` matching at IoU 0.5,
so a detection on a crowd region alone is ignored, as COCOeval ignores it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..data.protocol import DetectionDataset
from ..plotting import adaptive_reliability_diagram, confidence_histograms, reliability_diagram
from .ablations import ablation_variants
from .calibration import bin_statistics
from .calibration_summary import CalibrationOptions, CalibrationSummary, calibration_summary
from .cocofiles import GroundTruth, detections_from_results, ground_truth_from_coco
from .coco import coco_evaluate, to_coco_results
from .inference import run_inference, unwrap
from .jsonio import write_json

logger = logging.getLogger("drmm.evaluate")


def score_detections(
    coco_gt,
    detections: list[dict[str, Tensor]],
    image_ids: list[int],
    cat_ids: list[int],
    options: CalibrationOptions = CalibrationOptions(),
    gt: GroundTruth | None = None,
) -> tuple[dict[str, float], CalibrationSummary, list[dict], np.ndarray]:
    """COCO metrics (top-100), ``ECE`` (D-ECE) and ``LaECE`` of one set of detections.

    ``gt``: ``coco_gt``'s annotations as :class:`GroundTruth` (built when not given).
    Returns ``(metrics, calibration, results, counted)``: ``results`` are the COCO
    results the metrics were computed on (what ``detections.json`` holds), ``counted``
    the positions in ``results`` of the detections ECE counts (aligned with
    ``calibration.counted``).
    """
    for det in detections:
        if len(det["labels"]) and int(det["labels"].max()) >= len(cat_ids):
            raise ValueError(f"the model predicts label {int(det['labels'].max())} but the dataset has only "
                             f"{len(cat_ids)} categories: the model was trained for other classes")
    results = to_coco_results(detections, image_ids, cat_ids)
    gt = ground_truth_from_coco(coco_gt.dataset) if gt is None else gt
    gt = gt.subset(image_ids)  # the images evaluated (LRP counts the misses there only)
    dets = detections_from_results(results, gt, source="detections", skip_invalid=True)
    if any(dets.skipped.values()):
        logger.warning("left out of ECE / LaECE: %s", dets.skipped)
    cal = calibration_summary(gt, dets, options)
    # loadRes adds keys (id, area, ...) to the dicts it gets: hand it copies, keep ``results`` as written
    metrics = coco_evaluate(coco_gt, [dict(r) for r in results], image_ids=image_ids)
    eccv = {"laece_0": cal.eccv.laece_0, "laace_0": cal.eccv.laace_0, "lrp": cal.eccv.lrp}  # ECCV 2024, all detections
    metrics = {**metrics, "ECE": cal.d_ece.ece, "LaECE": cal.laece.laece, **eccv}
    return metrics, cal, results, dets.index[cal.counted.keep]


def evaluate(
    model: nn.Module,
    dataset: DetectionDataset,
    out_dir: str | Path | None = None,
    *,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    min_score: float = 0.05,
    n_bins: int = 10,
    diagnostics: bool = False,
    nms_sweep: bool = False,
    progress: bool = True,
    title: str = "",
) -> dict[str, Any]:
    """Evaluate ``model`` on a dataset (a :class:`~drmm.data.CocoDetection` of any layout, ``train=False``).

    See the module doc.

    Returns the flat metrics (``METRIC_NAMES`` + ``ECE`` + ``LaECE`` + ``laece_0``, ``laace_0``, ``lrp``,
    NaN where undefined) and ``lrp_thresholds`` (per class), as ``metrics.json`` holds them, plus ``"diagnostics"`` and ``"nms_sweep"`` row lists when requested.
    The model's contiguous labels are mapped to ``dataset.cat_ids``. ``min_score`` and
    ``n_bins`` only affect ECE, LaECE and the figures; COCO metrics use every detection.
    """
    mixture = getattr(unwrap(model), "is_mixture", False)
    if diagnostics and not mixture:
        raise ValueError("--diagnostics (validation NLL / MCM) needs the D-RMM mixture head")
    dets, ids, extras = run_inference(model, dataset, batch_size, device, num_workers, progress,
                                      keep_mixture=mixture, diagnostics=diagnostics)
    cat_ids = [int(c) for c in dataset.cat_ids]
    options = CalibrationOptions(min_score=min_score, bins=n_bins)
    gt = ground_truth_from_coco(dataset.coco.dataset, source=str(getattr(dataset, "ann_file", "annotations")))
    metrics, cal, results, counted = score_detections(dataset.coco, dets, ids, cat_ids, options, gt)
    out: dict[str, Any] = {**metrics, "lrp_thresholds": cal.eccv.thresholds()}  # as metrics.json

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "metrics.json", out)
        write_json(out_dir / "detections.json", results, indent=None)
        write_json(out_dir / "calibration.json", {**cal.to_json(gt), "detections": str(out_dir / "detections.json")})
        reliability_diagram(cal.d_ece, out_dir / "reliability.png", title_extra=title, ap=metrics["AP"])
        reliability_diagram(cal.laece.pooled, out_dir / "reliability_laece.png", title_extra=title,
                            ap=metrics["AP"], metric="LaECE", ylabel="mean IoU-accuracy")
        adaptive_reliability_diagram(cal.eccv.bins_laace_0, out_dir / "reliability_laace_0.png",
                                     f"{title} (all detections, classes pooled)".strip())
        if mixture:
            values = {"class probability p": _cat(extras["class_prob"])[counted],
                      "objectness o": _cat(extras["objectness"])[counted],
                      "confidence p*o": cal.counted.scores}
        else:
            values = {"confidence score": cal.counted.scores}
        columns = {name: bin_statistics(v, cal.counted.correct, n_bins) for name, v in values.items()}
        confidence_histograms(columns, out_dir / "confidence_histograms.png")

    if diagnostics:
        out["diagnostics"] = extras["diagnostics"]
        if out_dir is not None:
            write_json(out_dir / "diagnostics.json", extras["diagnostics"])

    if nms_sweep:
        def score(kept: list[dict[str, Tensor]]) -> tuple[dict[str, float], CalibrationSummary]:
            return score_detections(dataset.coco, kept, ids, cat_ids, options, gt)[:2]

        out["nms_sweep"] = _nms_sweep(dets, (metrics, cal), score, out_dir, title)
    return out


def _nms_sweep(dets: list[dict[str, Tensor]], unchanged: tuple[dict[str, float], CalibrationSummary],
               score: Callable[[list[dict[str, Tensor]]], tuple[dict[str, float], CalibrationSummary]],
               out_dir: Path | None, title: str) -> list[dict[str, Any]]:
    """One row per :func:`~drmm.evaluation.ablations.ablation_variants` entry; figures and JSON when ``out_dir``.

    ``unchanged`` is the (metrics, calibration summary) of ``dets`` as they are; ``score(kept)``
    gives the same for post-processed detections.
    """
    rows = []
    for name, iou, fn in ablation_variants():
        kept = [fn(d) for d in dets]
        m, c = unchanged if name == "none" else score(kept)
        rows.append({"method": name, "iou": iou, "AP": m["AP"], "AP50": m["AP50"], "AR100": m["AR100"],
                     "ECE": m["ECE"], "LaECE": m["LaECE"],
                     "detections_per_image": sum(len(d["scores"]) for d in kept) / max(1, len(kept))})
        if out_dir is not None:
            label = "no NMS" if iou is None else f"{name.upper()} IoU {iou:g}"
            reliability_diagram(c.d_ece, out_dir / "nms_sweep" / f"reliability_{name}{'' if iou is None else iou}.png",
                                title_extra=f"{title} {label}".strip(), ap=m["AP"])
    if out_dir is not None:
        write_json(out_dir / "nms_sweep.json", rows)
    return rows


def _cat(arrays: list[Tensor]) -> np.ndarray:
    return torch.cat(arrays).numpy() if arrays else np.zeros(0, dtype=np.float32)
