"""Layers both decoders use: the feed-forward block, the head towers and top-k proposal selection."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from ..structures import StageOutput


def feedforward(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """The stages' FFN: Linear, ReLU, Dropout, Linear."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim))


def mlp_tower(dim: int, layers: int, bias: bool = False) -> nn.Sequential:
    """``layers`` x (Linear, LayerNorm, ReLU): the class / box towers before the output layers."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(dim, dim, bias=bias), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    return nn.Sequential(*mods)


TOPK_MODES = ("released", "next_stage")


def check_topk(ratio: float, mode: str = "released") -> tuple[float, str]:
    """The fraction of proposals kept at each stage (paper App. C.2) and how (:data:`TOPK_MODES`)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"topk_ratio must be in (0, 1], got {ratio}")
    if mode not in TOPK_MODES:
        raise ValueError(f"unknown topk_mode {mode!r}; choose from {TOPK_MODES}")
    return ratio, mode


def gather_rows(idx: Tensor, *tensors: Tensor) -> list[Tensor]:
    """Rows ``idx [B, k]`` of each ``[B, K, D]`` tensor."""
    return [torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1])) for t in tensors]


def prune_top(out: StageOutput, ranking: Tensor, ratio: float, mode: str, last: bool,
              *carry: Tensor) -> tuple[StageOutput, list[Tensor]]:
    """Top-k pruning after one stage: ``(out, the [B, K, D] tensors carried to the next stage)``.

    ``ranking [B, K]`` orders the components (detached). ``released``: the stage keeps
    its ``int(K * ratio)`` best components, marked in ``out.kept`` (the loss and the
    detections use only them), and the next stage gets them, best first; the last
    stage prunes too. ``next_stage`` (drmm 0.1): ``ceil(K * ratio)`` go on to the next
    stage and ``out`` is unchanged.
    """
    if ratio >= 1:
        return out, list(carry)
    K = ranking.shape[1]
    if mode == "released":
        idx = ranking.topk(max(1, int(K * ratio)), dim=1).indices
        kept = torch.zeros(ranking.shape, dtype=torch.bool, device=ranking.device).scatter_(1, idx, True)
        return replace(out, kept=kept), (list(carry) if last else gather_rows(idx, *carry))
    if last:
        return out, list(carry)
    return out, gather_rows(ranking.topk(math.ceil(K * ratio), dim=1).indices, *carry)


def init_decoder(decoder: nn.Module) -> None:
    """Xavier-uniform for every weight matrix of the decoder, then each stage's own initialisation (released)."""
    for p in decoder.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    for stage in decoder.stages:
        stage.reset_parameters()
