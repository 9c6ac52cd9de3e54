"""How the objectives normalise summed losses: the ground-truth count of a (distributed) batch."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def num_boxes_per_process(n: int, device: torch.device) -> Tensor:
    """Ground truths per process: ``n`` all-reduced and averaged over processes when distributed, at least 1.

    A scalar float tensor on ``device``; ``n`` is this process's number of ground truths.
    """
    num = torch.tensor(float(n), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        num = num / dist.get_world_size()
    return num.clamp(min=1.0)
