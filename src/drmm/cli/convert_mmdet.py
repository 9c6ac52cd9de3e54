"""``drmm convert-mmdet CHECKPOINT --config CONFIG --out OUT.pt``: the authors' released weights as a drmm checkpoint."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-mmdet", help="convert the authors' released D-RMM checkpoint (MMDetection) into a drmm checkpoint",
        description="Convert the authors' released D-RMM + Sparse R-CNN checkpoint (R50 or R101, MMDetection 2.12), "
                    "or one trained with their code on other classes (meta.CLASSES), into a drmm checkpoint for "
                    "drmm eval / predict / train --init-from. The file is read with "
                    "torch.load(weights_only=True); the written config selects the released forward pass.")
    p.add_argument("checkpoint", help="the authors' .pth file ({'meta', 'state_dict'} or a bare state dict)")
    p.add_argument("--config", required=True,
                   help="drmm config of the same architecture: configs/drmm_r50.yaml or configs/drmm_r101.yaml")
    p.add_argument("--out", required=True, help="drmm checkpoint to write (.pt)")
    p.add_argument("--ann", help="COCO annotation file giving the category id of each of the checkpoint's classes "
                                 "(meta.CLASSES; names must match). Default: COCO's ids for COCO's classes, else 1..N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..convert_mmdet import convert_mmdet

    result = convert_mmdet(args.checkpoint, args.config, args.out, ann=args.ann)
    print(f"converted {result.tensors} tensors of {args.checkpoint} ({result.backbone}) into {result.out}")
    if result.ignored:
        print(f"ignored (not model weights): {', '.join(result.ignored)}")
    for key, (given, released) in result.changed.items():
        print(f"set {key}: {given!r} -> {released!r} (the released forward pass)")
    if result.ids_from == "COCO":
        print("classes: COCO's 80, category ids 1..90 with gaps")
        print(f"evaluate with: drmm eval --weights {result.out} --ann ANNOTATIONS/instances_val2017.json "
              "--images VAL2017_DIR")
        return 0
    names = ", ".join(result.class_names[:5]) + (", ..." if len(result.class_names) > 5 else "")
    ids = "1..N" if result.ids_from == "1..N" else f"from {result.ids_from}"
    print(f"classes: {len(result.class_names)} from meta.CLASSES ({names}), category ids {ids}")
    print(f"evaluate with: drmm eval --weights {result.out} --ann VAL_ANNOTATIONS.json --images VAL_DIR")
    return 0
