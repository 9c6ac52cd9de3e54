"""Box operations shared by the decoders, the heads and the detector; pure functions on tensors.

Boxes are ``[..., 4]`` xyxy pixels unless a name says otherwise. Image sizes are
``(h, w)`` tuples, as :class:`~drmm.models.transform.ImageTransform` returns them.
AdaMixer's ``(x, y, z, r)`` boxes: centre in pixels, ``z = log2(sqrt(w h))``,
``r = log2(h / w)``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

_DW_CLAMP = math.log(1000.0 / 16)
_MAX_LOG2_SIZE = 20.0  # boxes up to 2^20 px a side: a runaway z or r cannot overflow exp2 to inf


def image_whwh(image_sizes: list[tuple[int, int]] | Tensor, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
    """``[B, 4]`` (w, h, w, h) of each image, from ``(h, w)`` sizes (a ``[B, 4]`` whwh tensor passes through).

    The tensor form lets the ONNX export hand over sizes that depend on the input's shape.
    """
    if isinstance(image_sizes, Tensor):
        return image_sizes.to(dtype=dtype, device=device)
    return torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=dtype, device=device)


def box_whwh(boxes: Tensor, min_size: float = 1.0) -> Tensor:
    """``[..., 4]`` (w, h, w, h) of each box, each side at least ``min_size``."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=min_size)
    return torch.cat([wh, wh], dim=-1)


def decode_deltas(deltas: Tensor, boxes: Tensor, weights: tuple[float, ...] = (2.0, 2.0, 1.0, 1.0)) -> Tensor:
    """Standard R-CNN box coder: (dx, dy, dw, dh) relative to ``boxes`` (xyxy) -> xyxy."""
    wh = boxes[..., 2:] - boxes[..., :2]
    ctr = boxes[..., :2] + 0.5 * wh
    d = deltas / deltas.new_tensor(weights)
    ctr = ctr + d[..., :2] * wh
    size = torch.exp(d[..., 2:].clamp(max=_DW_CLAMP)) * wh
    return torch.cat([ctr - 0.5 * size, ctr + 0.5 * size], dim=-1)


def clean_boxes(boxes: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
    """``[B, K, 4]``: corners reordered, clipped to each image, sides >= 1 px."""
    wh = image_whwh(image_sizes, boxes.dtype, boxes.device)[:, None, :2]
    lo = torch.minimum(boxes[..., :2], boxes[..., 2:])
    hi = torch.maximum(boxes[..., :2], boxes[..., 2:])
    lo = torch.minimum(lo.clamp(min=0), wh - 1)
    hi = torch.maximum(torch.minimum(hi, wh), lo + 1)
    return torch.cat([lo, hi], dim=-1)


def boxes_to_original(boxes: Tensor, resized: tuple[int, int], original: tuple[int, int],
                      clip: bool = True) -> Tensor:
    """``[N, 4]`` boxes of the resized input mapped back to the original image and (``clip``) clipped to it."""
    (rh, rw), (oh, ow) = resized, original
    boxes = boxes * boxes.new_tensor([ow / rw, oh / rh, ow / rw, oh / rh])
    if clip:
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ow)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, oh)
    return boxes


def box_iof(boxes: Tensor) -> Tensor:
    """``[B, N, N]``: intersection of boxes i and j over the area of box i."""
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (boxes[..., 2:] - boxes[..., :2]).prod(-1).clamp(min=1e-6)
    return inter / area[:, :, None]


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
