"""One-to-one matching of predictions to ground truths (Hungarian algorithm), shared by the objectives."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

_BIG = 1e8  # stands in for non-finite costs so the assignment stays solvable


def hungarian_match(cost: Tensor, sizes: list[int], padded: bool = False) -> list[tuple[Tensor, Tensor]]:
    """Minimum-cost one-to-one assignment per image.

    Args:
        cost: ``[B, K, Gtot]``: every prediction against the ground truths of the
            whole batch concatenated (image ``b`` owns columns
            ``sum(sizes[:b]) .. sum(sizes[:b+1])``), as DETR's matcher builds it; or,
            with ``padded=True``, ``[B, K, G]`` with image ``b``'s ground truths in
            columns ``:sizes[b]``.
        sizes: number of ground truths of each image.

    Returns:
        per image ``(pred_idx, gt_idx)`` int64 CPU tensors of equal length
        ``min(K, sizes[b])``; ``gt_idx`` counts from 0 within the image, sorted.
    """
    if len(sizes) != cost.shape[0]:
        raise ValueError(f"cost has {cost.shape[0]} images but {len(sizes)} sizes were given")
    c = torch.nan_to_num(cost.detach().float(), nan=_BIG, posinf=_BIG, neginf=-_BIG).cpu().numpy()  # one transfer
    starts = np.zeros(len(sizes), dtype=np.int64) if padded else np.cumsum([0] + list(sizes))[:-1]
    out = []
    for b, (s, n) in enumerate(zip(starts, sizes)):
        gt, pred = linear_sum_assignment(c[b, :, s : s + n].T)  # rows = ground truths: gt sorted
        out.append((torch.as_tensor(pred, dtype=torch.int64), torch.as_tensor(gt, dtype=torch.int64)))
    return out


def assigned_components(matches: list[tuple[Tensor, Tensor]], fallback: Tensor) -> tuple[Tensor, Tensor]:
    """Per-ground-truth component index ``[B, G]`` from padded matches, and the matched mask ``[B, G]``.

    ``matches`` as returned by :func:`hungarian_match` with ``padded=True``;
    ``fallback [B, G]`` (int64) is kept where a ground truth is unmatched.
    """
    b = torch.cat([torch.full_like(g, i) for i, (_, g) in enumerate(matches)]).to(fallback.device)
    g = torch.cat([g for _, g in matches]).to(fallback.device)
    p = torch.cat([p for p, _ in matches]).to(fallback.device)
    assigned = fallback.clone()
    assigned[b, g] = p
    matched = torch.zeros_like(fallback, dtype=torch.bool)
    matched[b, g] = True
    return assigned, matched
