"""Sparse R-CNN decoder (Sun et al. 2021) with a D-RMM mixture head or a box head.

Each stage pools a 7 x 7 RoI feature per proposal from P2-P5, lets the proposal
features attend to each other, mixes them with the RoI feature through the
dynamic instance-interactive convolution, applies an FFN and predicts:

* ``head="mixture"`` (D-RMM): objectness + C class logits; 4 location deltas added
  to the proposal box in pixels (``mu``) and 4 raw scales.
* ``head="box"`` (Hungarian baseline): C class logits; 4 deltas decoded with the
  (2, 2, 1, 1) box coder.

The next stage starts from this stage's boxes, detached, reordered and clipped;
with ``topk_ratio < 1`` only the ``ceil(K * ratio)`` highest-scoring of them
(objectness for the mixture head, max class logit for the box head) go on, so K
shrinks from stage to stage (paper Appendix C.2).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import StageOutput
from .backbone import LEVELS
from .poolers import build_pooler

_DW_CLAMP = math.log(1000.0 / 16)


def decode_deltas(deltas: Tensor, boxes: Tensor, weights: tuple[float, ...] = (2.0, 2.0, 1.0, 1.0)) -> Tensor:
    """Standard R-CNN box coder: (dx, dy, dw, dh) relative to ``boxes`` (xyxy) -> xyxy."""
    wh = boxes[..., 2:] - boxes[..., :2]
    ctr = boxes[..., :2] + 0.5 * wh
    w = deltas.new_tensor(weights)
    d = deltas / w
    ctr = ctr + d[..., :2] * wh
    size = torch.exp(d[..., 2:].clamp(max=_DW_CLAMP)) * wh
    return torch.cat([ctr - 0.5 * size, ctr + 0.5 * size], dim=-1)


def relative_raw_scale(raw: Tensor, whwh: Tensor) -> Tensor:
    """Raw scales whose softplus is ``softplus(raw) * whwh``: Cauchy scales relative to a box's size."""
    scale = (F.softplus(raw) * whwh).clamp(min=1e-4)
    return scale + torch.log(-torch.expm1(-scale))  # inverse softplus


