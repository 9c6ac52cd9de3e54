"""Learnable proposals: N boxes (normalised cx, cy, w, h) and N feature vectors."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .box_ops import image_whwh


def grid_shape(n: int, aspect: float = 4 / 3) -> tuple[int, int]:
    """Rows x cols with rows * cols >= n closest to ``aspect`` (300 -> 15 x 20 as released)."""
    best = None
    for rows in range(1, n + 1):
        cols = math.ceil(n / rows)
        key = (rows * cols - n, abs(math.log(cols / rows / aspect)))
        if best is None or key < best[0]:
            best = (key, (rows, cols))
    return best[1]


def init_proposal_boxes(n: int, mode: str = "grid", size: float = 0.5) -> Tensor:
    """``[n, 4]`` normalised cxcywh: cell centres of a uniform grid (D-RMM) or the whole image."""
    if mode == "whole":
        return torch.tensor([0.5, 0.5, 1.0, 1.0]).repeat(n, 1)
    if mode != "grid":
        raise ValueError(f"unknown proposal_init {mode!r}; choose 'grid' or 'whole'")
    rows, cols = grid_shape(n)
    cy, cx = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
    centres = torch.stack([cx.flatten(), cy.flatten()], dim=1)[:n]
    return torch.cat([centres, torch.full((n, 2), size)], dim=1)


class Proposals(nn.Module):
    def __init__(self, num: int, dim: int, init: str = "grid", size: float = 0.5) -> None:
        super().__init__()
        self.boxes = nn.Embedding(num, 4)
        self.features = nn.Embedding(num, dim)
        self.init_mode, self.size = init, size
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.boxes.weight.copy_(init_proposal_boxes(self.boxes.num_embeddings, self.init_mode, self.size))

    def forward(self, image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Absolute xyxy boxes ``[B, N, 4]`` for each image's (h, w) and features ``[B, N, D]``."""
        cxcywh = self.boxes.weight
        xyxy = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], dim=1)
        whwh = image_whwh(image_sizes, xyxy.dtype, xyxy.device)
        boxes = xyxy[None] * whwh[:, None]
        feats = self.features.weight[None].expand(len(image_sizes), -1, -1)
        return boxes, feats
