"""AdaMixer decoder (Gao et al. 2022): adaptive 3D sampling and mixing stages.

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
4. FFN, then the stage's head (:mod:`drmm.models.heads`).

Box update (both heads): the regression branch gives ``(dx, dy, dz, dr)`` and the
new box is ``x, y += (dx, dy) * 2^z``, ``z, r += (dz, dr)``, converted to xyxy
with ``w = 2^(z - r/2)``, ``h = 2^(z + r/2)``.

* D-RMM's mixture head: the regression branch gives 8 values, the xyzr delta and 4
  raw Cauchy scales. ``mu`` is the updated box's corners (so mu is the AdaMixer box
  prediction, as ``proposal + offset`` is for Sparse R-CNN). The scales are relative
  to the query box (``softplus(raw) * (w, h, w, h)``; config ``delta_mode: relative``)
  or in pixels (``delta_mode: pixels``): for AdaMixer that setting only chooses the scale.
* The baseline's box head: C class logits (prior 0.01) and the xyzr delta.

The next stage's query box is this stage's updated box (``mu`` for D-RMM),
detached, as ``(x, y, z, r)`` (not clipped; points outside the image read zeros).
The first query boxes come from the detector's proposals (AdaMixer: the whole
image) and are not learned.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import StageOutput
from .backbone import LEVELS, STRIDES
from .box_ops import box_iof, update_xyzr, xyxy_to_xyzr, xyzr_to_xyxy, xyzr_wh
from .layers import check_topk, feedforward, init_decoder, prune_top


def position_embedding(xyzr: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[..., 4 * dim]`` of ``(x / 1000, y / 1000, z, r)``, ``dim`` features per coordinate."""
    coords = xyzr / xyzr.new_tensor([1000.0, 1000.0, 1.0, 1.0])
    i = torch.arange(dim, device=xyzr.device, dtype=xyzr.dtype)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / dim)
    pos = coords[..., None] / freq  # [..., 4, dim]
    emb = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1).flatten(-2)  # sin, cos interleaved
    return emb.flatten(-2)


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
    one = xy.new_ones(())
    for level, (f, s) in enumerate(zip(features, strides)):
        h, w = f.shape[-2:]
        size = torch.stack([one * (w * s), one * (h * s)])  # not new_tensor: the ONNX export keeps h, w symbolic
        grid = 2 * xy / size - 1  # align_corners=False: pixel centres at (i + 0.5) s
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
    """One AdaMixer stage: IoF-biased self-attention, 3D sampling, adaptive mixing, FFN, head, box update.

    ``feature_channels`` is the width of the neck's maps (each of the ``groups``
    sampling groups reads ``feature_channels / groups`` of them); ``make_head()``
    builds the stage's head (last, so parameters are created in the released order).
    """

    def __init__(self, make_head: Callable[[], nn.Module], dim: int, num_heads: int, dim_feedforward: int,
                 feature_channels: int, groups: int, points: int, out_points: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)  # on each residual branch
        self.iof_tau = nn.Parameter(torch.zeros(num_heads))
        self.norm1 = nn.LayerNorm(dim)
        self.sampling = AdaptiveSampling(dim, groups, points)
        self.mixing = AdaptiveMixing(dim, feature_channels // groups, groups, points, out_points)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = feedforward(dim, dim_feedforward, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.head = make_head()

    def reset_parameters(self) -> None:
        """After the decoder-wide Xavier init: AdaMixer's zero / prior initialisations."""
        nn.init.uniform_(self.iof_tau, 0.0, 4.0)
        self.sampling.reset_parameters()
        self.mixing.reset_parameters()
        nn.init.zeros_(self.head.reg_out.weight)  # every stage starts as the identity box update
        nn.init.zeros_(self.head.reg_out.bias)
        self.head.reset_parameters()

    def forward(self, features: list[Tensor], xyzr: Tensor, content: Tensor) -> tuple[StageOutput, Tensor]:
        """``xyzr [B, K, 4]`` (detached), ``content [B, K, D]`` -> (output, the updated xyzr boxes)."""
        boxes = xyzr_to_xyxy(xyzr)
        bias = iof_attention_bias(boxes, self.iof_tau).to(content.dtype)
        q = content + position_embedding(xyzr, content.shape[-1] // 4).to(content.dtype)
        attn = self.self_attn(q, q, q, attn_mask=bias, need_weights=False)[0]
        content = self.norm1(q + self.dropout(attn))
        sampled = self.sampling(features, content, xyzr)
        content = self.norm2(content + self.dropout(self.mixing(sampled, content)))
        content = self.norm3(content + self.dropout(self.ffn(content)))
        cls, reg = self.head(content)
        new_xyzr = update_xyzr(xyzr.float(), reg[..., :4])
        return self.head.output(boxes.float(), xyzr_to_xyxy(new_xyzr), cls, reg, content), new_xyzr


class AdaMixerDecoder(nn.Module):
    """The stages in sequence on the neck's P2-P5; same call as the Sparse R-CNN decoder."""

    def __init__(self, stages: list[AdaMixerStage], topk_ratio: float = 1.0, topk_mode: str = "released") -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.topk_ratio, self.topk_mode = check_topk(topk_ratio, topk_mode)
        init_decoder(self)

    def forward(self, features: dict[str, Tensor], boxes: Tensor, content: Tensor,
                image_sizes: list[tuple[int, int]]) -> list[StageOutput]:
        """One :class:`StageOutput` per stage. ``image_sizes`` is unused: boxes are not clipped between stages."""
        feats = [features[name] for name in LEVELS]
        xyzr = xyxy_to_xyzr(boxes.detach().float())
        content = F.layer_norm(content, content.shape[-1:])  # AdaMixer: initial content normalised, no affine
        outputs = []
        for i, stage in enumerate(self.stages):
            out, xyzr = stage(feats, xyzr, content)
            out, (xyzr, content) = prune_top(out, stage.head.ranking(out).detach(), self.topk_ratio, self.topk_mode,
                                             i == len(self.stages) - 1, xyzr.detach(), out.features)
            outputs.append(out)
        return outputs
