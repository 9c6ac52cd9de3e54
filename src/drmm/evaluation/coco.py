"""COCO-style bbox metrics with pycocotools, returned as a flat dict of floats."""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
"""Names of ``COCOeval.stats[0:9]`` (AR_small/medium/large are not reported)."""


def to_coco_results(
    detections: list[dict], image_ids: list[int], label_to_cat_id: list[int]
) -> list[dict]:
    """Convert per-image detections to COCO results (``bbox`` as [x, y, w, h]).

    ``detections[i]`` holds ``boxes [N, 4]`` (xyxy), ``scores [N]`` and ``labels [N]``;
    ``label_to_cat_id[label]`` maps the model's contiguous label to the dataset's
    category id (COCO ids are not contiguous).
    """
    results = []
    for det, image_id in zip(detections, image_ids, strict=True):
        boxes = box_convert(det["boxes"].detach().float().cpu(), "xyxy", "xywh").tolist()
        scores = det["scores"].detach().double().cpu().tolist()  # calibrated scores are float64: keep their order
        labels = det["labels"].detach().cpu().tolist()
        results += [
            {"image_id": int(image_id), "category_id": int(label_to_cat_id[lab]),
             "bbox": box, "score": score}
            for box, score, lab in zip(boxes, scores, labels)
        ]
    return results


def coco_evaluate(
    coco_gt: COCO,
    results: list[dict],
    image_ids: list[int] | None = None,
    max_dets: int = 100,
    verbose: bool = False,
) -> dict[str, float]:
    """Run ``COCOeval`` (bbox) and return ``METRIC_NAMES`` -> value in [0, 1].

    ``image_ids`` restricts evaluation (default: all images of ``coco_gt``).
    ``max_dets`` replaces the last detection limit (1, 10, 100); the AP keys and
    "AR100" then use it, the names stay fixed. Entries COCOeval reports as -1
    (no ground truth of that size) become NaN. Empty ``results`` give all zeros,
    since pycocotools cannot load an empty result list. COCOeval's prints are
    silenced unless ``verbose``.
    """
    if not results:
        return {k: 0.0 for k in METRIC_NAMES}
    out = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with out:
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.asarray(ev.stats, dtype=float)
    return {k: float("nan") if v == -1 else float(v) for k, v in zip(METRIC_NAMES, stats)}
