"""``drmm eval``, ``drmm predict`` and ``drmm bench``: added to the ``drmm`` command by :func:`register`."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def _device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    return dev


def _dataset_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(annotation file, image folder) from ``--data DIR [--split S]`` or ``--ann A --images D``."""
    if args.data is not None:
        if args.ann is not None or args.images is not None:
            raise ValueError("give either --data DIR or --ann FILE --images DIR, not both")
        root = Path(args.data)
        return root / "annotations" / f"{args.split}.json", root / args.split
    if args.ann is None or args.images is None:
        raise ValueError("give --data DIR (DIR/annotations/SPLIT.json + DIR/SPLIT/) or both --ann and --images")
    return Path(args.ann), Path(args.images)


def check_class_mapping(dataset, ckpt: dict, num_classes: int, weights: str | Path) -> None:
    """The dataset's categories must be the ones the checkpoint was trained on."""
    ckpt_ids = ckpt.get("cat_ids")
    if ckpt_ids:
        if [int(c) for c in ckpt_ids] != [int(c) for c in dataset.cat_ids]:
            raise ValueError(f"{dataset.ann_file}: category ids {list(dataset.cat_ids)} differ from those the "
                             f"checkpoint {weights} was trained on {list(ckpt_ids)}")
    elif len(dataset.cat_ids) != num_classes:
        raise ValueError(f"{dataset.ann_file} has {len(dataset.cat_ids)} categories but the model in "
                         f"{weights} predicts {num_classes} classes")


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import CocoDetection
    from .evaluation import format_metrics_table
    from .evaluation import evaluate, format_diagnostics_table, format_nms_sweep_table
    from .models import detector_from_checkpoint

    dev = _device(args.device)
    ann, images = _dataset_paths(args)
    if not ann.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann}")
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    model, ckpt = detector_from_checkpoint(args.weights, map_location="cpu")
    model.optimize_for_inference(compile=args.compile)  # folded BatchNorms + channels_last: same detections
    dataset = CocoDetection(ann, images, train=False)
    check_class_mapping(dataset, ckpt, model.cfg.model.num_classes, args.weights)
    out = Path(args.out) if args.out else Path(args.weights).resolve().parent / "eval"
    result = evaluate(model, dataset, out, batch_size=args.batch_size, device=dev, num_workers=args.workers,
                      min_score=args.min_score, n_bins=args.bins, diagnostics=args.diagnostics,
                      nms_sweep=args.nms_sweep, title=Path(args.weights).name)
    metrics = {k: v for k, v in result.items() if k not in ("diagnostics", "nms_sweep")}
    print(f"{len(dataset)} images of {ann}")
    print(format_metrics_table(metrics))
    if args.diagnostics:
        print("\nvalidation NLL / MCM per stage (paper Tables 4, 9):")
        print(format_diagnostics_table(result["diagnostics"]))
    if args.nms_sweep:
        print("\npost-processing sweep (paper Figure 7, Table 3):")
        print(format_nms_sweep_table(result["nms_sweep"]))
    print(f"\nwrote {out}/metrics.json, detections.json, reliability.png, confidence_histograms.png"
          + (", diagnostics.json" if args.diagnostics else "") + (", nms_sweep.json" if args.nms_sweep else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    dev = _device(args.device)
    out = Path(args.out) if args.out else Path("predictions")
    summary = predict(args.weights, args.inputs, out, threshold=args.threshold, device=dev,
                      recursive=args.recursive)
    skipped = summary["skipped"]
    print(f"{summary['images']} image(s), {summary['detections']} detection(s) >= {args.threshold:g} -> {out}/"
          + (f"; skipped {len(skipped)} unreadable: {', '.join(skipped[:5])}" if skipped else ""))
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like HxW (e.g. 800x1216), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"--size must be positive, got {text!r}")
    return h, w


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import benchmark
    from .config import load_config
    from .models import build_detector, count_parameters, detector_from_checkpoint

    dev = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = _parse_size(args.size)
    if args.weights:
        if args.overrides:
            raise ValueError("--set applies to --config only (a checkpoint carries its own config)")
        model, _ = detector_from_checkpoint(args.weights, map_location="cpu")
        source = args.weights
    else:
        cfg = load_config(args.config, args.overrides)
        cfg.model.pretrained = None  # timing needs no weights
        model = build_detector(cfg)
        source = args.config
    if args.compile and args.no_optimize:
        raise ValueError("--compile is part of the inference optimisation; drop --no-optimize")
    if not args.no_optimize:
        model.optimize_for_inference(compile=args.compile)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    m = model.cfg.model
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{source}: {m.backbone}, {m.num_proposals} proposals, {m.num_stages} stages, "
          f"{count_parameters(model)[0] / 1e6:.1f}M parameters; {name}")
    print(f"input {size[0]}x{size[1]} (model resizes to short side {m.min_size}, long side <= {m.max_size}), "
          f"batch {args.batch}, median of {args.runs} runs after {args.warmup} warm-up")
    benchmark(model, size, args.batch, dev, args.runs, args.warmup, dtypes)
    return 0


def register(subparsers) -> None:
    """Add ``eval``, ``predict`` and ``bench`` to the ``drmm`` sub-command parsers."""
    p = subparsers.add_parser("eval", help="COCO AP/AR, D-ECE, reliability figures (+ diagnostics, NMS sweep)")
    p.add_argument("--weights", required=True, help="checkpoint (.pt)")
    p.add_argument("--data", help="dataset root: DIR/annotations/SPLIT.json and DIR/SPLIT/")
    p.add_argument("--split", default="val", help="split under --data (default: val)")
    p.add_argument("--ann", help="COCO annotation file (with --images)")
    p.add_argument("--images", help="image folder (with --ann)")
    p.add_argument("--out", help="output folder (default: CKPT_DIR/eval)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=2, help="data loading processes (0: in the main process)")
    p.add_argument("--min-score", type=float, default=0.05, help="ECE leaves out lower scores (default 0.05)")
    p.add_argument("--bins", type=int, default=10, help="ECE confidence bins (default 10)")
    p.add_argument("--diagnostics", action="store_true",
                   help="per-stage validation NLL and exp(-MCM) (paper Tables 4, 9)")
    p.add_argument("--nms-sweep", action="store_true",
                   help="AP/AR/ECE with class-wise NMS at IoU 0.5..0.9 and winner-take-all (Figure 7, Table 3)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoder: pays on large datasets of one image size (see docs/benchmarks.md)")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("predict", help="detect objects in images; writes annotated PNGs and JSON")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--weights", required=True, help="checkpoint (.pt)")
    p.add_argument("--out", help="output folder (default: predictions)")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum score drawn and saved (default 0.3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--recursive", action="store_true", help="also search sub-folders of folder inputs")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("bench", help="inference speed (fp32 / bf16) on random tensors")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint (.pt)")
    src.add_argument("--config", help="YAML config (random weights)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a --config value (repeatable)")
    p.add_argument("--size", default="800x1216", help="input HxW (default 800x1216)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated of fp32, bf16, fp16")
    p.add_argument("--threads", type=int, help="torch.set_num_threads on CPU")
    p.add_argument("--compile", action="store_true",
                   help="also torch.compile the decoder (compiles during the warm-up runs)")
    p.add_argument("--no-optimize", action="store_true",
                   help="time the model as built (default: as drmm eval / predict run it, optimize_for_inference)")
    p.set_defaults(func=cmd_bench)
