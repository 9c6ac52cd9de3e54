"""Small shared data structures: one decoder stage's output, a forward pass's trace, padded targets."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class StageOutput:
    """What one decoder stage predicts for a batch (boxes in model-input pixels).

    ``boxes`` is the stage's box estimate: the mixture location ``mu`` for D-RMM,
    the decoded box for the Hungarian baseline. ``objectness_logit`` and
    ``raw_scale`` exist only for mixture heads. ``kept`` marks the components the
    released top-k pruning keeps (``model.topk_ratio < 1``, ``topk_mode: released``):
    the loss and the detections cover only those; None means all.
    """

    proposals: Tensor  # [B, K, 4] the boxes this stage started from
    boxes: Tensor  # [B, K, 4]
    class_logits: Tensor  # [B, K, C]
    objectness_logit: Tensor | None = None  # [B, K]
    raw_scale: Tensor | None = None  # [B, K, 4]
    features: Tensor | None = None  # [B, K, D] proposal features after the stage
    kept: Tensor | None = None  # [B, K] bool


@dataclass
class ForwardTrace:
    """What a forward pass computed besides its result (``model(..., return_stages=True)``).

    Everything is in the coordinates of the resized model inputs.
    """

    stages: list[StageOutput]  # one per decoder stage
    image_sizes: list[tuple[int, int]]  # (h, w) of each resized image
    targets: list[dict[str, Tensor]] | None = None  # the targets given, resized like the images
    components: Tensor | None = None  # [B, top] eval mode: the component of each detection


def pad_targets(targets: list[dict[str, Tensor]], device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-image ground truths into padded ``boxes [B,G,4]``, ``labels [B,G]``, ``valid [B,G]``.

    ``G`` is the largest count in the batch (at least 1, so empty batches still
    have a well-formed, all-invalid tensor).
    """
    B = len(targets)
    G = max([1] + [len(t["boxes"]) for t in targets])
    device = device or (targets[0]["boxes"].device if targets else None)
    dtype = targets[0]["boxes"].dtype if targets and targets[0]["boxes"].is_floating_point() else torch.float32
    boxes = torch.zeros(B, G, 4, device=device, dtype=dtype)
    labels = torch.zeros(B, G, dtype=torch.int64, device=device)
    valid = torch.zeros(B, G, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = len(t["boxes"])
        boxes[i, :n] = t["boxes"].to(device=device, dtype=boxes.dtype)
        labels[i, :n] = t["labels"].to(device)
        valid[i, :n] = True
    return boxes, labels, valid
