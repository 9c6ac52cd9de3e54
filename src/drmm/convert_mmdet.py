"""The authors' released D-RMM checkpoints (MMDetection 2.12) as drmm checkpoints.

The release (repository lhj815/D-RMM) publishes D-RMM + Sparse R-CNN with ResNet-50
(47.0 AP on COCO val2017) and ResNet-101 (48.0 AP). Their files hold ``meta``, a
``state_dict`` and possibly an ``optimizer``; every model tensor has a drmm
counterpart of the same shape under another name (:func:`released_to_drmm_key`).
:func:`convert_mmdet` reads such a file with ``torch.load(weights_only=True)``, maps
every tensor, checks the layout against the drmm model of a config (every source
tensor used, every drmm parameter and buffer filled, shapes equal: anything else is
one :class:`LayoutError` listing all problems) and writes a drmm checkpoint whose
config selects the released forward pass (:data:`RELEASED_FORWARD`) and which
carries the class names of ``meta.CLASSES`` (COCO's 80 when absent) and their
category ids: from a COCO annotation file whose category names match, COCO's ids
(1..90 with gaps) for COCO's classes, 1..N otherwise. The key map and the file
reading live in :mod:`drmm.checkpoints.mmdet` (``train.init_from`` reads the same files).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoints import atomic_save, make_checkpoint
from .checkpoints.mmdet import (COCO_CATEGORY_IDS, COCO_CLASSES, load_released, released_class_names,
                                released_to_drmm_key, resnet_depth)
from .checkpoints.partial import class_tensors, map_class_rows
from .config import Config, load_config
from .data.annotations import load_annotations
from .models import build_detector

__all__ = ["COCO_CATEGORY_IDS", "COCO_CLASSES", "RELEASED_FORWARD", "Conversion", "LayoutError", "category_ids",
           "convert_mmdet", "convert_state_dict", "load_released", "released_config", "released_to_drmm_key"]

RELEASED_FORWARD: dict[str, dict[str, Any]] = {
    "model": dict(architecture="sparse_rcnn", neck=None, backbone_norm="bn", pretrained=None,
                  delta_mode="pixels", pooler="torchvision", pooler_aligned=True, pooler_resolution=7,
                  sampling_ratio=2, clip_stage_boxes=False, clip_detections=False, topk_ratio=1.0,
                  min_size=800, max_size=1333, size_divisible=32, pixel_mean=[0.485, 0.456, 0.406],
                  pixel_std=[0.229, 0.224, 0.225], detections_per_image=100),
    "objective": dict(name="drmm"),
}
"""Config values of the released inference: resize to 800 (long side <= 1333), ImageNet normalisation
(MMDetection's 0-255 mean/std divided by 255), padding to 32, aligned RoIAlign 7 x 7 (sampling 2) on the
level floor(log2(sqrt(wh)/56)), boxes moved in pixels and never clipped, score = sigmoid(objectness) x
softmax(classes), the top 100 (component, class) pairs."""

_SHOWN = 20  # entries of each kind listed in an error


class LayoutError(ValueError):
    """The source tensors do not fill the drmm model exactly (missing, unexpected or misshapen tensors)."""


@dataclass
class Conversion:
    """What :func:`convert_mmdet` did."""

    out: Path
    tensors: int  # tensors converted (all of the source's model tensors)
    backbone: str
    ignored: list[str] = field(default_factory=list)  # top-level entries of the file that are not the model
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # config key -> (given, released)
    class_names: list[str] = field(default_factory=lambda: list(COCO_CLASSES))  # in label order
    cat_ids: list[int] = field(default_factory=lambda: list(COCO_CATEGORY_IDS))  # the category id of each
    ids_from: str = "COCO"  # where the ids come from: "COCO", "1..N" or the annotation file


def _listing(title: str, items: list[str]) -> str:
    more = f"\n    ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {i}" for i in items[:_SHOWN]) + more


def convert_state_dict(source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """The authors' ``source`` tensors under drmm's names, checked against the drmm ``target`` state dict.

    Raises :class:`LayoutError` listing every source key without a drmm counterpart,
    every drmm key left unfilled and every shape mismatch.
    """
    out, claimed, unexpected, misshapen = {}, set(), [], []
    for key, value in source.items():
        name = released_to_drmm_key(key)
        if name is None or name not in target or name in claimed:
            unexpected.append(key)
            continue
        claimed.add(name)
        if tuple(value.shape) != tuple(target[name].shape):
            misshapen.append(f"{key} {list(value.shape)} -> {name} {list(target[name].shape)}")
        else:
            out[name] = value
    missing = [k for k in target if k not in claimed]
    if missing or unexpected or misshapen:
        parts = [_listing("unexpected in the checkpoint (no drmm counterpart)", unexpected)] if unexpected else []
        parts += [_listing("drmm parameters and buffers the checkpoint does not fill", missing)] if missing else []
        parts += [_listing("shape mismatches (checkpoint -> drmm)", misshapen)] if misshapen else []
        raise LayoutError(f"{len(unexpected)} unexpected, {len(missing)} missing, {len(misshapen)} misshapen "
                          "tensor(s):\n" + "\n".join(parts))
    return out


def released_config(config: str | Path | Config, class_names: tuple[str, ...] | list[str] = COCO_CLASSES
                    ) -> tuple[Config, dict[str, tuple[Any, Any]]]:
    """``config`` with :data:`RELEASED_FORWARD` and ``class_names`` applied, and the ``{key: (given, released)}``
    values it changed."""
    cfg = config if isinstance(config, Config) else load_config(config)
    changed = {}
    values = {"model": {**RELEASED_FORWARD["model"], "num_classes": len(class_names)},
              "objective": RELEASED_FORWARD["objective"]}
    for section, section_values in values.items():
        node = getattr(cfg, section)
        for key, value in section_values.items():
            if getattr(node, key) != value:
                changed[f"{section}.{key}"] = (getattr(node, key), value)
                setattr(node, key, value)
    cfg.class_names = list(class_names)
    return cfg, changed


def category_ids(class_names: tuple[str, ...] | list[str], ann: str | Path | None = None) -> list[int]:
    """The category id of each class: from the COCO annotation file ``ann`` (its category names must be
    exactly ``class_names``), else COCO's ids for COCO's 80 classes, else 1..N."""
    if ann is None:
        return list(COCO_CATEGORY_IDS) if tuple(class_names) == COCO_CLASSES else list(range(1, len(class_names) + 1))
    ids = {c["name"]: int(c["id"]) for c in load_annotations(ann)["categories"]}
    missing = [c for c in class_names if c not in ids]
    extra = [n for n in ids if n not in set(class_names)]
    if missing or extra:
        parts = [f"missing from the file: {', '.join(map(repr, missing))}"] if missing else []
        parts += [f"in the file but not in the checkpoint: {', '.join(map(repr, extra))}"] if extra else []
        raise ValueError(f"{ann}: its categories are not the checkpoint's {len(class_names)} classes "
                         f"(meta.CLASSES): {'; '.join(parts)}. Give the annotation file of the dataset the "
                         "checkpoint was trained on, or leave --ann out for ids 1..N")
    return [ids[c] for c in class_names]


def convert_mmdet(checkpoint: str | Path, config: str | Path | Config, out: str | Path,
                  ann: str | Path | None = None) -> Conversion:
    """Convert the authors' ``checkpoint`` for the drmm model of ``config`` and write it to ``out``.

    ``config`` names the architecture (``configs/drmm_r50.yaml`` or ``drmm_r101.yaml``);
    the written config has the released forward pass (:func:`released_config`). The
    classes are the checkpoint's ``meta.CLASSES`` (COCO's without it), their ids those
    of :func:`category_ids`; drmm's labels follow the category ids, so classes whose
    ids are not increasing have their class rows reordered.
    """
    source, meta, ignored = load_released(checkpoint)
    classes = released_class_names(meta, checkpoint) or COCO_CLASSES
    ids = category_ids(classes, ann)
    order = sorted(range(len(classes)), key=ids.__getitem__)  # drmm's label order: increasing category ids
    names, ids = [classes[i] for i in order], [ids[i] for i in order]
    cfg, changed = released_config(config, names)
    with torch.device("meta"):  # shapes only: the layout check needs no memory
        model = build_detector(cfg)
    target = model.state_dict()
    try:
        state = convert_state_dict(source, target)
    except LayoutError as e:
        depth = resnet_depth(list(source))
        raise LayoutError(f"{checkpoint} does not fit the drmm model of {config} ({cfg.model.backbone}, "
                          f"{len(classes)} classes from {'meta.CLASSES' if meta.get('CLASSES') else 'COCO'}; the "
                          f"checkpoint's backbone looks like {depth}): {e}") from None
    for key, leading in class_tensors(model).items():
        state[key] = map_class_rows(state[key], state[key], list(classes), names, leading)
    ckpt = make_checkpoint({k: state[k] for k in target}, cfg.to_dict(), names, ids, converted_from={
        "file": Path(checkpoint).name, "format": "MMDetection 2.12 D-RMM (lhj815/D-RMM)",
        "mmdet_version": str(meta.get("mmdet_version", "unknown"))})
    atomic_save(ckpt, out)
    ids_from = str(ann) if ann is not None else "COCO" if tuple(classes) == COCO_CLASSES else "1..N"
    return Conversion(Path(out), len(state), cfg.model.backbone, ignored, changed, names, ids, ids_from)
