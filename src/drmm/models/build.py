"""Builders: a :class:`Detector` from a config (from a checkpoint: :mod:`drmm.checkpoints`).

This is the one place that reads :class:`~drmm.config.ModelConfig`; the modules
are handed the values they use.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from ..config import Config, ModelConfig
from ..objectives import build_objective
from .adamixer import AdaMixerDecoder, AdaMixerStage
from .backbone import LEVELS, build_backbone, default_neck
from .detector import Detector
from .heads import HEADS
from .poolers import build_pooler
from .postprocess import TopKPostProcess
from .proposals import Proposals
from .sparse_rcnn import SparseRCNNDecoder, SparseRCNNStage
from .transform import ImageTransform

ARCHITECTURES = ("sparse_rcnn", "adamixer")
DELTA_MODES = {"sparse_rcnn": ("pixels", "proposal", "relative"), "adamixer": ("pixels", "relative")}


def build_decoder(m: ModelConfig, head: str, min_scale_ratio: float) -> nn.Module:
    """The stages of ``m.architecture`` with the head named ``head`` (``objective.head``)."""
    if m.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {m.architecture!r}; available: {', '.join(map(repr, ARCHITECTURES))}")
    if m.delta_mode not in DELTA_MODES[m.architecture]:
        raise ValueError(
            f"model.delta_mode must be one of {DELTA_MODES[m.architecture]} for {m.architecture}, got {m.delta_mode!r}"
            + (" (AdaMixer moves boxes in (x, y, z, r); delta_mode only sets the Cauchy scale)"
               if m.architecture == "adamixer" else ""))
    if m.neck_channels != m.hidden_dim:
        raise ValueError(f"{m.architecture} needs neck_channels == hidden_dim, got {m.neck_channels} and {m.hidden_dim}")
    head_kwargs = {}
    if head == "mixture":  # the mixture head's options; the box head has none
        head_kwargs = dict(relative_offsets=m.delta_mode in ("proposal", "relative"),
                           relative_scales=m.delta_mode == "relative", min_scale_ratio=min_scale_ratio)
    make_head = partial(HEADS[head], m.hidden_dim, m.num_classes, m.num_cls_layers, m.num_reg_layers,
                        tower_bias=m.architecture == "adamixer", **head_kwargs)  # AdaMixer's towers have biases
    if m.architecture == "sparse_rcnn":
        pooler = build_pooler(m.pooler, list(LEVELS), m.pooler_resolution, m.sampling_ratio, m.pooler_aligned)
        stages = [SparseRCNNStage(make_head, m.hidden_dim, m.num_heads, m.dim_feedforward, m.dynamic_dim,
                                  m.pooler_resolution, m.dropout) for _ in range(m.num_stages)]
        return SparseRCNNDecoder(stages, pooler, m.topk_ratio, m.topk_mode, m.clip_stage_boxes)
    if m.hidden_dim % m.sampling_groups or m.hidden_dim % 8:
        raise ValueError(f"hidden_dim ({m.hidden_dim}) must be divisible by sampling_groups "
                         f"({m.sampling_groups}) and by 8 (position embedding)")
    stages = [AdaMixerStage(make_head, m.hidden_dim, m.num_heads, m.dim_feedforward, m.neck_channels,
                            m.sampling_groups, m.sampling_points, m.mixing_out_points, m.dropout)
              for _ in range(m.num_stages)]
    return AdaMixerDecoder(stages, m.topk_ratio, m.topk_mode)


def build_detector(cfg: Config | None = None) -> Detector:
    """A :class:`Detector` from a :class:`~drmm.config.Config` (defaults: D-RMM Sparse R-CNN R50)."""
    cfg = cfg or Config()
    m = cfg.model
    if m.topk_ratio < 1 and m.topk_mode == "released" and "bipartite" in (cfg.objective.nll_mode,
                                                                           cfg.objective.mcm_mode):
        raise ValueError("the bipartite ablations match ground truths to all components; with model.topk_ratio < 1"
                         " they need model.topk_mode: next_stage")
    objective = build_objective(cfg.objective)
    transform = ImageTransform(m.min_size, m.max_size, m.pixel_mean, m.pixel_std, m.size_divisible,
                               m.train_min_sizes, m.num_classes)
    backbone = build_backbone(m.backbone, m.neck or default_neck(m.architecture), m.neck_channels,
                              pretrained=m.pretrained, trainable_layers=m.trainable_layers, norm=m.backbone_norm,
                              tiny_widths=m.tiny_widths, neck_bias=m.channel_mapper_bias)
    proposals = Proposals(m.num_proposals, m.hidden_dim, m.proposal_init, m.proposal_size)
    if m.architecture == "adamixer":
        proposals.boxes.weight.requires_grad_(False)  # AdaMixer's initial query boxes are not learned
    decoder = build_decoder(m, objective.head, cfg.objective.min_scale_ratio)
    postprocess = TopKPostProcess(m.detections_per_image, m.clip_detections)
    return Detector(transform, backbone, proposals, decoder, objective, postprocess, cfg)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
