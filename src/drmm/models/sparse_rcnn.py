"""Sparse R-CNN decoder (Sun et al. 2021): dynamic instance-interactive stages.

Each stage pools a ``S x S`` RoI feature per proposal from P2-P5 (with the pooler
it is handed: torchvision's RoIAlign or the one-call grid_sample RoIAlign),
lets the proposal features attend to each other, mixes them with the RoI feature
through the dynamic instance-interactive convolution, applies an FFN and hands the
result to its head (:mod:`drmm.models.heads`), which predicts classes and moves the
boxes (D-RMM: ``mu = proposal + offset``; baseline: the R-CNN box coder).

The next stage starts from this stage's boxes, detached and used as they are
(released; ``clip_boxes`` reorders their corners and clips them to the image, as
drmm 0.1 did). With ``topk_ratio < 1`` only the proposals the head ranks highest go
on, so K shrinks from stage to stage (paper Appendix C.2; see
:func:`~drmm.models.layers.prune_top`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import StageOutput
from .box_ops import clean_boxes
from .layers import check_topk, feedforward, init_decoder, prune_top


class DynamicConv(nn.Module):
    """Instance-interactive conv: each proposal feature generates two 1x1-conv kernels for its RoI."""

    def __init__(self, dim: int, dynamic_dim: int, pooler_resolution: int) -> None:
        super().__init__()
        self.dim, self.dynamic_dim = dim, dynamic_dim
        self.params = nn.Linear(dim, 2 * dim * dynamic_dim)
        self.norm1 = nn.LayerNorm(dynamic_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.out = nn.Linear(dim * pooler_resolution**2, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, pro_features: Tensor, roi_features: Tensor) -> Tensor:
        """``pro_features [M, D]``, ``roi_features [M, S*S, D]`` -> ``[M, D]``."""
        n = self.dim * self.dynamic_dim  # two products on the weight's row blocks: contiguous kernels, no copies
        w1 = F.linear(pro_features, self.params.weight[:n], self.params.bias[:n]).view(-1, self.dim, self.dynamic_dim)
        w2 = F.linear(pro_features, self.params.weight[n:], self.params.bias[n:]).view(-1, self.dynamic_dim, self.dim)
        x = F.relu(self.norm1(torch.bmm(roi_features, w1)))
        x = F.relu(self.norm2(torch.bmm(x, w2)))
        return F.relu(self.norm3(self.out(x.flatten(1))))


class SparseRCNNStage(nn.Module):
    """Self-attention, dynamic conv, FFN (each with a residual and LayerNorm), then the head.

    ``make_head()`` builds this stage's head (last, so parameters are created in the
    released order).
    """

    def __init__(self, make_head: Callable[[], nn.Module], dim: int, num_heads: int, dim_feedforward: int,
                 dynamic_dim: int, pooler_resolution: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)  # on each residual branch
        self.norm1 = nn.LayerNorm(dim)
        self.dynamic_conv = DynamicConv(dim, dynamic_dim, pooler_resolution)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = feedforward(dim, dim_feedforward, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.head = make_head()

    def reset_parameters(self) -> None:
        """After the decoder-wide Xavier init: the head's prior."""
        self.head.reset_parameters()

    def forward(self, roi_features: Tensor, boxes: Tensor, pro_features: Tensor) -> StageOutput:
        """``roi_features [B*K, D, S, S]``, ``boxes [B, K, 4]``, ``pro_features [B, K, D]``."""
        B, K, D = pro_features.shape
        attn = self.self_attn(pro_features, pro_features, pro_features, need_weights=False)[0]
        pro = self.norm1(pro_features + self.dropout(attn))
        roi = roi_features.flatten(2).transpose(1, 2)  # [B*K, S*S, D]
        inst = self.dynamic_conv(pro.reshape(B * K, D), roi).view(B, K, D)
        pro = self.norm2(pro + self.dropout(inst))
        pro = self.norm3(pro + self.dropout(self.ffn(pro)))
        cls, reg = self.head(pro)
        boxes = boxes.float()
        return self.head.output(boxes, self.head.decode(reg[..., :4], boxes), cls, reg, pro)


class SparseRCNNDecoder(nn.Module):
    """The stages in sequence, each pooling RoIs at the boxes of the one before."""

    def __init__(self, stages: list[SparseRCNNStage], pooler: nn.Module, topk_ratio: float = 1.0,
                 topk_mode: str = "released", clip_boxes: bool = False) -> None:
        super().__init__()
        self.pooler = pooler
        self.stages = nn.ModuleList(stages)
        self.topk_ratio, self.topk_mode = check_topk(topk_ratio, topk_mode)
        self.clip_boxes = clip_boxes
        init_decoder(self)

    def forward(self, features: dict[str, Tensor], boxes: Tensor, pro_features: Tensor,
                image_sizes: list[tuple[int, int]]) -> list[StageOutput]:
        """P2-P5 ``features``, initial ``boxes [B, K, 4]`` and ``pro_features [B, K, D]`` -> one output per stage."""
        padded = tuple(4 * s for s in features["p2"].shape[-2:])
        canvas = self.pooler.canvas(features)  # built once, read by every stage
        outputs = []
        for i, stage in enumerate(self.stages):  # first-stage boxes stay learnable, later ones are detached
            out = stage(self.pooler(features, boxes, padded, canvas), boxes, pro_features)
            boxes = clean_boxes(out.boxes.detach(), image_sizes) if self.clip_boxes else out.boxes.detach()
            out, (boxes, pro_features) = prune_top(out, stage.head.ranking(out).detach(), self.topk_ratio,
                                                   self.topk_mode, i == len(self.stages) - 1, boxes, out.features)
            outputs.append(out)
        return outputs
