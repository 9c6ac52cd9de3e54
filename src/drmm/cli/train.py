"""``drmm train``: train a detector on a COCO-format dataset (or ``--resume`` a run folder)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from .common import add_set_option, add_training_data_args, print_metrics, training_data_paths


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a detector on a COCO-format dataset")
    p.add_argument("--config", help="YAML config (default: the run folder's config.yaml with --resume)")
    add_training_data_args(p)
    p.add_argument("--out", required=True, help="run folder (config.yaml, log.jsonl, loss.png, last.pt, best.pt)")
    add_set_option(p)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.train import train

    config = args.config
    if config is None:
        if not args.resume:
            raise ValueError("--config is required (or --resume with a run folder holding config.yaml)")
        config = Path(args.out) / "config.yaml"
    cfg = load_config(config, args.overrides, written_by_drmm=args.config is None)  # a run's own config
    result = train(cfg, training_data_paths(args), args.out, resume=args.resume, device=args.device,
                   progress=not args.no_progress)
    print_metrics(result["metrics"])
    print(f"trained {result['step']} iterations in {result['seconds'] / 60:.1f} min -> {args.out}")
    return 0
