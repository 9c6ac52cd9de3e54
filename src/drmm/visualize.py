"""Draw detections on images in the paper's style (red: low confidence, green: high)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

LOW_COLOR = (230, 40, 40)  # scores in [threshold, high)
HIGH_COLOR = (40, 200, 60)  # scores >= high


def _font() -> str | None:
    """A TrueType font so labels scale with the image (matplotlib ships DejaVu Sans)."""
    try:
        from matplotlib import font_manager

        return font_manager.findfont("DejaVu Sans", fallback_to_default=False)
    except Exception:  # no matplotlib font: torchvision's small default bitmap font
        return None


def draw_detections(
    image: Tensor,
    det: dict,
    class_names: list[str] | None = None,
    threshold: float = 0.3,
    high: float = 0.5,
) -> Tensor:
    """Draw boxes scoring >= ``threshold`` on ``image`` ([3, H, W], float in [0, 1] or uint8).

    Labels read "name 0.87" (the label index when ``class_names`` is None); boxes
    in [threshold, high) are red, >= high green. Returns a uint8 [3, H, W] CPU tensor.
    """
    image = image.detach().cpu()
    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    scores = det["scores"].detach().float().cpu()
    keep = scores >= threshold
    boxes, scores = det["boxes"].detach().float().cpu()[keep], scores[keep]
    labels = det["labels"].detach().cpu()[keep].tolist()
    if len(boxes) == 0:
        return image
    names = [class_names[lab] if class_names is not None else str(lab) for lab in labels]
    text = [f"{name} {s:.2f}" for name, s in zip(names, scores.tolist())]
    colors = [HIGH_COLOR if s >= high else LOW_COLOR for s in scores.tolist()]
    size = max(image.shape[-2:])
    font = _font()
    return draw_bounding_boxes(
        image, boxes, labels=text, colors=colors, width=max(1, round(size / 320)),
        font=font, font_size=max(10, round(size / 50)) if font else None,
    )


def save_image_png(img: Tensor, path: str | Path) -> None:
    """Write a uint8 [3, H, W] tensor as PNG, creating parent directories.

    Uses PIL: torchvision's image encoders are deprecated since 0.29.
    """
    if img.dtype != torch.uint8 or img.dim() != 3:
        raise ValueError(f"expected a uint8 [C, H, W] tensor, got {img.dtype} {tuple(img.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.detach().cpu().permute(1, 2, 0).squeeze(-1).numpy()).save(path, format="PNG")
