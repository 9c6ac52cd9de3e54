"""``drmm info CONFIG``: a model summary (architecture, parameter counts) without weights or memory;
``drmm info --system``: what a bug report needs (versions, CPU, instruction set, bf16, threads, CUDA)."""
from __future__ import annotations

import argparse
import json

import torch

from ..config import load_config
from .common import add_set_option


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a model summary (parameter counts) for a config, or --system")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("--system", action="store_true",
                   help="print drmm, torch, torchvision, onnxruntime and OpenVINO versions, the CPU, the instruction "
                        "set torch uses, bf16 support, threads and CUDA devices (for bug reports)")
    p.add_argument("--json", action="store_true", help="with --system: as one JSON object")
    add_set_option(p, help="override a config value, e.g. --set model.num_proposals=100 (repeatable)")
    p.set_defaults(func=run)


def print_system(as_json: bool = False) -> None:
    """The machine and the versions, one ``key: value`` line each (or JSON)."""
    from ..hardware import system_info

    info = system_info()
    if as_json:
        print(json.dumps(info, indent=1))
        return
    info["bf16_native"] = "yes (AVX512-BF16 or AMX)" if info["bf16_native"] else \
        "no (train.amp=bf16 runs fp32 unless --set train.amp=bf16 insists)"
    info["cpu_flags"] = " ".join(info["cpu_flags"]) or "unknown"
    info["cuda_devices"] = ", ".join(info["cuda_devices"]) or "none"
    info["isa_env"] = " ".join(f"{k}={v}" for k, v in info["isa_env"].items()) or "none"
    for key, value in info.items():
        print(f"{key}: {value}")


def run(args: argparse.Namespace) -> int:
    from ..models import build_detector, count_parameters

    if args.system:
        print_system(args.json)
        if args.config is None:
            return 0
    elif args.config is None:
        raise ValueError("give a config (drmm info configs/drmm_r50.yaml) or --system")
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
