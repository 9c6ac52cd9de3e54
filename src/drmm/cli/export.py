"""``drmm export``: one ONNX graph from pixels to detections (see drmm.export for its contract)."""
from __future__ import annotations

import argparse
import json

from .common import add_calibrator_args, scores_line


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 800x1216, got {text!r}") from None
    if min(h, w) < 8:
        raise argparse.ArgumentTypeError(f"sides must be >= 8, got {text!r}")
    return h, w


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to ONNX (image in, boxes/scores/labels out)")
    p.add_argument("--weights", required=True, help="checkpoint (.pt) from drmm train or drmm convert-mmdet")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 16; default 18)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--dynamic", action="store_true", default=True, help="any image size (default)")
    shape.add_argument("--static", type=_size, metavar="HxW", help="only images of this size")
    p.add_argument("--half", action="store_true",
                   help="not supported: reduced precision is chosen at run time (drmm predict --precision)")
    add_calibrator_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_checkpoint

    print(f"exporting {args.weights} -> {args.out}: tracing, optimising and checking against PyTorch ...",
          flush=True)
    out = export_checkpoint(args.weights, args.out, args.opset, args.static, args.half,
                            calibrator=args.calibrator, raw_scores=args.raw_scores)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    scores = scores_line(json.loads(meta.get("drmm_calibrator") or "null"), args.calibrator or args.weights)
    print(f"wrote {out} ({'static ' + 'x'.join(map(str, args.static)) if args.static else 'dynamic'} input size; "
          f"{scores}); checked: onnxruntime gives PyTorch's detections on a random image\n"
          f"run it: drmm predict --onnx {out} IMAGES... [--runtime openvino [--precision bf16]]")
    return 0
