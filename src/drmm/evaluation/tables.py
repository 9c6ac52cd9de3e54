"""Aligned text tables of evaluation results, as the CLI prints them (values x100 where COCO-style)."""
from __future__ import annotations

import math
from typing import Any


def _fmt(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "nan" if v is not None else "-"
    return f"{scale * v:.{digits}f}"


def format_metrics_table(metrics: dict) -> str:
    """Two-column aligned text table, values shown x100 (COCO convention), NaN as "nan"; only the numbers
    (``lrp_thresholds``, per class, and the row lists of ``drmm eval`` are left out)."""
    metrics = {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float))}
    width = max([len(str(k)) for k in metrics] + [6])
    lines = [f"{'metric':<{width}}  {'x100':>6}", "-" * (width + 8)]
    for k, v in metrics.items():
        v = float("nan") if v is None else float(v)
        lines.append(f"{str(k):<{width}}  {'nan' if math.isnan(v) else f'{100 * v:.1f}':>6}")
    return "\n".join(lines)


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


def format_calibration_table(rows: list[dict[str, Any]], first: str = "class") -> str:
    """``first`` | n | correct | D-ECE | LaECE, one line per row (``name``, ``n``, ``n_correct``, ``d_ece``, ``laece``).

    D-ECE and LaECE x100 with two decimals.
    """
    width = max([len(first)] + [len(str(r["name"])) for r in rows])
    lines = [f"{first:<{width}}  {'n':>7}  {'correct':>7}  {'D-ECE':>6}  {'LaECE':>6}", "-" * (width + 38)]
    for r in rows:
        lines.append(f"{str(r['name']):<{width}}  {r['n']:>7}  {r['n_correct']:>7}  "
                     f"{_fmt(r['d_ece'], 100, 2):>6}  {_fmt(r['laece'], 100, 2):>6}")
    return "\n".join(lines)
