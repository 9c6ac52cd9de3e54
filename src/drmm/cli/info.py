"""``drmm info CONFIG``: a model summary (architecture, parameter counts) without weights or memory."""
from __future__ import annotations

import argparse

import torch

from ..config import load_config
from .common import add_config_arg, add_set_option


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a model summary (parameter counts) for a config")
    add_config_arg(p)
    add_set_option(p, help="override a config value, e.g. --set model.num_proposals=100 (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import build_detector, count_parameters

    cfg = load_config(args.config, args.overrides)
    cfg.model.pretrained = None  # counting parameters needs no weights
    with torch.device("meta"):  # shapes only: instant and no memory, even for 135M parameters
        model = build_detector(cfg)
    total, trainable = count_parameters(model)
    m = cfg.model
    print(f"config: {args.config}")
    print(f"architecture: {m.architecture} ({m.num_stages} stages), backbone: {m.backbone} + "
          f"{model.backbone.neck_name} ({m.neck_channels} ch)")
    print(f"objective: {cfg.objective.name}")
    print(f"proposals: {m.num_proposals} ({m.proposal_init} init)")
    print(f"stages: {m.num_stages}")
    print(f"classes: {m.num_classes}")
    print(f"input: short side {m.min_size}, long side <= {m.max_size}")
    print(f"parameters: {total} ({total / 1e6:.1f}M)")
    print(f"trainable: {trainable} ({trainable / 1e6:.1f}M)")
    for name, module in (("backbone", model.backbone), ("proposals", model.proposals), ("decoder", model.decoder)):
        print(f"  {name}: {sum(p.numel() for p in module.parameters()) / 1e6:.2f}M")
    return 0
