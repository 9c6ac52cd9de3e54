"""Detection calibration: D-ECE, reliability diagrams and confidence histograms.

ECE (paper eq. 9) is ``sum_m |B_m| / n * |acc(B_m) - conf(B_m)|`` over equal-width
confidence bins on [0, 1]. For detection, "accuracy" needs a notion of a correct
prediction; our convention (D-ECE):

* a prediction is correct when it is matched to a not-yet-matched ground truth
  of the same class with IoU >= 0.5, matching greedily in descending score order
  per image (each ground truth matched at most once);
* ``acc(B_m)`` is the fraction of correct predictions in bin ``m`` and
  ``conf(B_m)`` their mean score;
* predictions scoring below ``min_score`` (default 0.05) are left out, since
  detectors emit many near-zero boxes that would otherwise dominate the lowest bin.

Figures are drawn with matplotlib's object API (``Figure`` + Agg), so importing
this module never touches pyplot or the global backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.ops import box_iou


def match_detections(
    detections: list[dict], targets: list[dict], iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy per-image matching of detections to ground truth.

    Detections are visited in descending score order; each takes the unmatched
    same-class ground truth of highest IoU if that IoU is >= ``iou_threshold``.
    Returns ``(scores, correct)`` concatenated over images, each image's entries
    in the detections' original order (so they stay aligned with any other
    per-detection array, e.g. class probability and objectness).
    """
    all_scores, all_correct = [], []
    for det, tgt in zip(detections, targets, strict=True):
        scores = det["scores"].detach().float().cpu()
        correct = np.zeros(len(scores), dtype=bool)
        gt_boxes = tgt["boxes"].detach().float().cpu()
        if len(scores) and len(gt_boxes):
            iou = box_iou(det["boxes"].detach().float().cpu(), gt_boxes)
            same = det["labels"].cpu()[:, None] == tgt["labels"].cpu()[None, :]
            # Candidate pairs: same class and enough overlap; -1 marks "never".
            iou = torch.where(same & (iou >= iou_threshold), iou, -1.0).numpy()
            taken = np.zeros(len(gt_boxes), dtype=bool)
            for i in torch.sort(scores, descending=True, stable=True).indices.tolist():
                cand = np.where(taken, -1.0, iou[i])
                j = int(cand.argmax())
                if cand[j] >= 0:
                    taken[j] = correct[i] = True
        all_scores.append(scores.numpy())
        all_correct.append(correct)
    if not all_scores:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool)
    return np.concatenate(all_scores), np.concatenate(all_correct)


@dataclass
class CalibrationResult:
    """Per-bin statistics behind an ECE value.

    ``bin_conf``/``bin_acc`` are NaN for empty bins. ``n`` counts the predictions
    kept (score >= ``min_score``); ``ece`` is NaN when ``n == 0``.
    """

    ece: float
    bin_edges: np.ndarray  # (n_bins + 1,)
    bin_conf: np.ndarray  # (n_bins,) mean score per bin
    bin_acc: np.ndarray  # (n_bins,) fraction correct per bin
    bin_count: np.ndarray  # (n_bins,) int
    n: int
    min_score: float


