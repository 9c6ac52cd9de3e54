"""``drmm convert-mmdet CHECKPOINT --config CONFIG --out OUT.pt``: the authors' released weights as a drmm checkpoint."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-mmdet", help="convert the authors' released D-RMM checkpoint (MMDetection) into a drmm checkpoint",
        description="Convert the authors' released D-RMM + Sparse R-CNN checkpoint (R50 or R101, MMDetection 2.12) "
                    "into a drmm checkpoint for drmm eval / predict. The file is read with "
                    "torch.load(weights_only=True); the written config selects the released forward pass.")
    p.add_argument("checkpoint", help="the authors' .pth file ({'meta', 'state_dict'} or a bare state dict)")
    p.add_argument("--config", required=True,
                   help="drmm config of the same architecture: configs/drmm_r50.yaml or configs/drmm_r101.yaml")
    p.add_argument("--out", required=True, help="drmm checkpoint to write (.pt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..convert_mmdet import convert_mmdet

    result = convert_mmdet(args.checkpoint, args.config, args.out)
    print(f"converted {result.tensors} tensors of {args.checkpoint} ({result.backbone}) into {result.out}")
    if result.ignored:
        print(f"ignored (not model weights): {', '.join(result.ignored)}")
    for key, (given, released) in result.changed.items():
        print(f"set {key}: {given!r} -> {released!r} (the released forward pass)")
    print("classes: COCO's 80, category ids 1..90 with gaps")
    print(f"evaluate with: drmm eval --weights {result.out} --ann ANNOTATIONS/instances_val2017.json "
          "--images VAL2017_DIR")
    return 0
