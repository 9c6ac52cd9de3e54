"""Layers both decoders use: the feed-forward block, the head towers and top-k proposal selection."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def feedforward(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """The stages' FFN: Linear, ReLU, Dropout, Linear."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim))


def mlp_tower(dim: int, layers: int, bias: bool = False) -> nn.Sequential:
    """``layers`` x (Linear, LayerNorm, ReLU): the class / box towers before the output layers."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(dim, dim, bias=bias), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    return nn.Sequential(*mods)


def keep_top(score: Tensor, ratio: float, *tensors: Tensor) -> list[Tensor]:
    """Rows of each ``[B, K, D]`` tensor for the ``ceil(K * ratio)`` highest ``score [B, K]`` per image."""
    idx = score.topk(math.ceil(score.shape[1] * ratio), dim=1).indices.unsqueeze(-1)
    return [torch.gather(t, 1, idx.expand(-1, -1, t.shape[-1])) for t in tensors]


def check_topk_ratio(ratio: float) -> float:
    """The fraction of proposals kept after each stage but the last (paper App. C.2)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"topk_ratio must be in (0, 1], got {ratio}")
    return ratio


def init_decoder(decoder: nn.Module) -> None:
    """Xavier-uniform for every weight matrix of the decoder, then each stage's own initialisation (released)."""
    for p in decoder.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    for stage in decoder.stages:
        stage.reset_parameters()
