"""The reproduce report: results and calibration tables, the claims, ``results.md`` / ``results.json``, the machine."""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

from .claims import AP_GAP, AR_TOL, percent
from .variants import LARGE_MAX_ITERS, VARIANTS


def machine_info(device: str | None = None) -> dict[str, Any]:
    """Platform, Python, CPU count, torch version and threads, device (and GPU name)."""
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": dev}
    if dev.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(dev))
    return info


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


TABLE_HEADER = ("variant", "paper AP", "iters", "s/iter", "AP", "AP50", "AR100", "ECE", "LaECE", "AP NMS0.7",
                "AP WTA", "exp(-MCM) last", "exp(-MCM) per stage")


def format_table(rows: dict[str, dict[str, Any]], failed: dict[str, str] | None = None) -> str:
    """Markdown table, one row per variant; AP/AR/ECE in percentage points, exp(-MCM) in 0..1."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for name, r in rows.items():
        stages = r.get("exp_neg_mcm_stages") or []
        cells = [name, f"{VARIANTS[name].paper_ap:.1f}" if name in VARIANTS else "-",
                 str(r["iterations"]) if r.get("iterations") is not None else "-", _f(r.get("seconds_per_iter"), 2),
                 *(percent(r.get(k, float("nan"))) for k in ("AP", "AP50", "AR100", "ECE", "LaECE", "AP_nms0.7",
                                                             "AP_wta")),
                 _f(r.get("exp_neg_mcm_last")), " / ".join(_f(s) for s in stages) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, msg in (failed or {}).items():
        lines.append(f"| {name} | " + " | ".join(["failed"] + ["-"] * (len(TABLE_HEADER) - 2)) + " |")
    return "\n".join(lines)


CALIBRATION_HEADER = ("variant", "D-ECE", "LaECE", "T", "D-ECE, temperature-scaled", "LaECE, temperature-scaled")


def format_posthoc_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table: each variant's D-ECE and LaECE on the held-out half of val, before and after temperature scaling.

    Values in percentage points; ``T`` the fitted temperature.
    """
    lines = ["| " + " | ".join(CALIBRATION_HEADER) + " |", "|" + "---|" * len(CALIBRATION_HEADER)]
    for name, r in rows.items():
        cells = [name, percent(r.get("ECE_half")), percent(r.get("LaECE_half")), _f(r.get("temperature"), 2),
                 percent(r.get("ECE_half_ts")), percent(r.get("LaECE_half_ts"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


HELDOUT_HEADER = ("variant", "scores", "AP", "LaECE_0", "LaACE_0", "LaECE_0, LRP thr.", "LaACE_0, LRP thr.",
                  "D-ECE", "LaECE", "oLRP")


def _calibrator_name(c: dict[str, Any]) -> str:
    if c["method"] == "none":
        return "none beats the raw scores"
    return f"{c['method']}{' per class' if c['per_class'] else ''} (fit to {c['target']})"


def format_heldout_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table: each variant on the held-out half as trained and with its best calibrator for LaECE_0 and
    for D-ECE (:mod:`drmm.evaluation.heldout`); percentage points."""
    lines = ["| " + " | ".join(HELDOUT_HEADER) + " |", "|" + "---|" * len(HELDOUT_HEADER)]
    for name, r in rows.items():
        h = r.get("heldout") or {}
        if "as_trained" not in h:
            continue
        for label, m in (("as trained", h["as_trained"]), *((f"best for {'LaECE_0' if t == 'iou' else 'D-ECE'}: "
                                                              f"{_calibrator_name(c)}", c)
                                                             for t, c in h["best"].items())):
            lines.append("| " + " | ".join([name, label, *(percent(m.get(k)) for k in (
                "AP", "laece_0", "laace_0", "laece_0_thr", "laace_0_thr", "d_ece", "laece", "lrp"))]) + " |")
    return "\n".join(lines)


def format_claims(claims: list[dict[str, str]]) -> str:
    """One line per claim: ``(id) VERDICT: claim. Ours: numbers. Paper: reference.``"""
    return "\n".join(f"({c['id']}) {c['verdict'].upper()}: {c['claim']}. Ours: {c['numbers']}. Paper: {c['paper']}."
                     for c in claims)


def _budget_text(budget: dict[str, Any]) -> str:
    if budget["iters"] is not None:
        return f"exactly {budget['iters']} training iterations per variant (no time limit)"
    return (f"{budget['minutes']:g} minutes of training per variant (`train.time_limit_minutes`; "
            f"`max_iters` {LARGE_MAX_ITERS}): a variant with a faster objective does more iterations, "
            "which is part of the comparison; the iteration count depends on the machine and its load")


def write_results(out: Path, report: dict[str, Any]) -> None:
    """``OUT/results.md`` and ``OUT/results.json`` from :func:`drmm.reproduce.reproduce`'s report."""
    from ..evaluation import write_json

    write_json(out / "results.json", report)
    m = report["machine"]
    rows, failed = report["variants"], report.get("failed", {})
    md = [
        "# D-RMM reproduction: objective variants under one budget", "",
        "```", report["command"], "```", "",
        f"* machine: {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} threads), device {m['device']}" + (f" ({m['gpu']})" if m.get("gpu") else ""),
        f"* budget: {_budget_text(report['budget'])}",
        f"* base config: `{report['base_config']}`" + (f" with `--set {' '.join(report['overrides'])}`"
                                                          if report["overrides"] else ""),
        f"* seed {report['seed']}, data `{report['data']}`; same data, seed, architecture, learning rate, "
        "schedule and budget for every variant. The Sparse R-CNN baseline uses the base config's learning "
        f"rate ({report['lr']:g}) and schedule, not its COCO recipe's, to compare like with like at this scale.",
        "* one training per variant, one seed, nothing tuned: differences of a point or so may be seed noise.", "",
        "## Results", "",
        format_table(rows, failed), "",
        "AP, AP50, AR100 (COCO, top 100), ECE (D-ECE, IoU 0.5, 10 bins, scores >= 0.05) and LaECE (IoU 0.5, 25 "
        "bins per class, mean over classes) in percentage points on the val split, from the last checkpoint. "
        "*AP NMS0.7*: after class-wise NMS at IoU 0.7; *AP WTA*: after winner-take-all at IoU 0.7. *exp(-MCM)*: "
        "mean over val ground truths of max_k comp_k / sum_k comp_k, per decoder stage (mixture variants only; "
        "for `nll_mcm_bipartite` the objective's matched component replaces the max). *paper AP*: COCO val, R50, "
        "36 epochs (the scale here is far smaller). *s/iter*: "
        "training wall time per iteration, data loading included.", "",
    ]
    for name, msg in failed.items():
        md.append(f"* `{name}` failed: {msg}")
    if failed:
        md.append("")
    for name, note in report.get("notes", {}).items():
        md.append(f"* `{name}`: {note}")
    md += ["## Calibration against a temperature-scaled baseline", "",
           "Each variant's detections on the val split, fitted by temperature scaling on the images at even "
           "positions of the sorted image ids and measured on the others (the held-out half), before and after "
           "(`drmm calibration --fit`; `<variant>/eval/temperature_scaling.json`). D-ECE and LaECE as above, on the "
           "held-out half only; *T*: the fitted temperature (T < 1 moves scores away from 0.5, T > 1 towards it).", "",
           format_posthoc_table(rows), "",
           "## Calibration after each detector's best post-hoc calibrator", "",
           "The ECCV 2024 metrics (Kuzucu et al.; `docs/calibration.md`): LaECE_0 and LaACE_0 over every detection "
           "(a true positive at IoU >= 0, the IoU as target), oLRP, with D-ECE, LaECE and AP, on the same held-out "
           "half; *LRP thr.*: the paper's protocol, only the detections at or above each class's LRP-optimal "
           "threshold found on the other half. Candidates: temperature, Platt, isotonic, one map or one per class, "
           "fitted on the other half to the IoU target (for LaECE_0) or to correct-at-0.5 (for D-ECE), applied as a "
           "calibrated model applies them (strictly increasing: AP unchanged); the best is the lowest on the "
           "held-out half, or none when none beats the raw scores (a choice that sees the half it is reported on, "
           "alike for every variant). All candidates are in `<variant>/eval/heldout_calibration.json`.", "",
           format_heldout_table(rows), "",
           "## The paper's claims", ""]
    for c in report["claims"]:
        md.append(f"* **({c['id']}) {c['verdict']}** - {c['claim']}. Ours: {c['numbers']}. Paper: {c['paper']}.")
    md += ["", f"Thresholds: (b) 'well below' = at least {percent(AP_GAP)} AP points lower, 'similar' AR100 = "
           f"within {percent(AR_TOL)} points; (a) uses >=, (c)-(f) strict comparisons. 'not run': a variant the "
           "claim compares was not run; 'undefined': a value it needs is NaN.", "", "## Reliability diagrams", ""]
    for name, r in rows.items():
        md += [f"### {name}", "", f"![reliability diagram of {name}]({r['reliability']})", ""]
    (out / "results.md").write_text("\n".join(md))
