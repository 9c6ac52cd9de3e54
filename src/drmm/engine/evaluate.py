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
:mod:`drmm.calibration`) to the dataset's cleaned ground truth in original image
coordinates: crowd regions dropped, boxes clipped to the image.
"""
from __future__ import annotations

import json
import logging
import math
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..calibration import (
    CalibrationResult,
    confidence_histograms,
    expected_calibration_error,
    match_detections,
    reliability_diagram,
)
from ..data import collate_fn
from .coco_eval import METRIC_NAMES, coco_evaluate, to_coco_results
from .postprocess import nms_per_class, winner_take_all

logger = logging.getLogger("drmm.evaluate")

NMS_IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)
"""Class-wise NMS thresholds of the sweep (paper Figure 7; 1.0 there means no NMS)."""
WTA_IOU = 0.7
"""IoU of the winner-take-all row. The paper (Table 3) does not state it; 0.7 is our choice."""


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP


def run_inference(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    keep_mixture: bool = False,
    diagnostics: bool = False,
) -> tuple[list[dict[str, Tensor]], list[int], dict[str, Any]]:
    """Detections for every dataset image, in original image coordinates, on the CPU.

    Returns ``(detections, image_ids, extras)``. ``extras["targets"]`` holds each
    image's ground truth as the dataset returns it (``boxes``, contiguous ``labels``).
    With ``keep_mixture`` (mixture head only) ``extras["class_prob"]`` and
    ``extras["objectness"]`` hold, per image, p and o of each kept (component, class)
    pair, aligned with the detections. With ``diagnostics`` (mixture head only)
    ``extras["diagnostics"]`` holds one row per stage (see :func:`diagnostics_rows`).
    The model is put in eval mode and its previous mode restored afterwards.
    """
    net = _unwrap(model)
    if (keep_mixture or diagnostics) and not getattr(net, "is_mixture", False):
        raise ValueError("class probability / objectness and NLL/MCM diagnostics need the D-RMM mixture head")
    dev = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_fn, pin_memory=dev.type == "cuda")
    was_training = net.training
    net.to(dev).eval()
    detections: list[dict[str, Tensor]] = []
    image_ids: list[int] = []
    extras: dict[str, Any] = {"targets": []}
    if keep_mixture:
        extras["class_prob"], extras["objectness"] = [], []
    sums: list[list[float]] = []  # per stage: [nll, mcm, exp(-mcm), count]
    seen: set[int] = set()
    try:
        with torch.inference_mode():
            for images, targets in tqdm(loader, desc="eval", unit="batch", disable=not progress):
                images = [img.to(dev, non_blocking=True) for img in images]
                gts = None
                if diagnostics:  # resized with the images, for the losses on model inputs
                    gts = [{"boxes": t["boxes"].to(dev), "labels": t["labels"].to(dev)} for t in targets]
                if keep_mixture or diagnostics:
                    dets, trace = net(images, gts, return_stages=True)
                else:  # any model returning torchvision-style detections
                    dets, trace = net(images), None
                if diagnostics:
                    _accumulate_losses(net, trace.stages, trace.targets, sums)
                mix = _kept_mixture(net, trace, dets) if keep_mixture else None
                for i, (det, tgt) in enumerate(zip(dets, targets, strict=True)):
                    image_id = int(tgt["image_id"])
                    if image_id in seen:  # a skipped unreadable image was replaced by a later one
                        logger.warning("image %d returned twice by the dataset; evaluated once", image_id)
                        continue
                    seen.add(image_id)
                    image_ids.append(image_id)
                    detections.append({k: v.detach().cpu() for k, v in det.items()})
                    extras["targets"].append({"boxes": tgt["boxes"].cpu(), "labels": tgt["labels"].cpu()})
                    if mix is not None:
                        extras["class_prob"].append(mix[0][i])
                        extras["objectness"].append(mix[1][i])
    finally:
        net.train(was_training)
    if diagnostics:
        extras["diagnostics"] = diagnostics_rows(sums)
    return detections, image_ids, extras


def _kept_mixture(net: nn.Module, trace, dets: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
    """p and o of the (component, class) pairs the post-processing kept, aligned with the detections."""
    params = net.mixture_parameters(trace.stages[-1])
    ps, os_ = [], []
    for i, det in enumerate(dets):
        k, c = trace.components[i], det["labels"]
        ps.append(params["class_prob"][i, k, c].float().cpu())
        os_.append(params["objectness"][i, k].float().cpu())
    return ps, os_


def _accumulate_losses(net: nn.Module, stages, targets: list[dict[str, Tensor]], sums: list[list[float]]) -> None:
    """Add this batch's per-GT NLL, MCM and exp(-MCM) sums and GT count to ``sums``."""
    for s, (nll, mcm, valid) in enumerate(net.objective.per_stage(stages, targets)):
        if len(sums) <= s:
            sums.append([0.0, 0.0, 0.0, 0])
        nll, mcm = nll[valid].double(), mcm[valid].double()
        row = sums[s]
        row[0] += float(nll.sum())
        row[1] += float(mcm.sum())
        row[2] += float(torch.exp(-mcm).sum())
        row[3] += int(valid.sum())


