"""``drmm predict``: detect objects in images; annotated PNGs and one JSON per image."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_calibrator_args, device, scores_line


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="detect objects in images; writes annotated PNGs and JSON")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--weights", help="checkpoint (.pt)")
    p.add_argument("--onnx", help="an exported model (drmm export) run without torch instead of --weights")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help="what runs --onnx (default onnxruntime; openvino: pip install 'drmm[openvino]')")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="--runtime openvino only: bf16 is ~4x faster on CPUs with AMX / AVX-512 BF16 but moves "
                        "scores (by up to ~0.04 for 99%% of detections; docs/benchmarks.md); default f32: "
                        "PyTorch's detections")
    p.add_argument("--out", help="output folder (default: predictions)")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum score drawn and saved (default 0.3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--recursive", action="store_true", help="also search sub-folders of folder inputs")
    add_calibrator_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.weights is None) == (args.onnx is None):
        raise ValueError("give exactly one of --weights CKPT and --onnx MODEL")
    if args.weights and (args.runtime != "onnxruntime" or args.precision != "f32"):
        raise ValueError("--runtime and --precision choose how an --onnx model runs; with --weights use "
                         "--onnx MODEL (from drmm export) instead")
    if args.onnx and args.calibrator:
        raise ValueError("--calibrator applies to --weights; an --onnx graph carries the calibrator it was exported "
                         "with (drmm export --calibrator FILE.json)")
    out = Path(args.out) if args.out else Path("predictions")
    if args.onnx:  # onnxruntime or OpenVINO only: no torch on this path
        from ..onnx_predict import predict_onnx

        summary = predict_onnx(args.onnx, args.inputs, out, threshold=args.threshold, recursive=args.recursive,
                               runtime=args.runtime, precision=args.precision, raw_scores=args.raw_scores)
    else:
        from ..predict import predict

        summary = predict(args.weights, args.inputs, out, threshold=args.threshold, device=device(args.device),
                          recursive=args.recursive, raw_scores=args.raw_scores, calibrator=args.calibrator)
    skipped = summary["skipped"]
    print(scores_line(summary["calibrator"], args.calibrator or args.onnx or args.weights))
    print(f"{summary['images']} image(s), {summary['detections']} detection(s) >= {args.threshold:g} -> {out}/"
          + (f"; skipped {len(skipped)} unreadable: {', '.join(skipped[:5])}" if skipped else ""))
    return 0
