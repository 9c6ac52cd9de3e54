"""``drmm synth OUT``: write the built-in synthetic COCO-format dataset."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("synth", help="write the built-in synthetic COCO-format dataset")
    p.add_argument("out", help="output folder (OUT/{train,val}/, OUT/annotations/{train,val}.json)")
    p.add_argument("--train", type=int, default=2000, help="training images")
    p.add_argument("--val", type=int, default=200, help="validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import generate_synthetic

    summary = generate_synthetic(args.out, args.train, args.val, args.seed, args.size)
    print(f"wrote {args.out}: " + ", ".join(
        f"{split} {summary[split]['images']} images / {summary[split]['boxes']} boxes" for split in ("train", "val")))
    return 0
