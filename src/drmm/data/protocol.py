"""What a detection dataset offers the rest of drmm (training, evaluation, calibration).

:class:`~drmm.data.coco.CocoDetection` is the one implementation: a YOLO or VOC
split is converted into a COCO dict and served by it (:mod:`drmm.data.formats`), so a
new layout never needs a new dataset class.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class DetectionDataset(Protocol):
    """``(image [3, H, W] float 0..1, target)`` by index; contiguous labels map to the dataset's category ids.

    ``target`` holds ``boxes`` (xyxy pixels), ``labels`` (0..C-1), ``image_id`` and
    ``orig_size``; ``cat_ids[label]`` is the category id and ``class_names[label]`` its
    name; ``ids`` are the image ids served, in index order; ``coco`` is a pycocotools
    ``COCO`` view of the ground truth for COCOeval and the calibration measures.
    """

    ids: list[int]
    class_names: list[str]
    cat_ids: list[int]
    coco: Any

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]: ...
