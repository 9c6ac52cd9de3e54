"""Configs and inputs of the regression pins in tests/data (see tests/data/make_golden_v0.py)."""
import torch

from drmm.config import Config

CASES = (
    "sparse_rcnn_drmm", "sparse_rcnn_hungarian", "adamixer_drmm", "adamixer_hungarian",
    "sparse_rcnn_drmm_grid_relative_topk", "sparse_rcnn_drmm_nll_max_bipartite",
)


def golden_config(name: str) -> Config:
    """A tiny model (random weights from torch.manual_seed(0)) for one pinned case.

    The pins were written by drmm 0.1, so every behaviour whose default changed since
    is selected explicitly here (config.LEGACY_VALUES): this also proves each stays
    selectable and exact.
    """
    cfg = Config()
    m = cfg.model
    m.backbone_norm, m.topk_mode, m.pooler_aligned = "frozen", "next_stage", False
    m.clip_stage_boxes, m.channel_mapper_bias = True, False
    cfg.objective.detach_floor = True
    m.backbone, m.tiny_widths = "tiny", [8, 16, 16, 32]
    m.neck_channels = m.hidden_dim = 32
    m.num_heads, m.dim_feedforward, m.dynamic_dim = 4, 64, 8
    m.num_proposals, m.num_stages, m.num_classes = 12, 2, 3
    m.min_size, m.max_size = 96, 160
    m.sampling_ratio = 1
    m.sampling_groups, m.sampling_points, m.mixing_out_points = 4, 4, 8
    m.architecture = "adamixer" if name.startswith("adamixer") else "sparse_rcnn"
    if m.architecture == "adamixer":
        m.proposal_init = "whole"
    cfg.objective.name = "hungarian" if name.endswith("hungarian") else "drmm"
    if name == "sparse_rcnn_drmm_grid_relative_topk":
        m.pooler, m.delta_mode, m.topk_ratio, m.num_stages = "grid", "relative", 0.5, 3
    if name == "sparse_rcnn_drmm_nll_max_bipartite":
        cfg.objective.nll_mode, cfg.objective.mcm_mode = "max", "bipartite"
    return cfg


def golden_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two fixed images (a smooth pattern, no RNG) with three and one ground truths."""
    ys, xs = torch.meshgrid(torch.arange(100.0), torch.arange(120.0), indexing="ij")
    a = torch.stack([(xs / 120), (ys / 100), ((xs + ys) % 17) / 17])
    ys, xs = torch.meshgrid(torch.arange(90.0), torch.arange(70.0), indexing="ij")
    b = torch.stack([((xs * ys) % 23) / 23, (xs / 70), 1 - ys / 90])
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [30.0, 5.0, 90.0, 40.0], [60.0, 50.0, 110.0, 95.0]]),
         "labels": torch.tensor([1, 2, 0])},
        {"boxes": torch.tensor([[5.0, 20.0, 40.0, 80.0]]), "labels": torch.tensor([2])},
    ]
    return [a, b], targets
