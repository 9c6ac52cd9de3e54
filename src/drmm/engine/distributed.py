"""torch.distributed for training: start-up under torchrun and the collective decisions all ranks must share."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn


def init_distributed(device: str | None = None) -> tuple[int, int, torch.device | None]:
    """Start torch.distributed when launched by torchrun (NCCL on GPU, gloo on CPU), also for one process.

    ``device`` is the one asked for (``"cpu"`` keeps a GPU machine on gloo). Returns
    ``(rank, world_size, device)``; ``(0, 1, None)`` for a plain single process.
    ``device`` is this rank's GPU, or None on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it, --nproc_per_node=1 too
        return 0, 1, None
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if not dist.is_initialized():
        # generous timeout: the other ranks wait while rank 0 runs validation
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
    rank = dist.get_rank()
    if not cuda:
        return rank, world, None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return rank, world, torch.device("cuda", local)


def sync_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """``model`` with every BatchNorm converted to ``SyncBatchNorm`` (statistics over all processes).

    Returns ``(model, number of converted norms)``. Parameters and running statistics
    are kept (the same tensors), and the norms a frozen stage holds in eval mode stay
    there (:class:`~drmm.models.backbone.ResNetBody` re-applies it in ``train()``).
    torch runs SyncBatchNorm under DDP on GPUs only (DDP refuses it for CPU modules).
    """
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def _reduce_flag(flag: bool, device: torch.device, op: dist.ReduceOp) -> bool:
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=op)
    return bool(t > 0)


def on_every_rank(flag: bool, device: torch.device, world: int) -> bool:
    """True when ``flag`` is true on every rank (a step all must agree to take, or DDP would hang)."""
    return flag if world == 1 else _reduce_flag(flag, device, dist.ReduceOp.MIN)


def on_any_rank(flag: bool, device: torch.device, world: int) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks leave a loop together)."""
    return flag if world == 1 else _reduce_flag(flag, device, dist.ReduceOp.MAX)


def shutdown_distributed() -> None:
    """Wait for every rank, then end the process group (nothing to do for a single process)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
