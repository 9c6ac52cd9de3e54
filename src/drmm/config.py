"""Dataclass configs, YAML load/save and dotted ``key=value`` overrides.

A config is four plain dataclasses (model, objective, train, data) under one
:class:`Config`. YAML files hold any subset of the fields; everything else keeps
the defaults below, which are the paper's D-RMM + Sparse R-CNN R50 recipe.
Unknown keys are errors, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelConfig:
    """Architecture: backbone, proposals, decoder stages and input handling."""

    architecture: str = "sparse_rcnn"  # sparse_rcnn | adamixer
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101 | swin_t | tiny
    neck: str | None = None  # fpn | channel_mapper; None: the architecture's own (Sparse R-CNN fpn, AdaMixer channel_mapper)
    pretrained: str | None = None  # local torchvision ImageNet checkpoint; never downloaded
    trainable_layers: int = 3  # ResNet stages trained (of layer1..layer4); 3 = stem + layer1 frozen
    # ResNet BatchNorm. bn (released D-RMM): nn.BatchNorm2d, affine trained and batch statistics in the
    # trained stages (SyncBatchNorm with train.sync_bn); the frozen stages' norms stay in eval mode.
    # bn_eval (Sparse R-CNN's and AdaMixer's code, norm_eval=True): affine trained, statistics frozen.
    # frozen (drmm 0.1): FrozenBatchNorm2d everywhere, nothing trained.
    backbone_norm: str = "bn"
    tiny_widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    neck_channels: int = 256  # width of the neck's P2-P5 maps (FPN or AdaMixer's channel mapper)
    num_classes: int = 80
    num_proposals: int = 300
    proposal_init: str = "grid"  # grid (released D-RMM: 15 x 20 centres, size 0.5) | whole
    proposal_size: float = 0.5  # side of grid-initialised boxes, fraction of the image
    num_stages: int = 6
    topk_ratio: float = 1.0  # fraction of proposals kept (highest scores) at each stage (App. C.2)
    # released: every stage keeps its int(K * ratio) best components (the last stage too); the loss and the
    # detections cover only them, pi stays normalised over all K. next_stage (drmm 0.1): ceil(K * ratio) go
    # on to the next stage; the loss and the detections cover all K of a stage.
    topk_mode: str = "released"
    hidden_dim: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    dynamic_dim: int = 64
    dropout: float = 0.0
    num_cls_layers: int = 1
    num_reg_layers: int = 3
    # AdaMixer: sampling groups (each reads fpn_channels / groups channels), points per group, mixing out points
    sampling_groups: int = 4
    sampling_points: int = 32
    mixing_out_points: int = 128
    pooler_resolution: int = 7
    sampling_ratio: int = 2
    pooler: str = "torchvision"  # torchvision (roi_align) | grid (one grid_sample; faster on CPU)
    # true (released, mmcv): half-pixel RoIAlign (aligned=True), level floor(log2(sqrt(wh) / 56 + 1e-6));
    # false (drmm 0.1): torchvision's MultiScaleRoIAlign rule, aligned=False (the grid pooler reads the border)
    pooler_aligned: bool = True
    clip_stage_boxes: bool = False  # reorder and clip each stage's boxes to the image before the next (drmm 0.1)
    clip_detections: bool = True  # clip the final boxes to the image (the release leaves them as predicted)
    channel_mapper_bias: bool = True  # AdaMixer's neck: 1 x 1 convs with bias, as AdaMixer's code (drmm 0.1: none)
    # pixels (released: mu = proposal + delta) | proposal (delta x proposal w, h)
    # | relative (delta and the scale's softplus x proposal w, h)
    delta_mode: str = "pixels"
    min_size: int = 800  # short side at test time (and training, when no list is given)
    max_size: int = 1333
    train_min_sizes: list[int] | None = None  # multi-scale short sides in training
    size_divisible: int = 32
    pixel_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    pixel_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    detections_per_image: int = 100


@dataclass
class ObjectiveConfig:
    """How outputs are trained: the D-RMM mixture objective or the Hungarian baseline."""

    name: str = "drmm"  # drmm | hungarian
    beta: float = 0.5  # MCM weight
    reduction: str = "sum"  # sum (released) | mean (per ground truth)
    coord_dist: str = "cauchy"  # cauchy | gaussian | laplace
    stop_grad: list[str] = field(default_factory=lambda: ["coord"])  # subset of mix, coord, class
    min_scale_ratio: float = 0.04
    detach_floor: bool = False  # false (released): the scale floor passes gradient to mu; true: floor from detached mu
    nll_mode: str = "mixture"  # mixture (paper) | max (Table 3 IV) | bipartite (Table 2 row 2, NLL(B))
    mcm_mode: str = "max"  # max (paper) | bipartite (Table 2 row 4, MCM(B))
    # Hungarian baseline (Sparse R-CNN): matching cost and loss weights, focal loss parameters
    cls_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@dataclass
class TrainConfig:
    """Optimisation recipe (paper Appendix A defaults)."""

    lr: float = 5e-5
    weight_decay: float = 5e-5
    batch_size: int = 16
    epochs: int = 36
    max_iters: int | None = None  # overrides epochs when set
    lr_steps: list[int] = field(default_factory=lambda: [27, 33])  # in epochs (or iterations)
    lr_steps_unit: str = "epoch"  # epoch | iter
    lr_gamma: float = 0.1
    warmup_iters: int = 500  # linear warm-up from warmup_factor x lr (MMDetection's schedule, as released)
    warmup_factor: float = 0.001
    clip_norm: float = 1.0
    amp: str = "none"  # none | bf16 | fp16 (GPU)
    seed: int = 0
    num_workers: int | None = None  # data-loading processes; None: min(8, CPU cores) on a GPU, 2 on the CPU
    log_interval: int = 20  # iterations between JSONL log rows
    eval_interval: int = 1  # validation every N epochs (or iterations, see interval_unit); 0 = only at the end
    checkpoint_interval: int = 1  # last.pt every N epochs (or iterations)
    interval_unit: str = "epoch"  # epoch | iter
    time_limit_minutes: float | None = None  # stop (evaluate, checkpoint) after this much training time
    max_consecutive_nonfinite: int = 10
    sync_bn: bool = False  # convert the BatchNorms to SyncBatchNorm under DDP (GPUs; the released recipe)
    threads: int | None = None  # torch.set_num_threads on CPU
    # a new run from the weights of a drmm, convert-mmdet or MMDetection checkpoint (classes mapped by name;
    # iteration 0, fresh optimizer and schedule); drmm train --init-from PATH
    init_from: str | None = None
    # exponential moving average of the weights (RT-DETR's ModelEMA): validation, best.pt, eval and predict use
    # it; checkpoints hold it as "ema" next to the raw "model" (resume). d = ema_decay * (1 - exp(-n / ema_warmup))
    ema: bool = False
    ema_decay: float = 0.9999
    ema_warmup: int = 2000  # optimizer steps over which the decay ramps up
    patience: int = 0  # early stopping: stop after N validations without a better AP (0 = off)
    backbone_lr_factor: float = 1.0  # the backbone's lr = lr x this (fine-tuning: 0.1, as RT-DETR's recipes)
    tensorboard: bool = False  # TensorBoard event files in RUN/tensorboard/ (pip install 'drmm[tensorboard]')


@dataclass
class DataConfig:
    """Dataset handling and the data-side part of the paper's augmentation.

    The final (multi-scale) resize happens inside the model (``model.min_size``,
    ``model.train_min_sizes``); the data pipeline does the flip and the crop policy
    (short side to one of ``crop_resize``, then a random crop with sides in
    ``crop_size``), all sizes multiplied by ``scale`` for small-image datasets.
    """

    scale: float = 1.0
    flip: bool = True
    crop: bool = True  # apply the crop policy to half of the training images
    crop_resize: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_size: list[int] = field(default_factory=lambda: [384, 600])
    skip_empty: bool = True  # leave images without boxes out of training
    skip_unreadable: bool = False  # count and skip unreadable images instead of failing
    allow_outside_paths: bool = False  # accept image file names that are absolute or climb out with ..
    cache_images: bool = False  # keep decoded training images in memory (small datasets: the demo's 2000 = 98 MB)
    format: str | None = None  # coco | yolo | voc; None: detected from the --data folder (drmm.data.formats)
    class_names: list[str] | None = None  # VOC: the classes, in label order (None: sorted names of the train split)
    skip_invalid: bool = False  # YOLO / VOC: count and skip malformed labels and annotation files instead of failing


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    class_names: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "config") -> "Config":
        return _build(cls, d or {}, source)


_RENAMED = {"fpn_channels": "neck_channels"}
"""Model keys renamed since 0.1.0: configs and checkpoints written with the old name still load."""

LEGACY_VALUES: dict[str, dict[str, Any]] = {
    "model": {"backbone_norm": "frozen", "topk_mode": "next_stage", "pooler_aligned": False,
              "clip_stage_boxes": True, "channel_mapper_bias": False},
    "objective": {"detach_floor": True},
}
"""What drmm 0.1 did where a config key added since has a new default.

