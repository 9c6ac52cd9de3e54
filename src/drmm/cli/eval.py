"""``drmm eval``: COCO AP/AR, D-ECE, LaECE and reliability figures of a checkpoint (+ diagnostics, NMS sweep)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import (add_calibrator_args, add_dataset_args, add_set_option, data_options, dataset_paths, device,
                     scores_line)


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="COCO AP/AR, D-ECE, LaECE, reliability figures (+ diagnostics, NMS sweep)")
    p.add_argument("--weights", required=True, help="checkpoint (.pt)")
    add_dataset_args(p)
    p.add_argument("--out", help="output folder (default: CKPT_DIR/eval)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=2, help="data loading processes (0: in the main process)")
    p.add_argument("--min-score", type=float, default=0.05, help="ECE and LaECE leave out lower scores (default 0.05)")
    p.add_argument("--bins", type=int, default=10, help="ECE confidence bins (default 10)")
    p.add_argument("--diagnostics", action="store_true",
                   help="per-stage validation NLL and exp(-MCM) (paper Tables 4, 9)")
    p.add_argument("--nms-sweep", action="store_true",
                   help="AP/AR/ECE with class-wise NMS at IoU 0.5..0.9 and winner-take-all (Figure 7, Table 3)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoder: pays on large datasets of one image size (see docs/benchmarks.md)")
    add_calibrator_args(p)
    add_set_option(p, help="a data option, e.g. --set data.skip_unreadable=true (data.* keys only; repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import build_dataset
    from ..evaluation import evaluate, format_diagnostics_table, format_metrics_table, format_nms_sweep_table
    from ..checkpoints import check_class_mapping, detector_from_checkpoint

    dev = device(args.device)
    data_cfg = data_options(args.overrides)
    ann, images = dataset_paths(args, data_cfg.format)
    if not ann.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann}")
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    model, ckpt = detector_from_checkpoint(args.weights, map_location="cpu", calibrator=args.calibrator,
                                           raw_scores=args.raw_scores)
    calibrator = getattr(model.postprocess.score_calibration, "spec", None)
    model.optimize_for_inference(compile=args.compile)  # folded BatchNorms + channels_last: same detections
    dataset = build_dataset(data_cfg, ann, images, train=False)
    check_class_mapping(dataset, ckpt, model.cfg.model.num_classes, args.weights)
    out = Path(args.out) if args.out else Path(args.weights).resolve().parent / "eval"
    result = evaluate(model, dataset, out, batch_size=args.batch_size, device=dev, num_workers=args.workers,
                      min_score=args.min_score, n_bins=args.bins, diagnostics=args.diagnostics,
                      nms_sweep=args.nms_sweep, title=Path(args.weights).name)
    metrics = {k: v for k, v in result.items() if k not in ("diagnostics", "nms_sweep", "lrp_thresholds")}
    print(f"{len(dataset)} images of {ann}; {scores_line(calibrator, args.calibrator or args.weights)}")
    print(format_metrics_table(metrics))
    if args.diagnostics:
        print("\nvalidation NLL / MCM per stage (paper Tables 4, 9):")
        print(format_diagnostics_table(result["diagnostics"]))
    if args.nms_sweep:
        print("\npost-processing sweep (paper Figure 7, Table 3):")
        print(format_nms_sweep_table(result["nms_sweep"]))
    print(f"\nwrote {out}/metrics.json, detections.json, calibration.json, reliability.png, reliability_laece.png, "
          "reliability_laace_0.png, confidence_histograms.png"
          + (", diagnostics.json" if args.diagnostics else "") + (", nms_sweep.json" if args.nms_sweep else ""))
    return 0
