"""AdaMixer decoder (Gao et al. 2022) with a D-RMM mixture head or a box head.

A query is a content vector and a box in ``(x, y, z, r)``: centre in pixels,
``z = log2(sqrt(w h))``, ``r = log2(h / w)``. Each stage:

1. position-aware self-attention: a sinusoidal embedding of ``(x, y, z, r)`` is added
   to the content, and the attention logits of query i to query j get
   ``tau_h * log(IoF(i, j) + 1e-7)`` (one learned ``tau`` per head);
2. adaptive 3D sampling: each of G groups places P points around the box (offsets
   scaled by w, h) and at a depth ``z + dz``, reads every level bilinearly and
   mixes the levels with softmax weights over ``-(z_s - log2(stride))^2 / 2``;
3. adaptive mixing: the content generates a channel-mixing matrix (C_g x C_g) and a
   spatial-mixing matrix (out points x P) per group, applied to the sampled points;
4. FFN, then the heads.

Box update (both heads): the regression branch gives ``(dx, dy, dz, dr)`` and the
new box is ``x, y += (dx, dy) * 2^z``, ``z, r += (dz, dr)``, converted to xyxy
with ``w = 2^(z - r/2)``, ``h = 2^(z + r/2)``.

* ``head="mixture"`` (D-RMM): the regression branch gives 8 values, the xyzr delta
  and 4 raw Cauchy scales. ``mu`` is the updated box's corners (so mu is the
  AdaMixer box prediction, as ``proposal + delta`` is for Sparse R-CNN). The scales
  are relative to the query box (``softplus(raw) * (w, h, w, h)``) with
  ``delta_mode: relative``, or in pixels with ``delta_mode: pixels``.
  Objectness + C class logits as for Sparse R-CNN.
* ``head="box"`` (Hungarian baseline): C class logits (prior 0.01) and the xyzr delta.

The next stage's query box is this stage's updated box (``mu`` for D-RMM),
detached, as ``(x, y, z, r)`` (not clipped; points outside the image read zeros).
The first query boxes come from the detector's proposals (AdaMixer: the whole
image) and are not learned.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..structures import StageOutput
from .backbone import LEVELS, STRIDES
from .sparse_rcnn import feedforward, keep_top, mlp_tower, output_layers, relative_raw_scale

_MAX_LOG2_SIZE = 20.0  # boxes up to 2^20 px a side: a runaway z or r cannot overflow exp2 to inf


def xyxy_to_xyzr(boxes: Tensor) -> Tensor:
    """``[..., 4]`` corners -> ``(x, y, z, r)``: centre, log2 of the geometric-mean side, log2 aspect h / w."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-3)
    ctr = 0.5 * (boxes[..., :2] + boxes[..., 2:])
    z = 0.5 * torch.log2(wh[..., 0] * wh[..., 1])
    r = torch.log2(wh[..., 1] / wh[..., 0])
    return torch.cat([ctr, z[..., None], r[..., None]], dim=-1)


def xyzr_wh(xyzr: Tensor) -> Tensor:
    """``[..., 2]`` box width and height: ``w = 2^(z - r/2)``, ``h = 2^(z + r/2)``."""
    z, r = xyzr[..., 2:3], xyzr[..., 3:4]
    return torch.exp2(torch.cat([z - 0.5 * r, z + 0.5 * r], dim=-1).clamp(max=_MAX_LOG2_SIZE))


def xyzr_to_xyxy(xyzr: Tensor) -> Tensor:
    """Inverse of :func:`xyxy_to_xyzr`."""
    wh = xyzr_wh(xyzr)
    return torch.cat([xyzr[..., :2] - 0.5 * wh, xyzr[..., :2] + 0.5 * wh], dim=-1)


def update_xyzr(xyzr: Tensor, delta: Tensor) -> Tensor:
    """AdaMixer's box update: ``x, y += (dx, dy) * 2^z``; ``z, r += (dz, dr)``."""
    step = torch.exp2(xyzr[..., 2:3].clamp(max=_MAX_LOG2_SIZE))
    return torch.cat([xyzr[..., :2] + delta[..., :2] * step, xyzr[..., 2:] + delta[..., 2:]], dim=-1)