A checkpoint's config that lacks one of these keys was written before it existed,
so its weights were trained with this behaviour: :func:`with_legacy_values` fills it in.
"""


def with_legacy_values(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict (e.g. from a checkpoint) with the keys it lacks from :data:`LEGACY_VALUES` filled in."""
    d = dict(d)
    for section, values in LEGACY_VALUES.items():
        if isinstance(d.get(section), dict):
            d[section] = {**values, **d[section]}
    return d


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    if cls is ModelConfig:
        d = _rename_keys(d, where)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        sub = _SECTIONS.get((cls, name))
        if sub:
            kwargs[name] = _build(sub, value or {}, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    return cls(**kwargs)


def _rename_keys(d: dict[str, Any], where: str) -> dict[str, Any]:
    d = dict(d)
    for old, new in _RENAMED.items():
        if old in d:
            if new in d:
                raise ValueError(f"{where}: {old!r} is the old name of {new!r}; give only {new!r}")
            d[new] = d.pop(old)
    return d


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check scalars against the field type; accept ints and YAML's ``1e-4`` strings for floats."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args or hint is Any:
            return None
        raise ValueError(f"{where}: may not be null")
    base = next((a for a in args if a is not type(None)), hint) if args and type(None) in args else hint
    if base is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if base is bool and not isinstance(value, bool):
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if base is str and not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {value!r}")
    if typing.get_origin(base) is list and not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    return value


_SECTIONS = {
    (Config, "model"): ModelConfig,
    (Config, "objective"): ObjectiveConfig,
    (Config, "train"): TrainConfig,
    (Config, "data"): DataConfig,
}


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``1e-4``, ``[1, 2]``)."""
    d = cfg.to_dict()
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = d
        parts = key.strip().split(".")
        parts[-1] = _RENAMED.get(parts[-1], parts[-1]) if parts[:-1] == ["model"] else parts[-1]
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ValueError(f"override {item!r}: {p!r} is not a config section")
            node = node[p]
        if parts[-1] not in node:
            raise ValueError(f"override {item!r}: unknown key {key!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    return Config.from_dict(d, "overrides")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                written_by_drmm: bool = False) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides.

    ``written_by_drmm``: the file is a run's resolved ``config.yaml`` (every key saved), so
    keys it lacks were added later and get :data:`LEGACY_VALUES`, the behaviour it ran with.
    """
    if path is None:
        return apply_overrides(Config(), overrides)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from e
    if written_by_drmm and isinstance(d, dict):
        d = with_legacy_values(d)
    return apply_overrides(Config.from_dict(d, str(path)), overrides)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def packaged_config(name: str) -> str:
    """Path of a config shipped inside the package (``drmm/configs/NAME``)."""
    return str(Path(__file__).parent / "configs" / name)
