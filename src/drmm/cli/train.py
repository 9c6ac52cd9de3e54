"""``drmm train``: train a detector on a COCO, YOLO or VOC dataset (or ``--resume`` a run folder)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from .common import add_set_option, add_training_data_args, print_metrics, training_data_paths


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a detector on a COCO, YOLO or VOC dataset")
    p.add_argument("--config", help="YAML config (default: the run folder's config.yaml with --resume)")
    add_training_data_args(p)
    p.add_argument("--out", required=True, help="run folder (config.yaml, log.jsonl, loss.png, last.pt, best.pt)")
    add_set_option(p)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start a new run from the weights of a drmm, convert-mmdet or MMDetection checkpoint "
                        "(classes mapped by name; = --set train.init_from=CKPT)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.train import train
    from ..hardware import named_on_command_line

    config = args.config
    if config is None:
        if not args.resume:
            raise ValueError("--config is required (or --resume with a run folder holding config.yaml)")
        config = Path(args.out) / "config.yaml"
    init_set = any(o.startswith("train.init_from=") and o.split("=", 1)[1].strip() not in ("", "null", "~")
                   for o in args.overrides)
    if args.resume and (args.init_from or init_set):
        raise ValueError("--resume continues a run from OUT/last.pt; --init-from starts a new one from other "
                         "weights: give one of them (a new --out for --init-from)")
    cfg = load_config(config, args.overrides, written_by_drmm=args.config is None)  # a run's own config
    if args.init_from:
        cfg.train.init_from = args.init_from
    result = train(cfg, training_data_paths(args, cfg.data.format), args.out, resume=args.resume, device=args.device,
                   progress=not args.no_progress, force_amp=named_on_command_line(args.overrides, "train.amp"))
    print_metrics(result["metrics"])
    print(f"trained {result['step']} iterations in {result['seconds'] / 60:.1f} min -> {args.out}")
    return 0
