"""Multi-level RoIAlign: torchvision's ``roi_align`` per level, or one ``grid_sample`` call.

Both average ``sampling_ratio^2`` bilinear samples per output bin from one FPN level
per box (samples more than one pixel outside a level read zero). Two conventions:

* ``aligned=True`` (released, mmcv's RoIAlign): box corners shifted by half a pixel
  (``x * scale - 0.5``), bins as small as the box, level
  ``floor(log2(sqrt(|w h|) / 56 + 1e-6))`` clamped to P2-P5 (< 112 px -> P2,
  < 224 -> P3, < 448 -> P4, else P5). ``|w h|`` keeps a box with swapped corners on
  a level (the release computes a NaN level for it and pools zeros).
* ``aligned=False`` (drmm 0.1): torchvision's ``MultiScaleRoIAlign`` (no shift, bins
  of at least 1 / S pixel, level ``floor(4 + log2(sqrt(wh) / 224 + 1e-6))``, the same
  up to the epsilon).

``GridRoIAlign`` lays the four levels side by side on one canvas, clamps each sample
to its own level and reads every box of the batch with a single ``F.grid_sample``.
Aligned, it matches torchvision's ``roi_align(aligned=True)`` to float precision,
zeros outside included; unaligned (drmm 0.1) it matches ``MultiScaleRoIAlign`` for
samples inside the maps and reads the border value outside. It is several times
faster on CPUs, where torchvision's RoIAlign backward dominates the training step.
On GPUs measure before switching.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, roi_align


def box_levels(boxes: Tensor, k_min: int = 2, k_max: int = 5, canonical_scale: int = 224,
               canonical_level: int = 4) -> Tensor:
    """FPN level index (0 = P2) of each box ``[..., 4]``, torchvision's rule (``aligned=False``)."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    k = torch.floor(canonical_level + torch.log2(area.sqrt() / canonical_scale + 1e-6))
    return (k.clamp(k_min, k_max) - k_min).to(torch.int64)


def released_levels(boxes: Tensor, num_levels: int = 4, finest_scale: float = 56.0) -> Tensor:
    """Level index (0 = P2) of each box ``[..., 4]``: mmdet's ``floor(log2(sqrt(|w h|) / 56 + 1e-6))``."""
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).abs()
    k = torch.floor(torch.log2(area.sqrt() / finest_scale + 1e-6))
    return k.clamp(0, num_levels - 1).to(torch.int64)


def level_scales(heights: Tensor, image_height: int) -> Tensor:
    """``1 / stride`` of each level from its height and the padded batch's, a power of two (as torchvision)."""
    return torch.exp2(torch.round(torch.log2(heights / image_height)))