def position_embedding(xyzr: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[..., 4 * dim]`` of ``(x / 1000, y / 1000, z, r)``, ``dim`` features per coordinate."""
    coords = xyzr / xyzr.new_tensor([1000.0, 1000.0, 1.0, 1.0])
    i = torch.arange(dim, device=xyzr.device, dtype=xyzr.dtype)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / dim)
    pos = coords[..., None] / freq  # [..., 4, dim]
    emb = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1).flatten(-2)  # sin, cos interleaved
    return emb.flatten(-2)


def box_iof(boxes: Tensor) -> Tensor:
    """``[B, N, N]``: intersection of boxes i and j over the area of box i (xyxy)."""
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (boxes[..., 2:] - boxes[..., :2]).prod(-1).clamp(min=1e-6)
    return inter / area[:, :, None]


def iof_attention_bias(boxes: Tensor, tau: Tensor, eps: float = 1e-7) -> Tensor:
    """``[B * H, N, N]`` attention-logit bias ``tau_h * log(IoF(i, j) + eps)``, row ``b * H + h``.

    The layout ``nn.MultiheadAttention`` expects for a 3-D ``attn_mask``; query i
    attends to key j, IoF normalised by the area of box i.
    """
    log_iof = torch.log(box_iof(boxes) + eps)
    B, N, _ = log_iof.shape
    return (tau[None, :, None, None] * log_iof[:, None]).reshape(B * tau.numel(), N, N)


def sample_3d(
    features: list[Tensor], strides: tuple[int, ...], x: Tensor, y: Tensor, z: Tensor
) -> Tensor:
    """Adaptive 3D sampling: bilinear reads at pixel ``(x, y)`` on every level, mixed over levels by ``z``.

    ``features``: per level ``[B, C, H_l, W_l]`` with stride ``strides[l]`` (pixel
    centres at ``(i + 0.5) * stride``; zeros outside). ``x, y, z``: ``[B, N, G, P]``;
    group g reads channels ``g * C/G .. (g + 1) * C/G``. Level weights: softmax over
    levels of ``-(z - log2(stride))^2 / 2``. Returns ``[B, N, G, P, C/G]`` in the
    features' dtype; positions and level weights are computed in float32.
    """
    B, N, G, P = x.shape
    C = features[0].shape[1]
    log_strides = torch.tensor([math.log2(s) for s in strides], dtype=z.dtype, device=z.device)
    weights = (-0.5 * (z[..., None] - log_strides) ** 2).softmax(-1)  # [B, N, G, P, L]
    weights = weights.permute(0, 2, 4, 1, 3).reshape(B * G, len(strides), 1, N, P)
    xy = torch.stack([x, y], dim=-1).permute(0, 2, 1, 3, 4).reshape(B * G, N, P, 2)
    out = None
    for level, (f, s) in enumerate(zip(features, strides)):
        h, w = f.shape[-2:]
        grid = 2 * xy / xy.new_tensor([w * s, h * s]) - 1  # align_corners=False: pixel centres at (i + 0.5) s
        # grid_sample needs one dtype: read bf16/fp16 maps in float32 rather than round the positions
        sampled = F.grid_sample(f.reshape(B * G, C // G, h, w).to(grid.dtype), grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # [B*G, C/G, N, P]
        sampled = sampled * weights[:, level]
        out = sampled if out is None else out + sampled
    return out.view(B, G, C // G, N, P).permute(0, 3, 1, 4, 2).to(features[0].dtype)


class AdaptiveSampling(nn.Module):
    """Content -> G x P point offsets ``(dx, dy, dz)`` around the query box -> :func:`sample_3d`.

    The offsets and positions are computed in float32 (under autocast too): in bf16
    they would be quantised to ~0.4% of the box size.
    """

    def __init__(self, dim: int, groups: int, points: int, strides: tuple[int, ...] = STRIDES) -> None:
        super().__init__()
        self.groups, self.points, self.strides = groups, points, tuple(strides)
        self.offsets = nn.Linear(dim, groups * points * 3)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.offsets.weight)
        with torch.no_grad():
            bias = self.offsets.bias.view(self.groups, self.points, 3)
            bias[..., :2].uniform_(-0.5, 0.5)
            bias[..., 2].fill_(-1.0)

    def forward(self, features: list[Tensor], content: Tensor, xyzr: Tensor) -> Tensor:
        B, N, _ = content.shape
        with torch.autocast(content.device.type, enabled=False):
            off = self.offsets(content.float()).view(B, N, self.groups, self.points, 3)
        q = xyzr.float()[:, :, None, None, :]
        wh = xyzr_wh(xyzr.float())[:, :, None, None, :]
        x = q[..., 0] + off[..., 0] * wh[..., 0]
        y = q[..., 1] + off[..., 1] * wh[..., 1]
        z = q[..., 2] + off[..., 2]
        return sample_3d(features, self.strides, x, y, z)


class AdaptiveMixing(nn.Module):
    """Per query and group: x M (channels), then S x (points), each followed by LayerNorm and ReLU; flatten, Linear.

    Both layer norms normalise a group's whole ``points x channels`` block and have
    no affine parameters, as in AdaMixer's code.
    """

    def __init__(self, dim: int, channels: int, groups: int, points: int, out_points: int) -> None:
        super().__init__()
        self.channels, self.groups, self.points, self.out_points = channels, groups, points, out_points
        self.generator = nn.Linear(dim, groups * (channels * channels + out_points * points))
        self.out = nn.Linear(groups * out_points * channels, dim)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.generator.weight)  # the bias alone gives the initial (shared) mixing matrices

    def forward(self, sampled: Tensor, content: Tensor) -> Tensor:
        """``sampled [B, N, G, P, C_g]``, ``content [B, N, D]`` -> ``[B, N, D]``."""
        B, N, G, P, C = sampled.shape
        params = self.generator(content).reshape(B * N * G, -1)
        m = params[:, : C * C].view(-1, C, C)
        s = params[:, C * C:].view(-1, self.out_points, P)
        x = sampled.reshape(B * N * G, P, C)
        x = F.relu(F.layer_norm(torch.bmm(x, m), (P, C)))
        x = F.relu(F.layer_norm(torch.bmm(s, x), (self.out_points, C)))
        return self.out(x.view(B, N, -1))


class AdaMixerStage(nn.Module):
    """One AdaMixer stage: IoF-biased self-attention, 3D sampling, adaptive mixing, FFN, heads, box update."""

    def __init__(self, cfg: ModelConfig, head: str) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.head = head
        if cfg.delta_mode not in ("pixels", "relative"):
            raise ValueError(
                f"AdaMixer moves boxes in (x, y, z, r); delta_mode only sets the Cauchy scale: "
                f"'relative' (x query size) or 'pixels', got {cfg.delta_mode!r}"
            )
        self.relative_scale = cfg.delta_mode == "relative"
        self.self_attn = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.iof_tau = nn.Parameter(torch.zeros(cfg.num_heads))
        self.norm1 = nn.LayerNorm(d)
        groups = cfg.sampling_groups
        self.sampling = AdaptiveSampling(d, groups, cfg.sampling_points)
        self.mixing = AdaptiveMixing(d, cfg.fpn_channels // groups, groups, cfg.sampling_points,
                                     cfg.mixing_out_points)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = feedforward(d, cfg.dim_feedforward, cfg.dropout)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.cls_tower = mlp_tower(d, cfg.num_cls_layers, bias=True)  # AdaMixer's tower Linears have biases
        self.reg_tower = mlp_tower(d, cfg.num_reg_layers, bias=True)
        self.cls_out, self.reg_out = output_layers(d, cfg.num_classes, head)

    def reset_parameters(self) -> None:
        """After the decoder-wide Xavier init: AdaMixer's zero / prior initialisations."""
        nn.init.uniform_(self.iof_tau, 0.0, 4.0)
        self.sampling.reset_parameters()
        self.mixing.reset_parameters()
        nn.init.zeros_(self.reg_out.weight)
        nn.init.zeros_(self.reg_out.bias)
        if self.head == "box":
            nn.init.constant_(self.cls_out.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, features: list[Tensor], xyzr: Tensor, content: Tensor) -> tuple[StageOutput, Tensor, Tensor]:
        """``xyzr [B, K, 4]`` (detached), ``content [B, K, D]`` -> (output, new content, new xyzr)."""
        boxes = xyzr_to_xyxy(xyzr)
        bias = iof_attention_bias(boxes, self.iof_tau).to(content.dtype)
        q = content + position_embedding(xyzr, content.shape[-1] // 4).to(content.dtype)
        attn = self.self_attn(q, q, q, attn_mask=bias, need_weights=False)[0]
        content = self.norm1(q + self.dropout(attn))
        sampled = self.sampling(features, content, xyzr)
        content = self.norm2(content + self.dropout(self.mixing(sampled, content)))
        content = self.norm3(content + self.dropout(self.ffn(content)))

        cls_feat, reg_feat = self.cls_tower(content), self.reg_tower(content)
        with torch.autocast(content.device.type, enabled=False):  # boxes need fp32
            cls = self.cls_out(cls_feat.float())
            reg = self.reg_out(reg_feat.float())
            xyzr, boxes = xyzr.float(), boxes.float()
        new_xyzr = update_xyzr(xyzr, reg[..., :4])
        new_boxes = xyzr_to_xyxy(new_xyzr)
        if self.head == "mixture":
            raw_scale = reg[..., 4:]
            if self.relative_scale:
                wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1.0)
                raw_scale = relative_raw_scale(raw_scale, torch.cat([wh, wh], dim=-1))
            out = StageOutput(boxes, new_boxes, cls[..., 1:], cls[..., 0], raw_scale, content)
        else:
            out = StageOutput(boxes, new_boxes, cls, features=content)
        return out, content, new_xyzr


class AdaMixerDecoder(nn.Module):
    """``num_stages`` AdaMixer stages on the neck's P2-P5; same call as the Sparse R-CNN decoder."""

    def __init__(self, cfg: ModelConfig, head: str = "mixture") -> None:
        super().__init__()
        if head not in ("mixture", "box"):
            raise ValueError(f"head must be 'mixture' or 'box', got {head!r}")
        if cfg.fpn_channels != cfg.hidden_dim:
            raise ValueError(f"AdaMixer needs fpn_channels == hidden_dim, got {cfg.fpn_channels} and {cfg.hidden_dim}")
        if cfg.hidden_dim % cfg.sampling_groups or cfg.hidden_dim % (4 * 2):
            raise ValueError(f"hidden_dim ({cfg.hidden_dim}) must be divisible by sampling_groups "
                             f"({cfg.sampling_groups}) and by 8 (position embedding)")
        if not 0 < cfg.topk_ratio <= 1:
            raise ValueError(f"topk_ratio must be in (0, 1], got {cfg.topk_ratio}")
        self.head = head
        self.topk_ratio = cfg.topk_ratio
        self.stages = nn.ModuleList(AdaMixerStage(cfg, head) for _ in range(cfg.num_stages))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for stage in self.stages:
            stage.reset_parameters()

    def forward(
        self,
        features: dict[str, Tensor],
        boxes: Tensor,
        content: Tensor,
        image_sizes: list[tuple[int, int]],
    ) -> list[StageOutput]:
        """One :class:`StageOutput` per stage. ``image_sizes`` is unused: boxes are not clipped between stages."""
        feats = [features[name] for name in LEVELS]
        xyzr = xyxy_to_xyzr(boxes.detach().float())
        content = F.layer_norm(content, content.shape[-1:])  # AdaMixer: initial content normalised, no affine
        outputs = []
        for i, stage in enumerate(self.stages):
            out, content, xyzr = stage(feats, xyzr, content)
            outputs.append(out)
            xyzr = xyzr.detach()
            if self.topk_ratio < 1 and i < len(self.stages) - 1:
                score = out.objectness_logit if self.head == "mixture" else out.class_logits.amax(-1)
                xyzr, content = keep_top(score.detach(), self.topk_ratio, xyzr, content)
        return outputs