def clean_boxes(boxes: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
    """Reorder corners, clip to each image and keep sides >= 1 px (proposals for the next stage)."""
    wh = torch.tensor([[w, h] for h, w in image_sizes], dtype=boxes.dtype, device=boxes.device)[:, None]
    lo = torch.minimum(boxes[..., :2], boxes[..., 2:])
    hi = torch.maximum(boxes[..., :2], boxes[..., 2:])
    lo = torch.minimum(lo.clamp(min=0), wh - 1)
    hi = torch.maximum(torch.minimum(hi, wh), lo + 1)
    return torch.cat([lo, hi], dim=-1)


def keep_top(score: Tensor, ratio: float, *tensors: Tensor) -> list[Tensor]:
    """Rows of each ``[B, K, D]`` tensor for the ``ceil(K * ratio)`` highest ``score [B, K]`` per image."""
    idx = score.topk(math.ceil(score.shape[1] * ratio), dim=1).indices.unsqueeze(-1)
    return [torch.gather(t, 1, idx.expand(-1, -1, t.shape[-1])) for t in tensors]


def feedforward(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """The stages' FFN: Linear, ReLU, Dropout, Linear."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim))


def output_layers(dim: int, num_classes: int, head: str) -> tuple[nn.Linear, nn.Linear]:
    """Class and box output layers: objectness + C logits and 4 deltas + 4 raw scales (mixture), or C and 4 (box)."""
    mixture = head == "mixture"
    return nn.Linear(dim, num_classes + (1 if mixture else 0)), nn.Linear(dim, 8 if mixture else 4)


def mlp_tower(dim: int, layers: int, bias: bool = False) -> nn.Sequential:
    """``layers`` x (Linear, LayerNorm, ReLU): the class / box towers before the output layers."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(dim, dim, bias=bias), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    return nn.Sequential(*mods)


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
    def __init__(self, cfg, head: str) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.head = head
        if cfg.delta_mode not in ("pixels", "proposal", "relative"):
            raise ValueError(f"delta_mode must be pixels, proposal or relative, got {cfg.delta_mode!r}")
        self.delta_mode = cfg.delta_mode
        self.self_attn = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.dynamic_conv = DynamicConv(d, cfg.dynamic_dim, cfg.pooler_resolution)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = feedforward(d, cfg.dim_feedforward, cfg.dropout)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.cls_tower = mlp_tower(d, cfg.num_cls_layers)
        self.reg_tower = mlp_tower(d, cfg.num_reg_layers)
        self.cls_out, self.reg_out = output_layers(d, cfg.num_classes, head)

    def forward(
        self, roi_features: Tensor, boxes: Tensor, pro_features: Tensor
    ) -> tuple[StageOutput, Tensor]:
        """``roi_features [B*K, D, S, S]``, ``boxes [B, K, 4]``, ``pro_features [B, K, D]``."""
        B, K, D = pro_features.shape
        attn = self.self_attn(pro_features, pro_features, pro_features, need_weights=False)[0]
        pro = self.norm1(pro_features + self.dropout(attn))
        roi = roi_features.flatten(2).transpose(1, 2)  # [B*K, S*S, D]
        inst = self.dynamic_conv(pro.reshape(B * K, D), roi).view(B, K, D)
        pro = self.norm2(pro + self.dropout(inst))
        pro = self.norm3(pro + self.dropout(self.ffn(pro)))

        cls_feat, reg_feat = self.cls_tower(pro), self.reg_tower(pro)
        with torch.autocast(pro.device.type, enabled=False):  # pixel deltas need fp32 (bf16: ~1 px steps)
            cls = self.cls_out(cls_feat.float())
            reg = self.reg_out(reg_feat.float())
            boxes = boxes.float()
        if self.head == "mixture":
            delta, raw_scale = reg[..., :4], reg[..., 4:]
            if self.delta_mode in ("proposal", "relative"):
                wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1.0)
                whwh = torch.cat([wh, wh], dim=-1)
                delta = delta * whwh
                if self.delta_mode == "relative":
                    raw_scale = relative_raw_scale(raw_scale, whwh)
            out = StageOutput(boxes, boxes + delta, cls[..., 1:], cls[..., 0], raw_scale, pro)
        else:
            out = StageOutput(boxes, decode_deltas(reg, boxes), cls, features=pro)
        return out, pro


class SparseRCNNDecoder(nn.Module):
    """``num_stages`` Sparse R-CNN stages, RoI pooling with torchvision's MultiScaleRoIAlign."""

    def __init__(self, cfg, head: str = "mixture") -> None:
        super().__init__()
        if head not in ("mixture", "box"):
            raise ValueError(f"head must be 'mixture' or 'box', got {head!r}")
        if cfg.fpn_channels != cfg.hidden_dim:
            raise ValueError(f"Sparse R-CNN needs fpn_channels == hidden_dim, got {cfg.fpn_channels} and {cfg.hidden_dim}")
        self.pooler = build_pooler(cfg.pooler, list(LEVELS), cfg.pooler_resolution, cfg.sampling_ratio)
        self.stages = nn.ModuleList(SparseRCNNStage(cfg, head) for _ in range(cfg.num_stages))
        self.head = head
        if not 0 < cfg.topk_ratio <= 1:
            raise ValueError(f"topk_ratio must be in (0, 1], got {cfg.topk_ratio}")
        self.topk_ratio = cfg.topk_ratio
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if self.head == "box":  # focal-loss prior 0.01 for the baseline
            for stage in self.stages:
                nn.init.constant_(stage.cls_out.bias, -math.log((1 - 0.01) / 0.01))

    def forward(
        self,
        features: dict[str, Tensor],
        boxes: Tensor,
        pro_features: Tensor,
        image_sizes: list[tuple[int, int]],
    ) -> list[StageOutput]:
        padded = tuple(features["p2"].shape[-2:])
        padded = (padded[0] * 4, padded[1] * 4)
        canvas = self.pooler.canvas(features)  # built once, read by every stage
        outputs = []
        for i, stage in enumerate(self.stages):  # first-stage boxes stay learnable, later ones are detached
            rois = self.pooler(features, boxes, padded, canvas)
            out, pro_features = stage(rois, boxes, pro_features)
            outputs.append(out)
            boxes = clean_boxes(out.boxes.detach(), image_sizes)
            if self.topk_ratio < 1 and i < len(self.stages) - 1:
                score = out.objectness_logit if self.head == "mixture" else out.class_logits.amax(-1)
                boxes, pro_features = keep_top(score.detach(), self.topk_ratio, boxes, pro_features)
        return outputs
