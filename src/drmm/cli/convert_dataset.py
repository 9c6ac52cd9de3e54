"""``drmm convert-dataset SRC --to coco|yolo OUT``: a COCO, YOLO or VOC dataset written as COCO JSON or YOLO."""
from __future__ import annotations

import argparse

from .common import add_set_option, data_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-dataset", help="write a COCO, YOLO or VOC dataset as plain COCO JSON or as YOLO",
        description="Read every split (train, val) of SRC as drmm train reads it (layout detected, or "
                    "--set data.format=coco|yolo|voc) and write it into the new folder OUT: --to coco gives "
                    "OUT/annotations/{train,val}.json + OUT/{train,val}/, --to yolo gives OUT/data.yaml + "
                    "OUT/images/ + OUT/labels/. Images are copied (or linked with --symlink).")
    p.add_argument("src", help="dataset folder (COCO, YOLO or VOC)")
    p.add_argument("--to", required=True, choices=("coco", "yolo"), help="the layout to write")
    p.add_argument("out", help="output folder (new or empty)")
    p.add_argument("--symlink", action="store_true", help="link the images instead of copying them")
    add_set_option(p, help="a data option, e.g. --set data.class_names=[cat,dog] or data.skip_invalid=true "
                           "(data.* keys only; repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.convert import convert_dataset

    summary = convert_dataset(args.src, args.to, args.out, data_options(args.overrides), symlink=args.symlink)
    for split, counts in summary.items():
        print(f"{split}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    print(f"wrote {args.to.upper() if args.to == 'coco' else 'YOLO'} dataset {args.out}")
    return 0
