"""Inside-the-model input handling: check, resize, normalise, pad; and the way back.

Images arrive as a list of ``Tensor[3, H, W]`` in 0..1 of any sizes. Each is
resized so its short side is ``min_size`` (a random choice of
``train_min_sizes`` in training) with the long side at most ``max_size``,
normalised with the ImageNet statistics and zero-padded into one batch whose
sides are multiples of ``size_divisible``. Target boxes follow the resize.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_inputs(images: list[Tensor], targets: list[dict[str, Tensor]] | None, num_classes: int | None = None) -> None:
    """Clear errors for malformed inputs instead of shape errors deep inside the model."""
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError("images must be a non-empty list of Tensor[3, H, W]")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"images[{i}]: expected Tensor[3, H, W], got {shape}")
        if not img.is_floating_point():
            raise ValueError(f"images[{i}]: expected floats in 0..1, got dtype {img.dtype} (divide uint8 by 255)")
    if targets is None:
        return
    if len(targets) != len(images):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}] needs 'boxes' and 'labels'")
        b = t["boxes"]
        if b.dim() != 2 or b.shape[-1] != 4:
            raise ValueError(f"targets[{i}]['boxes']: expected Tensor[N, 4] xyxy, got {tuple(b.shape)}")
        if len(t["labels"]) != len(b):
            raise ValueError(f"targets[{i}]: {len(b)} boxes but {len(t['labels'])} labels")
        if b.numel() and not torch.isfinite(b).all():
            raise ValueError(f"targets[{i}]['boxes'] contains NaN or inf")
        if b.numel() and ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
            raise ValueError(f"targets[{i}]['boxes'] has boxes with x2 < x1 or y2 < y1 (expected xyxy)")
        labels = t["labels"]
        if labels.numel() and (labels.is_floating_point() or labels.min() < 0 or
                               (num_classes is not None and labels.max() >= num_classes)):
            raise ValueError(f"targets[{i}]['labels'] must be integers in 0..{(num_classes or 0) - 1}, "
                             f"got {labels.tolist()[:10]}")


class ImageTransform(nn.Module):
    def __init__(
        self,
        min_size: int,
        max_size: int,
        pixel_mean: list[float],
        pixel_std: list[float],
        size_divisible: int = 32,
        train_min_sizes: list[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.min_size = min_size
        self.max_size = max_size
        self.train_min_sizes = list(train_min_sizes) if train_min_sizes else None
        self.size_divisible = size_divisible
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    def _short_side(self) -> int:
        if self.training and self.train_min_sizes:
            return self.train_min_sizes[int(torch.randint(len(self.train_min_sizes), ()).item())]
        return self.min_size

    def resize(self, image: Tensor, target: dict[str, Tensor] | None) -> tuple[Tensor, dict | None]:
        h, w = image.shape[-2:]
        short = self._short_side()
        if short <= 0:  # resizing disabled
            return image, target
        scale = min(short / min(h, w), self.max_size / max(h, w))
        nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))  # halves round up, as mmcv
        if (nh, nw) != (h, w):
            image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        if target is not None:
            ratio = torch.tensor([nw / w, nh / h, nw / w, nh / h], device=image.device)
            target = {**target, "boxes": target["boxes"].to(image.device, torch.float32) * ratio}
        return image, target

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[Tensor, list[tuple[int, int]], list[dict[str, Tensor]] | None]:
        """Returns the padded batch ``[B,3,H,W]``, each image's resized ``(h, w)``, resized targets."""
        check_inputs(images, targets, self.num_classes)
        out_imgs, out_tgts = [], []
        for i, img in enumerate(images):
            img, tgt = self.resize(img, targets[i] if targets is not None else None)
            out_imgs.append((img - self.mean.to(img.dtype)) / self.std.to(img.dtype))
            out_tgts.append(tgt)
        sizes = [tuple(img.shape[-2:]) for img in out_imgs]
        d = self.size_divisible
        H = int(math.ceil(max(s[0] for s in sizes) / d) * d)
        W = int(math.ceil(max(s[1] for s in sizes) / d) * d)
        batch = out_imgs[0].new_zeros(len(out_imgs), 3, H, W)
        for i, img in enumerate(out_imgs):
            batch[i, :, : img.shape[1], : img.shape[2]] = img
        return batch, sizes, (out_tgts if targets is not None else None)
