"""Data-side augmentation of the paper's recipe on torchvision.transforms.v2.

Training: horizontal flip, then for half of the images the Sparse R-CNN / DETR crop
policy (short side to a random choice of ``crop_resize``, random crop with sides in
``crop_size``), then degenerate boxes are dropped. The final multi-scale resize is
done by the model. All randomness comes from torch's global RNG, so seeding torch
(and the DataLoader workers) makes the pipeline reproducible.
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

from ..config import DataConfig


class RandomSizeCrop(v2.Transform):
    """Crop a random ``h x w`` window, each side uniform in ``[min_size, max_size]`` capped at the image side.

    Same as detectron2's ``RandomCrop("absolute_range")`` used by Sparse R-CNN; boxes
    are clipped to the window (drop the empty ones with ``SanitizeBoundingBoxes``).
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)

        def draw(side: int) -> int:
            lo, hi = min(side, self.min_size), min(side, self.max_size)
            return int(torch.randint(lo, hi + 1, ()))

        ch, cw = draw(h), draw(w)
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def build_transforms(data_cfg: DataConfig, train: bool) -> v2.Transform:
    """The training augmentation, or the identity for evaluation (the model resizes)."""
    if not train:
        return v2.Identity()
    s = data_cfg.scale
    steps: list[v2.Transform] = []
    if data_cfg.flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if data_cfg.crop:
        sizes = [max(1, round(x * s)) for x in data_cfg.crop_resize]
        lo, hi = (max(1, round(x * s)) for x in data_cfg.crop_size)
        steps.append(v2.RandomApply([v2.RandomShortestSize(sizes), RandomSizeCrop(lo, hi)], p=0.5))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()]
    return v2.Compose(steps)
