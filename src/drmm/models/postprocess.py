"""NMS-free post-processing: the top-k (component, class) pairs of each image.

Used by the detector at inference, by evaluation (which needs to know which pairs
were kept) and by export. The NMS and winner-take-all ablations of the paper live
with the evaluation code, not here.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .box_ops import boxes_to_original, clean_boxes


class TopKPostProcess(nn.Module):
    """Keep the ``detections_per_image`` highest of the K x C pair scores per image; no NMS.

    ``clip``: boxes with their corners in order, clipped to the image (drmm's output);
    otherwise as predicted, only scaled back (the released inference).
    ``score_calibration``: None (the model's own scores) or a
    :class:`~drmm.models.score_calibration.ScoreCalibration` applied to the kept scores,
    after the top-k, so the detections and their order within a class do not change.
    """

    def __init__(self, detections_per_image: int = 100, clip: bool = True) -> None:
        super().__init__()
        if detections_per_image < 1:
            raise ValueError(f"detections_per_image must be >= 1, got {detections_per_image}")
        self.detections_per_image = detections_per_image
        self.clip = clip
        self.score_calibration: nn.Module | None = None

    def select(self, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``scores [B, K, C]`` -> the kept ``(scores, components, classes)``, each ``[B, top]``, best first."""
        B, K, C = scores.shape
        values, idx = scores.flatten(1).topk(min(self.detections_per_image, K * C), dim=1)
        return values, idx // C, idx % C

    def calibrate(self, values: Tensor, classes: Tensor) -> Tensor:
        """The kept scores ``[B, top]`` of ``classes [B, top]`` calibrated (float64); as they are without one."""
        return values if self.score_calibration is None else self.score_calibration(values, classes)

    @torch.no_grad()
    def forward(self, scores: Tensor, boxes: Tensor, image_sizes: list[tuple[int, int]],
                original_sizes: list[tuple[int, int]]) -> tuple[list[dict[str, Tensor]], Tensor]:
        """Detections in each image's original coordinates, and the kept component of each ``[B, top]``.

        ``scores [B, K, C]`` pair confidences, ``boxes [B, K, 4]`` in the coordinates of
        the resized inputs of sizes ``image_sizes``; boxes are cleaned (corners in
        order, clipped; with ``clip``), scaled back to ``original_sizes`` and clipped again.
        Returns ``[{"boxes" [top, 4], "scores" [top], "labels" [top]}]`` per image.
        """
        values, comp, cls = self.select(scores)
        values = self.calibrate(values, cls)
        boxes = clean_boxes(boxes.float(), image_sizes) if self.clip else boxes.float()
        dets = [{"boxes": boxes_to_original(boxes[i, comp[i]], image_sizes[i], original_sizes[i], self.clip),
                 "scores": values[i], "labels": cls[i]} for i in range(len(image_sizes))]
        return dets, comp
