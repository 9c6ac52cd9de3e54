"""The ``drmm`` command: info, synth, train, demo (see ``drmm COMMAND --help``)."""
from __future__ import annotations

import argparse
import logging
import sys

from .config import load_config


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.num_proposals=100 (repeatable)")


def cmd_info(args: argparse.Namespace) -> int:
    from .models import build_detector, count_parameters

    cfg = load_config(args.config, args.overrides)
    cfg.model.pretrained = None  # counting parameters needs no weights
    model = build_detector(cfg)
    total, trainable = count_parameters(model)
    m = cfg.model
    print(f"config: {args.config}")
    print(f"architecture: {m.architecture} ({m.num_stages} stages), backbone: {m.backbone} + FPN ({m.fpn_channels} ch)")
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


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .config import Config
    from .models import build_detector

    torch.manual_seed(0)
    cfg = Config()
    cfg.model.backbone, cfg.model.num_classes = "tiny", 5
    cfg.model.fpn_channels = cfg.model.hidden_dim = 64
    cfg.model.num_proposals, cfg.model.num_stages, cfg.model.min_size = 100, 3, 128
    model = build_detector(cfg).eval()
    image = torch.rand(3, 120, 160)
    with torch.inference_mode():
        det = model([image])[0]
    print(f"untrained tiny D-RMM on a random 120x160 image: {len(det['scores'])} detections")
    for b, s, l in zip(det["boxes"][:5].tolist(), det["scores"][:5].tolist(), det["labels"][:5].tolist()):
        print(f"  label {l} score {s:.3f} box {[round(v, 1) for v in b]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drmm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print a model summary (parameter counts) for a config")
    _add_config_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="end-to-end demo on generated data (CPU-sized)")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"drmm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
