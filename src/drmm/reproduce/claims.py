"""The paper's claims a-e, judged on the reproduce results rows.

A row holds a variant's metrics in 0..1 (``AP``, ``AR100``, ``ECE``, ``AP_nms0.7``,
``exp_neg_mcm_last``, ...); NaN (or a missing value) means "not measured".
"""
from __future__ import annotations

import math
from typing import Any, Callable

AP_GAP = 0.02
"""Claim (b): NLL-only AP counts as "well below" D-RMM's when lower by at least this (2 AP points)."""
AR_TOL = 0.05
"""Claim (b): AR100 counts as "similar" when within this (5 AR points)."""


def to_float(v: Any) -> float:
    """JSON value -> float (null -> NaN)."""
    return float("nan") if v is None else float(v)


def is_bad(*values: float | None) -> bool:
    """Whether any value is missing or not finite."""
    return any(v is None or not math.isfinite(v) for v in values)


def percent(v: float | None) -> str:
    """A 0..1 metric as percentage points with one decimal ("nan" when not finite)."""
    return "nan" if is_bad(v) else f"{100 * v:.1f}"


def _a(ap_d: float, ap_b: float) -> tuple[bool, str]:
    return ap_d >= ap_b, f"AP D-RMM {percent(ap_d)} vs baseline {percent(ap_b)}"


def _b(ap_d: float, ar_d: float, ap_n: float, ar_n: float) -> tuple[bool, str]:
    gap, ar_diff = ap_d - ap_n, abs(ar_d - ar_n)
    return gap >= AP_GAP and ar_diff <= AR_TOL, (
        f"AP D-RMM {percent(ap_d)} vs NLL-only {percent(ap_n)} (gap {percent(gap)}, needs >= {percent(AP_GAP)}); "
        f"AR100 {percent(ar_d)} vs {percent(ar_n)} (|diff| {percent(ar_diff)}, needs <= {percent(AR_TOL)})")


def _c(ap_d: float, nms_d: float, ap_n: float, nms_n: float) -> tuple[bool, str]:
    lift_d, lift_n = nms_d - ap_d, nms_n - ap_n
    return lift_n > lift_d, (f"NMS 0.7 lifts NLL-only AP {percent(ap_n)} -> {percent(nms_n)} ({lift_n * 100:+.1f}), "
                             f"D-RMM {percent(ap_d)} -> {percent(nms_d)} ({lift_d * 100:+.1f})")


def _d(ece_d: float, ece_b: float) -> tuple[bool, str]:
    return ece_d < ece_b, f"ECE D-RMM {percent(ece_d)} vs baseline {percent(ece_b)}"


def _e(r_d: float, r_n: float) -> tuple[bool, str]:
    return r_d > r_n, f"last-stage exp(-MCM) D-RMM {r_d:.3f} vs NLL-only {r_n:.3f}"


# (id, claim, paper, variants compared, judge, row keys read from each variant in turn)
CLAIMS: tuple[tuple[str, str, str, tuple[str, ...], Callable[..., tuple[bool, str]], tuple[str, ...]], ...] = (
    ("a", "D-RMM AP >= Sparse R-CNN baseline AP", "Table 1: 47.0 vs 45.0 (R50)", ("drmm", "baseline"), _a, ("AP",)),
    ("b", f"NLL-only AP well below D-RMM (>= {percent(AP_GAP)} AP points lower) while AR100 is similar "
          f"(within {percent(AR_TOL)} points)",
     "Tables 2, 3: AP 35.6 vs 47.0, AR 65.1 vs 65.3", ("drmm", "nll_only"), _b, ("AP", "AR100")),
    ("c", "NMS (IoU 0.7) lifts NLL-only AP by more than it lifts D-RMM's",
     "Figure 7, Table 3: NLL-only 35.6 -> 42.7; D-RMM little change", ("drmm", "nll_only"), _c, ("AP", "AP_nms0.7")),
    ("d", "D-RMM ECE < Sparse R-CNN baseline ECE (more reliable confidence)", "Figure 2 (and Figure 8)",
     ("drmm", "baseline"), _d, ("ECE",)),
    ("e", "last-stage exp(-MCM) higher with the MCM loss (D-RMM) than without (NLL-only)",
     "Tables 4, 9: 0.892 vs 0.590", ("drmm", "nll_only"), _e, ("exp_neg_mcm_last",)),
)


def judge_claims(rows: dict[str, dict[str, Any]], failed: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The paper's claims a-e on ``rows`` (variant -> row with ``AP``, ``AR100``, ``ECE``, ...), each
    ``{"id", "claim", "paper", "needs", "verdict", "numbers"}``.

    ``verdict`` is "held", "not held", "not run" (a variant it compares is missing)
    (or failed: ``failed`` names it) or "undefined" (a value it needs is NaN, e.g. ECE
    without any detection >= 0.05).
    Metrics are in 0..1; ``numbers`` shows them in percentage points (x100).
    """
    claims = []
    for cid, claim, paper, needs, judge, keys in CLAIMS:
        entry = {"id": cid, "claim": claim, "paper": paper, "needs": ", ".join(needs)}
        missing = [n for n in needs if n not in rows]
        if missing:
            why = ", ".join(f"{n} (failed)" if n in (failed or {}) else n for n in missing)
            entry.update(verdict="not run", numbers=f"variant(s) not run: {why}")
        else:
            values = [to_float(rows[n].get(k)) for n in needs for k in keys]
            held, numbers = judge(*values)
            entry.update(verdict="undefined" if is_bad(*values) else ("held" if held else "not held"),
                         numbers=numbers)
        claims.append(entry)
    return claims