def _bin_stats(values: np.ndarray, correct: np.ndarray, n_bins: int):
    """Equal-width bins on [0, 1]: bin m is [edges[m], edges[m+1]); 1.0 goes in the last."""
    values = np.asarray(values, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if values.shape != correct.shape:
        raise ValueError(f"values {values.shape} and correct {correct.shape} differ in length")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=values, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return edges, conf, acc, count


def expected_calibration_error(
    scores: np.ndarray, correct: np.ndarray, n_bins: int = 10, min_score: float = 0.05
) -> CalibrationResult:
    """ECE over ``n_bins`` equal-width bins on [0, 1], ignoring scores < ``min_score``.

    Bins stay on [0, 1] whatever ``min_score`` is, so values are comparable across
    thresholds; empty bins contribute nothing.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    keep = scores >= min_score
    edges, conf, acc, count = _bin_stats(scores[keep], correct[keep], n_bins)
    n = int(count.sum())
    nz = count > 0
    ece = float(np.sum(count[nz] / n * np.abs(acc[nz] - conf[nz]))) if n else float("nan")
    return CalibrationResult(ece, edges, conf, acc, count, n, float(min_score))


def reliability_diagram(
    result: CalibrationResult, path: str | Path, title_extra: str = "", ap: float | None = None
) -> None:
    """Write a reliability diagram PNG: accuracy per bin vs confidence, with counts.

    Top: accuracy bars, the gap to each bin's mean confidence shaded, and the
    diagonal (perfect calibration). Bottom: number of predictions per bin.
    """
    edges, width = result.bin_edges, np.diff(result.bin_edges)
    centres = edges[:-1] + width / 2
    nz = result.bin_count > 0
    fig = Figure(figsize=(5, 6), dpi=100, layout="constrained")
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})

    ax.bar(centres[nz], result.bin_acc[nz], width[nz], color="tab:blue", edgecolor="k",
           label="accuracy")
    gap_lo = np.minimum(result.bin_acc, result.bin_conf)[nz]
    gap_hi = np.maximum(result.bin_acc, result.bin_conf)[nz]
    ax.bar(centres[nz], gap_hi - gap_lo, width[nz], bottom=gap_lo, color="tab:red",
           alpha=0.3, edgecolor="tab:red", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.legend(loc="upper left", fontsize=8)
    title = f"D-ECE = {100 * result.ece:.2f}%"
    if ap is not None:
        title += f"   AP = {100 * ap:.1f}"
    ax.set_title(f"{title}\n{title_extra}" if title_extra else title)
    ax.text(0.98, 0.02, f"scores < {result.min_score:g} left out\nn = {result.n}",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=8)

    ax_n.bar(centres, result.bin_count, width, color="0.6", edgecolor="k")
    for x, c in zip(centres, result.bin_count):
        ax_n.text(x, c, str(int(c)), ha="center", va="bottom", fontsize=7)
    if result.min_score > 0:
        for a in (ax, ax_n):
            a.axvspan(0, result.min_score, color="0.85", zorder=0)
    ax_n.set(xlim=(0, 1), ylim=(0, max(1, result.bin_count.max()) * 1.25),
             xlabel="confidence", ylabel="# predictions")
    _save(fig, path)


def confidence_histograms(
    values: dict[str, np.ndarray], correct: np.ndarray, path: str | Path, n_bins: int = 10
) -> None:
    """Write the paper's Figure 9 style PNG, one column per entry of ``values``.

    ``values`` maps a name (e.g. "class probability p", "objectness o",
    "confidence p*o") to per-prediction values aligned with ``correct``. Top row:
    per-bin accuracy vs bin centre; bottom row: number of predictions per bin.
    No score threshold is applied here; filter before calling if wanted.
    """
    fig = Figure(figsize=(4 * len(values), 5.5), dpi=100, layout="constrained")
    axes = fig.subplots(2, len(values), squeeze=False, sharex=True)
    for col, (name, v) in enumerate(values.items()):
        edges, _, acc, count = _bin_stats(v, correct, n_bins)
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        nz = count > 0
        top, bottom = axes[0, col], axes[1, col]
        top.bar(centres[nz], acc[nz], width[nz], color="tab:blue", edgecolor="k")
        top.plot([0, 1], [0, 1], "k--", lw=1)
        top.set(xlim=(0, 1), ylim=(0, 1), title=name, ylabel="accuracy" if col == 0 else None)
        bottom.bar(centres, count, width, color="0.6", edgecolor="k")
        bottom.set(xlim=(0, 1), xlabel=name, ylabel="# predictions" if col == 0 else None)
    _save(fig, path)


def _save(fig: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
