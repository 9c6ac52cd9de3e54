"""Every figure drmm draws: reliability diagrams, detectors' calibration curves, confidence histograms, loss
curves, drawn detections.

Plots use matplotlib's object API (``Figure`` + Agg on save), so importing this
module never touches pyplot or the global backend. The statistics come from
elsewhere (:mod:`drmm.evaluation.calibration`, the training log); this module
only draws them, and imports nothing else from drmm.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

LOW_COLOR = (230, 40, 40)  # drawn detections scoring in [threshold, high)
HIGH_COLOR = (40, 200, 60)  # drawn detections scoring >= high


class CalibrationBins(Protocol):
    """What a reliability diagram shows (:class:`drmm.evaluation.CalibrationResult` has it).

    Bars per bin, then the summary in the title and the corner: the ECE, the number
    of predictions and the score below which they were left out.
    """

    bin_edges: np.ndarray  # (n_bins + 1,)
    bin_count: np.ndarray  # (n_bins,)
    bin_acc: np.ndarray  # (n_bins,) fraction correct per bin, NaN where empty
    bin_conf: np.ndarray  # (n_bins,) mean score per bin, NaN where empty
    ece: float
    n: int
    min_score: float


class HistogramBins(Protocol):
    """One column of the confidence histograms (:class:`drmm.evaluation.BinStatistics` has it)."""

    edges: np.ndarray  # (n_bins + 1,)
    acc: np.ndarray  # (n_bins,) fraction correct per bin, NaN where empty
    count: np.ndarray  # (n_bins,)


# ----------------------------------------------------------------------------- calibration


def reliability_diagram(
    result: CalibrationBins, path: str | Path, title_extra: str = "", ap: float | None = None,
    metric: str = "D-ECE", ylabel: str = "accuracy",
) -> None:
    """Write a reliability diagram PNG (paper Figure 8): accuracy per bin vs confidence, with counts.

    Top: accuracy bars, the gap to each bin's mean confidence shaded, and the
    diagonal (perfect calibration). Bottom: number of predictions per bin. ``metric``
    names ``result.ece`` in the title ("LaECE" for the IoU-accuracy bins, with
    ``ylabel`` "mean IoU-accuracy").
    """
    edges, width = result.bin_edges, np.diff(result.bin_edges)
    centres = edges[:-1] + width / 2
    nz = result.bin_count > 0
    fig = Figure(figsize=(5, 6), dpi=100, layout="constrained")
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})

    ax.bar(centres[nz], result.bin_acc[nz], width[nz], color="tab:blue", edgecolor="k",
           label=ylabel)
    gap_lo = np.minimum(result.bin_acc, result.bin_conf)[nz]
    gap_hi = np.maximum(result.bin_acc, result.bin_conf)[nz]
    ax.bar(centres[nz], gap_hi - gap_lo, width[nz], bottom=gap_lo, color="tab:red",
           alpha=0.3, edgecolor="tab:red", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel=ylabel)
    ax.legend(loc="upper left", fontsize=8)
    title = f"{metric} = {100 * result.ece:.2f}%"
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


def adaptive_reliability_diagram(result: CalibrationBins, path: str | Path, title_extra: str = "",
                                 metric: str = "LaACE$_0$", ylabel: str = "mean IoU-accuracy") -> None:
    """Write a reliability diagram over adaptive (equal-count) bins: bars as wide as each bin's score range.

    Top: mean IoU-accuracy per bin over its [edge, edge) span, the gap to its mean
    score shaded, each bin's (mean score, accuracy) as a dot, and the diagonal.
    Bottom: the width of each bin (equal counts make narrow bins where scores crowd).
    ``result.ece`` (the class mean, one detection per bin) goes in the title.
    """
    edges, width = result.bin_edges, np.diff(result.bin_edges)
    nz = result.bin_count > 0
    fig = Figure(figsize=(5, 6), dpi=100, layout="constrained")
    ax, ax_w = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(edges[:-1][nz], result.bin_acc[nz], width[nz], align="edge", color="tab:blue", edgecolor="k", label=ylabel)
    gap_lo = np.minimum(result.bin_acc, result.bin_conf)[nz]
    gap_hi = np.maximum(result.bin_acc, result.bin_conf)[nz]
    ax.bar(edges[:-1][nz], gap_hi - gap_lo, width[nz], bottom=gap_lo, align="edge", color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", label="gap to confidence")
    ax.plot(result.bin_conf[nz], result.bin_acc[nz], "o", color="k", ms=3, label="(mean score, accuracy)")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel=ylabel)
    ax.legend(loc="upper left", fontsize=8)
    title = f"{metric} = {100 * result.ece:.2f}%"
    ax.set_title(f"{title}\n{title_extra}" if title_extra else title)
    ax.text(0.98, 0.02, f"{int(nz.sum())} equal-count bins\nn = {result.n}", transform=ax.transAxes, ha="right",
            va="bottom", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0}, zorder=10)
    ax_w.bar(edges[:-1], width, width, align="edge", color="0.6", edgecolor="k")
    ax_w.set(xlim=(0, 1), xlabel="confidence", ylabel="bin width")
    _save(fig, path)


def calibration_curves(panels: dict[str, dict[str, CalibrationBins]], path: str | Path,
                       metrics: tuple[str, ...] = ("D-ECE", "LaECE")) -> None:
    """Write several detectors' confidence-vs-accuracy curves in one PNG (paper Figure 2).

    ``panels`` maps a panel's y label (e.g. "precision", "mean IoU-accuracy") to
    ``{detector name: its bins}``; ``metrics[i]`` names the ``ece`` of panel ``i`` in
    the legend. Each curve joins the non-empty bins' (mean confidence, accuracy).
    """
    fig = Figure(figsize=(5 * len(panels), 4.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, metric, (ylabel, curves) in zip(axes, metrics, panels.items()):
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        for name, r in curves.items():
            nz = r.bin_count > 0
            ax.plot(r.bin_conf[nz], r.bin_acc[nz], "o-", ms=4,
                    label=f"{name} ({metric} {100 * r.ece:.1f}%, n={r.n})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (mean score per bin)", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def confidence_histograms(columns: dict[str, HistogramBins], path: str | Path) -> None:
    """Write the paper's Figure 9 style PNG, one column per entry of ``columns``.

    ``columns`` maps a name (e.g. "class probability p", "objectness o",
    "confidence p*o") to that value's bins (see :func:`drmm.evaluation.bin_statistics`).
    Top row: per-bin accuracy vs bin centre; bottom row: number of predictions per bin.
    """
    fig = Figure(figsize=(4 * len(columns), 5.5), dpi=100, layout="constrained")
    axes = fig.subplots(2, len(columns), squeeze=False, sharex=True)
    for col, (name, bins) in enumerate(columns.items()):
        centres, width = (bins.edges[:-1] + bins.edges[1:]) / 2, np.diff(bins.edges)
        nz = bins.count > 0
        top, bottom = axes[0, col], axes[1, col]
        top.bar(centres[nz], bins.acc[nz], width[nz], color="tab:blue", edgecolor="k")
        top.plot([0, 1], [0, 1], "k--", lw=1)
        top.set(xlim=(0, 1), ylim=(0, 1), title=name, ylabel="accuracy" if col == 0 else None)
        bottom.bar(centres, bins.count, width, color="0.6", edgecolor="k")
        bottom.set(xlim=(0, 1), xlabel=name, ylabel="# predictions" if col == 0 else None)
    _save(fig, path)


def _save(fig: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


# ----------------------------------------------------------------------------- training


def loss_curve(log_path: str | Path, out: str | Path) -> None:
    """Plot the ``"train"`` rows of a training ``log.jsonl`` to ``out`` (PNG): total loss, last stage's NLL/MCM.

    Writes nothing when the log has no training row.
    """
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("type") == "train"]
    if not rows:
        return
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], label="total")
    stage_keys = sorted({k for r in rows for k in r if k.startswith(("nll.", "mcm."))})
    last_stage = max((int(k.split(".")[1]) for k in stage_keys), default=None)
    for k in [k for k in stage_keys if k.endswith(f".{last_stage}")]:
        ax.plot(steps, [r.get(k, float("nan")) for r in rows], label=f"{k} (last stage)", alpha=0.7)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss per batch")
    ax.set_yscale("symlog")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


# ----------------------------------------------------------------------------- detections


def _font() -> str | None:
    """A TrueType font so labels scale with the image (matplotlib ships DejaVu Sans)."""
    try:
        from matplotlib import font_manager

        return font_manager.findfont("DejaVu Sans", fallback_to_default=False)
    except Exception:  # no matplotlib font: torchvision's small default bitmap font
        return None


def draw_detections(
    image: Tensor,
    det: dict,
    class_names: list[str] | None = None,
    threshold: float = 0.3,
    high: float = 0.5,
) -> Tensor:
    """Draw boxes scoring >= ``threshold`` on ``image`` ([3, H, W], float in [0, 1] or uint8), paper style.

    ``det``: ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels [N]``. Labels read
    "name 0.87" (the label index when ``class_names`` is None); boxes in
    [threshold, high) are red, >= high green. Returns a uint8 [3, H, W] CPU tensor.
    """
    image = image.detach().cpu()
    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    scores = det["scores"].detach().float().cpu()
    keep = scores >= threshold
    boxes, scores = det["boxes"].detach().float().cpu()[keep], scores[keep]
    labels = det["labels"].detach().cpu()[keep].tolist()
    if len(boxes) == 0:
        return image
    names = [class_names[lab] if class_names is not None else str(lab) for lab in labels]
    text = [f"{name} {s:.2f}" for name, s in zip(names, scores.tolist())]
    colors = [HIGH_COLOR if s >= high else LOW_COLOR for s in scores.tolist()]
    size = max(image.shape[-2:])
    font = _font()
    return draw_bounding_boxes(
        image, boxes, labels=text, colors=colors, width=max(1, round(size / 320)),
        font=font, font_size=max(10, round(size / 50)) if font else None,
    )


def save_image_png(img: Tensor, path: str | Path) -> None:
    """Write a uint8 [3, H, W] tensor as PNG, creating parent directories.

    Uses PIL: torchvision's image encoders are deprecated since 0.29.
    """
    if img.dtype != torch.uint8 or img.dim() != 3:
        raise ValueError(f"expected a uint8 [C, H, W] tensor, got {img.dtype} {tuple(img.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.detach().cpu().permute(1, 2, 0).squeeze(-1).numpy()).save(path, format="PNG")
