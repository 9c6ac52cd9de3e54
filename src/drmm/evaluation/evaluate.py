"""Evaluation on a COCO-format dataset: COCO AP/AR, D-ECE, figures and the paper's analyses.

``evaluate`` runs the model once over the dataset and writes, under ``out_dir``:

* ``metrics.json``   flat ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ECE`` in
  [0, 1] (``null`` where undefined, e.g. APl without large objects);
* ``detections.json`` COCO results (top-100 per image, the dataset's category ids);
* ``reliability.png`` reliability diagram (D-ECE and AP in the title; paper Figure 8);
* ``confidence_histograms.png`` class probability p, objectness o and p*o (Figure 9)
  of the same predictions (those with p*o >= ``min_score``, correctness as for ECE);
  only the score for heads without a mixture;
* optionally ``diagnostics.json`` (Tables 4, 9): per stage, the mean validation NLL
  and exp(-MCM) over ground truths, on the model-input coordinates used in training;
* optionally ``nms_sweep.json`` (Figure 7, Table 3): AP/AP50/AR100/ECE without NMS,
  with class-wise NMS at IoU 0.5..0.9 and with winner-take-all at IoU ``WTA_IOU``.

COCO metrics use the dataset's annotation file (crowd regions as COCOeval handles
them). ECE matches detections (same class, IoU >= 0.5, greedy; see
:mod:`drmm.evaluation.calibration`) to the dataset's cleaned ground truth in original
image coordinates: crowd regions dropped, boxes clipped to the image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..plotting import confidence_histograms, reliability_diagram
from .ablations import ablation_variants
from .calibration import CalibrationResult, bin_statistics, expected_calibration_error, match_detections
from .coco import coco_evaluate, to_coco_results
from .inference import run_inference, unwrap
from .jsonio import write_json


def score_detections(
    coco_gt,
    detections: list[dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    image_ids: list[int],
    cat_ids: list[int],
    min_score: float = 0.05,
    n_bins: int = 10,
) -> tuple[dict[str, float], CalibrationResult, np.ndarray, np.ndarray]:
    """COCO metrics (top-100) + ``ECE`` of one set of detections.

    Returns ``(metrics, calibration, scores, correct)``; ``scores``/``correct`` are
    per detection, concatenated over images in the detections' order.
    """
    for det in detections:
        if len(det["labels"]) and int(det["labels"].max()) >= len(cat_ids):
            raise ValueError(f"the model predicts label {int(det['labels'].max())} but the dataset has only "
                             f"{len(cat_ids)} categories: the model was trained for other classes")
    results = to_coco_results(detections, image_ids, cat_ids)
    metrics = coco_evaluate(coco_gt, results, image_ids=image_ids)  # loadRes edits dicts: fresh ones
    scores, correct = match_detections(detections, targets)
    cal = expected_calibration_error(scores, correct, n_bins=n_bins, min_score=min_score)
    return {**metrics, "ECE": cal.ece}, cal, scores, correct


def evaluate(
    model: nn.Module,
    dataset,
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
    """Evaluate ``model`` on a :class:`~drmm.data.CocoDetection` (``train=False``); see the module doc.

    Returns the flat metrics (``METRIC_NAMES`` + ``ECE``, NaN where undefined), plus
    ``"diagnostics"`` and ``"nms_sweep"`` row lists when requested. The model's
    contiguous labels are mapped to ``dataset.cat_ids``. ``min_score`` and ``n_bins``
    only affect ECE and the figures; COCO metrics use every detection.
    """
    mixture = getattr(unwrap(model), "is_mixture", False)
    if diagnostics and not mixture:
        raise ValueError("--diagnostics (validation NLL / MCM) needs the D-RMM mixture head")
    dets, ids, extras = run_inference(model, dataset, batch_size, device, num_workers, progress,
                                      keep_mixture=mixture, diagnostics=diagnostics)
    cat_ids = [int(c) for c in dataset.cat_ids]
    targets = extras["targets"]
    metrics, cal, scores, correct = score_detections(dataset.coco, dets, targets, ids, cat_ids, min_score, n_bins)
    out: dict[str, Any] = dict(metrics)

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "metrics.json", metrics)
        write_json(out_dir / "detections.json", to_coco_results(dets, ids, cat_ids), indent=None)
        reliability_diagram(cal, out_dir / "reliability.png", title_extra=title, ap=metrics["AP"])
        keep = scores >= min_score
        if mixture:
            values = {"class probability p": _cat(extras["class_prob"])[keep],
                      "objectness o": _cat(extras["objectness"])[keep],
                      "confidence p*o": scores[keep]}
        else:
            values = {"confidence score": scores[keep]}
        columns = {name: bin_statistics(v, correct[keep], n_bins) for name, v in values.items()}
        confidence_histograms(columns, out_dir / "confidence_histograms.png")

    if diagnostics:
        out["diagnostics"] = extras["diagnostics"]
        if out_dir is not None:
            write_json(out_dir / "diagnostics.json", extras["diagnostics"])

    if nms_sweep:
        def score(kept: list[dict[str, Tensor]]) -> tuple[dict[str, float], CalibrationResult]:
            return score_detections(dataset.coco, kept, targets, ids, cat_ids, min_score, n_bins)[:2]

        out["nms_sweep"] = _nms_sweep(dets, (metrics, cal), score, out_dir, title)
    return out


def _nms_sweep(dets: list[dict[str, Tensor]], unchanged: tuple[dict[str, float], CalibrationResult],
               score: Callable[[list[dict[str, Tensor]]], tuple[dict[str, float], CalibrationResult]],
               out_dir: Path | None, title: str) -> list[dict[str, Any]]:
    """One row per :func:`~drmm.evaluation.ablations.ablation_variants` entry; figures and JSON when ``out_dir``.

    ``unchanged`` is the (metrics, calibration) of ``dets`` as they are; ``score(kept)``
    gives the same for post-processed detections.
    """
    rows = []
    for name, iou, fn in ablation_variants():
        kept = [fn(d) for d in dets]
        m, c = unchanged if name == "none" else score(kept)
        rows.append({"method": name, "iou": iou, "AP": m["AP"], "AP50": m["AP50"], "AR100": m["AR100"],
                     "ECE": m["ECE"],
                     "detections_per_image": sum(len(d["scores"]) for d in kept) / max(1, len(kept))})
        if out_dir is not None:
            label = "no NMS" if iou is None else f"{name.upper()} IoU {iou:g}"
            reliability_diagram(c, out_dir / "nms_sweep" / f"reliability_{name}{'' if iou is None else iou}.png",
                                title_extra=f"{title} {label}".strip(), ap=m["AP"])
    if out_dir is not None:
        write_json(out_dir / "nms_sweep.json", rows)
    return rows


def _cat(arrays: list[Tensor]) -> np.ndarray:
    return torch.cat(arrays).numpy() if arrays else np.zeros(0, dtype=np.float32)