def diagnostics_rows(sums: list[list[float]]) -> list[dict[str, Any]]:
    """Per stage (1-based, as in Table 9): mean NLL, mean MCM, mean exp(-MCM) over ground truths.

    exp(-MCM) = max_k comp_k / sum_k comp_k is in (0, 1]; ``exp_neg_mean_mcm`` is
    exp of the mean MCM, the other reading of the paper's "exp(-L_MCM)".
    """
    rows = []
    for s, (nll, mcm, ratio, n) in enumerate(sums):
        nan = float("nan")
        rows.append({"stage": s + 1, "nll": nll / n if n else nan, "mcm": mcm / n if n else nan,
                     "exp_neg_mcm": ratio / n if n else nan,
                     "exp_neg_mean_mcm": math.exp(-mcm / n) if n else nan, "num_gt": n})
    return rows


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


def _sweep_variants() -> list[tuple[str, float | None, Callable[[dict], dict]]]:
    variants: list[tuple[str, float | None, Callable[[dict], dict]]] = [("none", None, lambda d: d)]
    variants += [("nms", iou, partial(nms_per_class, iou_threshold=iou)) for iou in NMS_IOUS]
    variants.append(("wta", WTA_IOU, partial(winner_take_all, iou_threshold=WTA_IOU)))
    return variants


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
    net = _unwrap(model)
    mixture = getattr(net, "is_mixture", False)
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
        confidence_histograms(values, correct[keep], out_dir / "confidence_histograms.png", n_bins=n_bins)

    if diagnostics:
        out["diagnostics"] = extras["diagnostics"]
        if out_dir is not None:
            write_json(out_dir / "diagnostics.json", extras["diagnostics"])

    if nms_sweep:
        rows = []
        for name, iou, fn in _sweep_variants():
            kept = [fn(d) for d in dets]
            if name == "none":
                m, c = metrics, cal
            else:
                m, c, _, _ = score_detections(dataset.coco, kept, targets, ids, cat_ids, min_score, n_bins)
            rows.append({"method": name, "iou": iou, "AP": m["AP"], "AP50": m["AP50"], "AR100": m["AR100"],
                         "ECE": m["ECE"],
                         "detections_per_image": sum(len(d["scores"]) for d in kept) / max(1, len(kept))})
            if out_dir is not None:
                label = "no NMS" if iou is None else f"{name.upper()} IoU {iou:g}"
                reliability_diagram(c, out_dir / "nms_sweep" / f"reliability_{name}{'' if iou is None else iou}.png",
                                    title_extra=f"{title} {label}".strip(), ap=m["AP"])
        out["nms_sweep"] = rows
        if out_dir is not None:
            write_json(out_dir / "nms_sweep.json", rows)
    return out


def _cat(arrays: list[Tensor]) -> np.ndarray:
    return torch.cat(arrays).numpy() if arrays else np.zeros(0, dtype=np.float32)


def _json_safe(obj: Any) -> Any:
    """NaN / inf become ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as strict JSON (NaN as null)."""
    Path(path).write_text(json.dumps(_json_safe(obj), indent=indent))


def _fmt(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "nan" if v is not None else "-"
    return f"{scale * v:.{digits}f}"


def format_diagnostics_table(rows: list[dict[str, Any]]) -> str:
    """Table 9 layout: stage, mean NLL, mean MCM, mean exp(-MCM), exp(-mean MCM), #GT."""
    lines = [f"{'stage':>5}  {'NLL':>9}  {'MCM':>7}  {'exp(-MCM)':>9}  {'exp(-mean)':>10}  {'#GT':>6}", "-" * 56]
    for r in rows:
        lines.append(f"{r['stage']:>5}  {_fmt(r['nll'], digits=3):>9}  {_fmt(r['mcm'], digits=3):>7}  "
                     f"{_fmt(r['exp_neg_mcm'], digits=3):>9}  {_fmt(r['exp_neg_mean_mcm'], digits=3):>10}  "
                     f"{r['num_gt']:>6}")
    return "\n".join(lines)


def format_nms_sweep_table(rows: list[dict[str, Any]]) -> str:
    """Figure 7 / Table 3 layout, values x100."""
    lines = [f"{'post-processing':<16}  {'AP':>5}  {'AP50':>5}  {'AR100':>5}  {'ECE':>5}", "-" * 44]
    for r in rows:
        name = "none (NMS-free)" if r["iou"] is None else f"{r['method'].upper()} IoU {r['iou']:g}"
        lines.append(f"{name:<16}  {_fmt(r['AP'], 100):>5}  {_fmt(r['AP50'], 100):>5}  "
                     f"{_fmt(r['AR100'], 100):>5}  {_fmt(r['ECE'], 100):>5}")
    return "\n".join(lines)


__all__ = ["METRIC_NAMES", "NMS_IOUS", "WTA_IOU", "diagnostics_rows", "evaluate", "format_diagnostics_table",
           "format_nms_sweep_table", "run_inference", "score_detections", "write_json"]