class GridRoIAlign(nn.Module):
    def __init__(self, levels: list[str], output_size: int, sampling_ratio: int, aligned: bool = True) -> None:
        super().__init__()
        if sampling_ratio < 1:
            raise ValueError("GridRoIAlign needs sampling_ratio >= 1 (adaptive sampling is torchvision-only)")
        self.levels, self.output_size, self.sampling_ratio = list(levels), output_size, sampling_ratio
        self.aligned = aligned

    def canvas(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Levels side by side: ``[B, C, H, sum W]`` plus per-level x offsets, sizes and strides."""
        feats = [features[n] for n in self.levels]
        H = feats[0].shape[-2]
        canvas = torch.cat([F.pad(f, (0, 0, 0, H - f.shape[-2])) for f in feats], dim=-1)
        widths = torch.tensor([f.shape[-1] for f in feats], device=canvas.device)
        offsets = torch.cumsum(widths, 0) - widths
        heights = torch.tensor([f.shape[-2] for f in feats], device=canvas.device)
        return canvas, offsets, widths, heights

    def forward(self, features: dict[str, Tensor], boxes: Tensor, image_size: tuple[int, int],
                canvas: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """``boxes [B, K, 4]`` in input pixels -> ``[B*K, C, S, S]``.

        ``image_size`` is the padded batch size (strides are derived from it, as
        torchvision does); pass ``canvas`` to reuse it across decoder stages.
        """
        canvas, offsets, widths, heights = canvas or self.canvas(features)
        B, K, _ = boxes.shape
        S, r = self.output_size, self.sampling_ratio
        dt = canvas.dtype
        boxes = boxes.detach().to(dt)
        lvl = released_levels(boxes, len(self.levels)) if self.aligned else box_levels(boxes)  # [B, K]
        s = level_scales(heights.to(dt), image_size[0])[lvl][..., None]  # [B, K, 1]
        shift = 0.5 if self.aligned else 0.0
        x1, y1, x2, y2 = (boxes[..., i : i + 1] * s - shift for i in range(4))
        bw, bh = x2 - x1, y2 - y1
        if not self.aligned:
            bw, bh = bw.clamp(min=1.0), bh.clamp(min=1.0)
        steps = (torch.arange(S * r, device=canvas.device, dtype=dt) + 0.5) / r  # bin units
        xs = x1 + steps * (bw / S)  # [B, K, S*r]
        ys = y1 + steps * (bh / S)
        w_l, h_l = widths[lvl].to(dt)[..., None], heights[lvl].to(dt)[..., None]
        inside = None
        if self.aligned:  # torchvision's kernel: a sample more than 1 px outside the map reads zero
            inside = ((ys >= -1) & (ys <= h_l))[..., :, None] & ((xs >= -1) & (xs <= w_l))[..., None, :]
        xs = xs.clamp(min=0).minimum(w_l - 1) + offsets[lvl].to(dt)[..., None]
        ys = ys.clamp(min=0).minimum(h_l - 1)
        Hc, Wc = canvas.shape[-2:]
        gx = xs * (2.0 / max(Wc - 1, 1)) - 1
        gy = ys * (2.0 / max(Hc - 1, 1)) - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), dim=-1)  # [B,K,Sr,Sr,2]
        out = F.grid_sample(canvas, grid.reshape(B, K * S * r, S * r, 2), mode="bilinear",
                            padding_mode="border", align_corners=True)  # [B, C, K*S*r, S*r]
        if inside is not None:
            out = out * inside.reshape(B, 1, K * S * r, S * r).to(dt)
        C = canvas.shape[1]
        out = out.view(B, C, K, S, r, S, r).mean(dim=(4, 6))
        return out.permute(0, 2, 1, 3, 4).reshape(B * K, C, S, S)


class TorchvisionRoIAlign(nn.Module):
    """torchvision's RoIAlign behind the same call as :class:`GridRoIAlign`.

    Aligned: ``roi_align(aligned=True)`` on each level with :func:`released_levels`;
    unaligned: ``MultiScaleRoIAlign`` as it is.
    """

    def __init__(self, levels: list[str], output_size: int, sampling_ratio: int, aligned: bool = True) -> None:
        super().__init__()
        self.levels, self.output_size, self.sampling_ratio = list(levels), output_size, sampling_ratio
        self.aligned = aligned
        self.pooler = MultiScaleRoIAlign(list(levels), output_size, sampling_ratio)

    def canvas(self, features: dict[str, Tensor]) -> None:
        return None

    def forward(self, features: dict[str, Tensor], boxes: Tensor, image_size: tuple[int, int],
                canvas: None = None) -> Tensor:
        if not self.aligned:
            return self.pooler(features, list(boxes.unbind(0)), [image_size] * len(boxes))
        feats = [features[n] for n in self.levels]
        B, K, _ = boxes.shape
        flat = boxes.detach().reshape(B * K, 4).to(feats[0].dtype)
        image = torch.arange(B, device=flat.device, dtype=flat.dtype).repeat_interleave(K)
        rois = torch.cat([image[:, None], flat], dim=1)
        lvl = released_levels(flat, len(feats))
        heights = torch.tensor([float(f.shape[-2]) for f in feats])
        scales = level_scales(heights, image_size[0]).tolist()
        S = self.output_size
        out = flat.new_zeros(B * K, feats[0].shape[1], S, S)
        for level, (f, scale) in enumerate(zip(feats, scales)):  # empty levels too: every map gets a gradient (DDP)
            idx = torch.nonzero(lvl == level).squeeze(1)
            out[idx] = roi_align(f, rois[idx], S, scale, self.sampling_ratio, aligned=True).to(out.dtype)
        return out


def build_pooler(kind: str, levels: list[str], output_size: int, sampling_ratio: int,
                 aligned: bool = True) -> nn.Module:
    if kind == "torchvision":
        return TorchvisionRoIAlign(levels, output_size, sampling_ratio, aligned)
    if kind == "grid":
        return GridRoIAlign(levels, output_size, sampling_ratio, aligned)
    raise ValueError(f"unknown pooler {kind!r}; choose 'torchvision' or 'grid'")
