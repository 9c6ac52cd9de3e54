"""Prediction heads: what one decoder stage outputs per proposal and how it is read.

A head owns its towers and output layers, their widths and prior initialisation,
the conversion of raw outputs into a :class:`~drmm.structures.StageOutput`, the
confidence of each (proposal, class) pair and the score that ranks proposals. The
decoder calls it in two steps, because the architecture decides how boxes move::

    cls, reg = head(features)                                # raw outputs, float32
    boxes = head.decode(reg[..., :4], proposals)             # Sparse R-CNN's box update
    out = head.output(proposals, boxes, cls, reg, features)  # -> StageOutput

(AdaMixer computes ``boxes`` from ``reg[..., :4]`` by its own xyzr update.) The
objective names the head it needs (``objective.head``, a key of :data:`HEADS`).

* :class:`MixtureHead` (D-RMM): objectness + C class logits; 4 location outputs and
  4 raw Cauchy scales. confidence = ``softmax(classes)[c] * sigmoid(objectness)``.
* :class:`BoxHead` (Hungarian baselines): C class logits (focal-loss prior 0.01) and 4
  box outputs. confidence = ``sigmoid(class logit)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..mixture import mixture_probabilities
from ..structures import StageOutput
from .box_ops import box_whwh, decode_deltas
from .layers import mlp_tower

FOCAL_PRIOR = 0.01


def relative_raw_scale(raw: Tensor, whwh: Tensor) -> Tensor:
    """Raw scales whose softplus is ``softplus(raw) * whwh``: Cauchy scales relative to a box's size."""
    scale = (F.softplus(raw) * whwh).clamp(min=1e-4)
    return scale + torch.log(-torch.expm1(-scale))  # inverse softplus


