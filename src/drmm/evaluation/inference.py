"""One pass of a model over a dataset: detections in original image coordinates, and what evaluation needs.

The mixture quantities and the diagnostics come from the model's own forward pass
(``model(images, targets, return_stages=True)`` and its :class:`~drmm.structures.ForwardTrace`),
so nothing here re-implements the detector.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data import collate_fn
from ..structures import ForwardTrace
from .diagnostics import accumulate_stage_losses, diagnostics_rows

logger = logging.getLogger("drmm.evaluate")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)


def run_inference(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    keep_mixture: bool = False,
    diagnostics: bool = False,
) -> tuple[list[dict[str, Tensor]], list[int], dict[str, Any]]:
    """Detections for every dataset image, in original image coordinates, on the CPU.

    Returns ``(detections, image_ids, extras)``. ``extras["targets"]`` holds each
    image's ground truth as the dataset returns it (``boxes``, contiguous ``labels``).
    With ``keep_mixture`` (mixture head only) ``extras["class_prob"]`` and
    ``extras["objectness"]`` hold, per image, p and o of each kept (component, class)
    pair, aligned with the detections. With ``diagnostics`` (mixture head only)
    ``extras["diagnostics"]`` holds one row per stage (see
    :func:`~drmm.evaluation.diagnostics.diagnostics_rows`). Without either, any model
    returning torchvision-style detections works. The model is put in eval mode and
    its previous mode restored afterwards.
    """
    net = unwrap(model)
    if (keep_mixture or diagnostics) and not getattr(net, "is_mixture", False):
        raise ValueError("class probability / objectness and NLL/MCM diagnostics need the D-RMM mixture head")
    dev = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_fn, pin_memory=dev.type == "cuda")
    was_training = net.training
    net.to(dev).eval()
    detections: list[dict[str, Tensor]] = []
    image_ids: list[int] = []
    extras: dict[str, Any] = {"targets": []}
    if keep_mixture:
        extras["class_prob"], extras["objectness"] = [], []
    sums: list[list[float]] = []  # per stage: [nll, mcm, exp(-mcm), count]
    seen: set[int] = set()
    try:
        with torch.inference_mode():
            for images, targets in tqdm(loader, desc="eval", unit="batch", disable=not progress):
                images = [img.to(dev, non_blocking=True) for img in images]
                gts = None
                if diagnostics:  # resized with the images, for the losses on model inputs
                    gts = [{"boxes": t["boxes"].to(dev), "labels": t["labels"].to(dev)} for t in targets]
                if keep_mixture or diagnostics:
                    dets, trace = net(images, gts, return_stages=True)
                else:  # any model returning torchvision-style detections
                    dets, trace = net(images), None
                if diagnostics:
                    accumulate_stage_losses(net.objective.per_stage(trace.stages, trace.targets), sums)
                mix = _kept_mixture(net, trace, dets) if keep_mixture else None
                for i, (det, tgt) in enumerate(zip(dets, targets, strict=True)):
                    image_id = int(tgt["image_id"])
                    if image_id in seen:  # a skipped unreadable image was replaced by a later one
                        logger.warning("image %d returned twice by the dataset; evaluated once", image_id)
                        continue
                    seen.add(image_id)
                    image_ids.append(image_id)
                    detections.append({k: v.detach().cpu() for k, v in det.items()})
                    extras["targets"].append({"boxes": tgt["boxes"].cpu(), "labels": tgt["labels"].cpu()})
                    if mix is not None:
                        extras["class_prob"].append(mix[0][i])
                        extras["objectness"].append(mix[1][i])
    finally:
        net.train(was_training)
    if diagnostics:
        extras["diagnostics"] = diagnostics_rows(sums)
    return detections, image_ids, extras


def _kept_mixture(net: nn.Module, trace: ForwardTrace,
                  dets: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
    """Per image, p ``[top]`` and o ``[top]`` of the (component, class) pairs the post-processing kept.

    Aligned with the detections: ``p * o`` is each detection's score.
    """
    params = net.mixture_parameters(trace.stages[-1])
    ps, os_ = [], []
    for i, det in enumerate(dets):
        k, c = trace.components[i], det["labels"]
        ps.append(params["class_prob"][i, k, c].float().cpu())
        os_.append(params["objectness"][i, k].float().cpu())
    return ps, os_
