"""The authors' MMDetection checkpoints read as drmm tensors: their key names, their files, COCO's classes.

The release (repository lhj815/D-RMM) stores ``{"meta", "state_dict", "optimizer"}``;
every model tensor has a drmm counterpart of the same shape under another name
(:func:`released_to_drmm_key`). ``drmm convert-mmdet`` (:mod:`drmm.convert_mmdet`) and
``train.init_from`` (:mod:`drmm.checkpoints.init_from`) read such files through
:func:`load_released`, with ``torch.load(weights_only=True)`` only.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

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


def resnet_depth(keys: list[str]) -> str:
    """``resnet50`` / ``resnet101`` (or the block count) from the authors' backbone keys, for error messages."""
    blocks = {int(m[1]) for k in keys if (m := re.match(r"backbone\.layer3\.(\d+)\.", k))}
    return {6: "resnet50", 23: "resnet101"}.get(len(blocks), f"a ResNet with {len(blocks)} blocks in layer3")


def load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing file or an unsafe pickle is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure of the safe loader is reported the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"cannot load {path} with torch.load(weights_only=True): {first}. drmm never unpickles arbitrary "
            "objects; if you trust the file, save only its tensors with torch.save({'state_dict': "
            "torch.load(path, weights_only=False)['state_dict']}, new_path) and convert that") from e


def released_parts(obj: Any, path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], list[str]]:
    """``(model tensors, meta, ignored top-level entries)`` of a loaded released file (see :func:`load_released`)."""
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
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: 'meta' is not a mapping")
    return {k.removeprefix("module."): v for k, v in state.items()}, dict(meta), ignored


def load_released(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], list[str]]:
    """``(model tensors, meta, ignored top-level entries)`` of a released file, read with ``weights_only=True``.

    Accepts ``{"meta", "state_dict", ...}`` or a bare state dict; a ``module.`` prefix is removed.
    """
    return released_parts(load_weights_only(path), path)


def released_class_names(meta: dict[str, Any], path: str | Path) -> tuple[str, ...] | None:
    """``meta["CLASSES"]`` as a tuple of distinct strings (None when the file has none)."""
    classes = meta.get("CLASSES")
    if classes is None:
        return None
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or not classes:
        raise ValueError(f"{path}: meta.CLASSES must be a list of class names, got {classes!r:.200}")
    repeated = sorted({c for c in classes if list(classes).count(c) > 1})
    if repeated:
        raise ValueError(f"{path}: meta.CLASSES lists {', '.join(map(repr, repeated))} more than once")
    return tuple(classes)