class _Head(nn.Module):
    """Class and box towers (``layers`` x Linear, LayerNorm, ReLU) and the two output layers."""

    extra_class_outputs = 0  # outputs before the C class logits
    box_outputs = 4

    def __init__(self, dim: int, num_classes: int, cls_layers: int, reg_layers: int, tower_bias: bool) -> None:
        super().__init__()
        self.cls_tower = mlp_tower(dim, cls_layers, tower_bias)
        self.reg_tower = mlp_tower(dim, reg_layers, tower_bias)
        self.cls_out = nn.Linear(dim, num_classes + self.extra_class_outputs)
        self.reg_out = nn.Linear(dim, self.box_outputs)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``features [B, K, D]`` -> float32 ``(class outputs [B, K, *], box outputs [B, K, box_outputs])``."""
        cls_feat, reg_feat = self.cls_tower(features), self.reg_tower(features)
        with torch.autocast(features.device.type, enabled=False):  # pixel offsets need fp32 (bf16: ~1 px steps)
            return self.cls_out(cls_feat.float()), self.reg_out(reg_feat.float())

    def reset_parameters(self) -> None:
        """The head's own initialisation, applied after the decoder's Xavier init."""

    def decode(self, offsets: Tensor, proposals: Tensor) -> Tensor:
        """Boxes ``[B, K, 4]`` xyxy px: the proposals ``[B, K, 4]`` moved by the first 4 box outputs ``[B, K, 4]``
        (Sparse R-CNN's update; AdaMixer moves its boxes itself)."""
        raise NotImplementedError

    def output(self, proposals: Tensor, boxes: Tensor, cls: Tensor, reg: Tensor, features: Tensor) -> StageOutput:
        """The stage's :class:`~drmm.structures.StageOutput` from proposals and boxes ``[B, K, 4]``, the raw
        class outputs ``[B, K, C + extra_class_outputs]``, box outputs ``[B, K, box_outputs]`` and the
        proposal features ``[B, K, D]``."""
        raise NotImplementedError

    def scores(self, stage: StageOutput) -> Tensor:
        """``[B, K, C]`` confidence of each (component, class) pair; 0 for components top-k pruning dropped."""
        scores = self.pair_scores(stage)
        return scores if stage.kept is None else scores * stage.kept[..., None]

    def pair_scores(self, stage: StageOutput) -> Tensor:
        """``[B, K, C]`` confidence of each (proposal, class) pair, ignoring pruning."""
        raise NotImplementedError

    def ranking(self, stage: StageOutput) -> Tensor:
        """``[B, K]`` the score that ranks proposals when the decoder keeps only the top ones."""
        raise NotImplementedError


class MixtureHead(_Head):
    """D-RMM's mixture component per proposal: mixing weight, 4-D Cauchy, categorical.

    Args:
        relative_offsets: Sparse R-CNN's update ``mu = proposal + offset * (w, h, w, h)``
            of the proposal instead of ``proposal + offset`` in pixels (released).
        relative_scales: Cauchy scales ``softplus(raw) * (w, h, w, h)`` of the proposal
            instead of ``softplus(raw)`` pixels (released).
        min_scale_ratio: the scale floor of the objective, used to read gamma.
    """

    extra_class_outputs = 1  # objectness first, as released
    box_outputs = 8

    def __init__(self, dim: int, num_classes: int, cls_layers: int, reg_layers: int, tower_bias: bool = False,
                 relative_offsets: bool = False, relative_scales: bool = False,
                 min_scale_ratio: float = 0.04) -> None:
        super().__init__(dim, num_classes, cls_layers, reg_layers, tower_bias)
        self.relative_offsets, self.relative_scales = relative_offsets, relative_scales
        self.min_scale_ratio = min_scale_ratio

    def decode(self, offsets: Tensor, proposals: Tensor) -> Tensor:
        """``mu [B, K, 4]``: the proposal moved by the 4 location outputs (no coder, no clipping)."""
        return proposals + (offsets * box_whwh(proposals) if self.relative_offsets else offsets)

    def output(self, proposals: Tensor, boxes: Tensor, cls: Tensor, reg: Tensor, features: Tensor) -> StageOutput:
        raw_scale = reg[..., 4:]
        if self.relative_scales:
            raw_scale = relative_raw_scale(raw_scale, box_whwh(proposals))
        return StageOutput(proposals, boxes, cls[..., 1:], cls[..., 0], raw_scale, features)

    def pair_scores(self, stage: StageOutput) -> Tensor:
        """``[B, K, C]`` confidence ``p_k[c] * o_k``."""
        return stage.class_logits.float().softmax(-1) * stage.objectness_logit.float().sigmoid()[..., None]

    def ranking(self, stage: StageOutput) -> Tensor:
        """``[B, K]`` objectness logit: which proposals go on when only the top ones are kept."""
        return stage.objectness_logit

    def mixture_parameters(self, stage: StageOutput) -> dict[str, Tensor]:
        """mu, gamma, pi, objectness o and class probabilities p of one stage."""
        return mixture_probabilities(stage.boxes, stage.raw_scale, stage.objectness_logit, stage.class_logits,
                                     self.min_scale_ratio)


class BoxHead(_Head):
    """The Hungarian baselines' head: C sigmoid class logits and one box per proposal."""

    def decode(self, deltas: Tensor, proposals: Tensor) -> Tensor:
        """Sparse R-CNN's (2, 2, 1, 1) R-CNN box coder."""
        return decode_deltas(deltas, proposals)

    def output(self, proposals: Tensor, boxes: Tensor, cls: Tensor, reg: Tensor, features: Tensor) -> StageOutput:
        return StageOutput(proposals, boxes, cls, features=features)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.cls_out.bias, -math.log((1 - FOCAL_PRIOR) / FOCAL_PRIOR))

    def pair_scores(self, stage: StageOutput) -> Tensor:
        """``[B, K, C]`` sigmoid class scores."""
        return stage.class_logits.float().sigmoid()

    def ranking(self, stage: StageOutput) -> Tensor:
        """``[B, K]`` highest class logit."""
        return stage.class_logits.amax(-1)


HEADS: dict[str, type[_Head]] = {"mixture": MixtureHead, "box": BoxHead}
"""The head each objective names in its ``head`` attribute."""
