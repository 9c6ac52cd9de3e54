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
carries COCO's 80 class names and category ids, so ``drmm eval`` reports with
COCO's ids.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import __version__
from .config import Config, load_config
from .engine.checkpoint import atomic_save
from .models import build_detector

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
"""COCO's 80 detection classes in category-id order (MMDetection's label order)."""
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
"""The category id of each of :data:`COCO_CLASSES` (1..90 with gaps)."""

RELEASED_FORWARD: dict[str, dict[str, Any]] = {
    "model": dict(architecture="sparse_rcnn", neck=None, backbone_norm="bn", pretrained=None, num_classes=80,
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

_STAGE_PARTS = (  # the authors' name inside roi_head.bbox_head.S -> drmm's inside decoder.stages.S
    ("attention.attn.", "self_attn."), ("attention_norm.", "norm1."),
    ("instance_interactive_conv.dynamic_layer.", "dynamic_conv.params."),
    ("instance_interactive_conv.norm_in.", "dynamic_conv.norm1."),
    ("instance_interactive_conv.norm_out.", "dynamic_conv.norm2."),
    ("instance_interactive_conv.fc_layer.", "dynamic_conv.out."),
    ("instance_interactive_conv.fc_norm.", "dynamic_conv.norm3."),
    ("instance_interactive_conv_norm.", "norm2."), ("ffn.layers.0.0.", "ffn.0."), ("ffn.layers.1.", "ffn.3."),
    ("ffn_norm.", "norm3."), ("cls_fcs.", "head.cls_tower."), ("reg_fcs.", "head.reg_tower."),
    ("fc_cls.", "head.cls_out."), ("fc_reg.", "head.reg_out."),
)
_BACKBONE = re.compile(r"backbone\.((?:conv1|bn1|layer\d+)\..+)")
_NECK = re.compile(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)")
_STAGE = re.compile(r"roi_head\.bbox_head\.(\d+)\.(.+)")
_PROPOSALS = {"rpn_head.init_proposal_bboxes.weight": "proposals.boxes.weight",
              "rpn_head.init_proposal_features.weight": "proposals.features.weight"}
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


def released_to_drmm_key(key: str) -> str | None:
    """The drmm name of one of the authors' state-dict keys, or None when it has none."""
    if key in _PROPOSALS:
        return _PROPOSALS[key]
    if m := _BACKBONE.fullmatch(key):
        return f"backbone.body.{m[1]}"
    if m := _NECK.fullmatch(key):
        return f"backbone.neck.{'inner_blocks' if m[1] == 'lateral_convs' else 'layer_blocks'}.{m[2]}.0.{m[3]}"
    if m := _STAGE.fullmatch(key):
        for theirs, ours in _STAGE_PARTS:
            if m[2].startswith(theirs):
                return f"decoder.stages.{m[1]}.{ours}{m[2][len(theirs):]}"
    return None


def _listing(title: str, items: list[str]) -> str:
    more = f"\n    ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {i}" for i in items[:_SHOWN]) + more


def _resnet_depth(keys: list[str]) -> str:
    """``resnet50`` / ``resnet101`` (or the block count) from the backbone keys, for error messages."""
    blocks = {int(m[1]) for k in keys if (m := re.match(r"backbone\.layer3\.(\d+)\.", k))}
    return {6: "resnet50", 23: "resnet101"}.get(len(blocks), f"a ResNet with {len(blocks)} blocks in layer3")


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


def load_released(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], list[str]]:
    """``(model tensors, meta, ignored top-level entries)`` of a released file, read with ``weights_only=True``.

    Accepts ``{"meta", "state_dict", ...}`` or a bare state dict; a ``module.`` prefix is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure of the safe loader is reported the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"cannot load {path} with torch.load(weights_only=True): {first}. drmm never unpickles arbitrary "
            "objects; if you trust the file, save only its tensors with torch.save({'state_dict': "
            "torch.load(path, weights_only=False)['state_dict']}, new_path) and convert that") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict (a state dict or {{'meta', 'state_dict'}}), "
                         f"got {type(obj).__name__}")
    if "state_dict" in obj:
        state, meta = obj["state_dict"], obj.get("meta") or {}
        ignored = sorted(str(k) for k in obj if k != "state_dict")
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        state, meta, ignored = obj, {}, []
    else:
        raise ValueError(f"{path}: no 'state_dict' entry and not a state dict itself (entries: {sorted(obj)[:10]})")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}, dict(meta), ignored


def released_config(config: str | Path | Config) -> tuple[Config, dict[str, tuple[Any, Any]]]:
    """``config`` with :data:`RELEASED_FORWARD` applied, and the ``{key: (given, released)}`` values it changed."""
    cfg = config if isinstance(config, Config) else load_config(config)
    changed = {}
    for section, values in RELEASED_FORWARD.items():
        node = getattr(cfg, section)
        for key, value in values.items():
            if getattr(node, key) != value:
                changed[f"{section}.{key}"] = (getattr(node, key), value)
                setattr(node, key, value)
    cfg.class_names = list(COCO_CLASSES)
    return cfg, changed


def convert_mmdet(checkpoint: str | Path, config: str | Path | Config, out: str | Path) -> Conversion:
    """Convert the authors' ``checkpoint`` for the drmm model of ``config`` and write it to ``out``.

    ``config`` names the architecture (``configs/drmm_r50.yaml`` or ``drmm_r101.yaml``);
    the written config has the released forward pass (:func:`released_config`).
    """
    source, meta, ignored = load_released(checkpoint)
    classes = meta.get("CLASSES")
    if classes is not None and tuple(classes) != COCO_CLASSES:
        raise ValueError(f"{checkpoint}: trained on {len(classes)} other classes ({list(classes)[:3]}...); "
                         "convert-mmdet converts the authors' COCO checkpoints")
    cfg, changed = released_config(config)
    with torch.device("meta"):  # shapes only: the layout check needs no memory
        target = build_detector(cfg).state_dict()
    try:
        state = convert_state_dict(source, target)
    except LayoutError as e:
        depth = _resnet_depth(list(source))
        raise LayoutError(f"{checkpoint} does not fit the drmm model of {config} ({cfg.model.backbone}; the "
                          f"checkpoint's backbone looks like {depth}): {e}") from None
    ckpt = {"model": {k: state[k] for k in target}, "config": cfg.to_dict(), "class_names": list(COCO_CLASSES),
            "cat_ids": list(COCO_CATEGORY_IDS), "version": __version__,
            "converted_from": {"file": Path(checkpoint).name, "format": "MMDetection 2.12 D-RMM (lhj815/D-RMM)",
                               "mmdet_version": str(meta.get("mmdet_version", "unknown"))}}
    atomic_save(ckpt, out)
    return Conversion(Path(out), len(state), cfg.model.backbone, ignored, changed)
