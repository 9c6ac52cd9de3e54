"""Per-stage validation NLL and MCM (paper Tables 4, 9): accumulated over batches, then averaged.

The per-ground-truth terms come from the objective (``DRMMObjective.per_stage``),
on the model-input coordinates used in training; this module only sums and averages.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def accumulate_stage_losses(per_stage: list[tuple[Tensor, Tensor, Tensor]], sums: list[list[float]]) -> None:
    """Add one batch to ``sums`` (per stage: ``[sum NLL, sum MCM, sum exp(-MCM), #GT]``), in place.

    ``per_stage[s]`` is ``(nll [B, G], mcm [B, G], valid [B, G])`` for stage ``s``;
    only valid (real, not padded) ground truths count. Stages missing from ``sums``
    are appended.
    """
    for s, (nll, mcm, valid) in enumerate(per_stage):
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
    exp of the mean MCM, the other reading of the paper's "exp(-L_MCM)". Means over
    no ground truth are NaN.
    """
    rows = []
    for s, (nll, mcm, ratio, n) in enumerate(sums):
        nan = float("nan")
        rows.append({"stage": s + 1, "nll": nll / n if n else nan, "mcm": mcm / n if n else nan,
                     "exp_neg_mcm": ratio / n if n else nan,
                     "exp_neg_mean_mcm": math.exp(-mcm / n) if n else nan, "num_gt": n})
    return rows
