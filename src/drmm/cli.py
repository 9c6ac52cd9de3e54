"""The ``drmm`` command: info, synth, train, demo (see ``drmm COMMAND --help``)."""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from .config import load_config


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.num_proposals=100 (repeatable)")


def cmd_info(args: argparse.Namespace) -> int:
    from .models import build_detector, count_parameters

    cfg = load_config(args.config, args.overrides)
    cfg.model.pretrained = None  # counting parameters needs no weights
    with torch.device("meta"):  # shapes only: instant and no memory, even for 135M parameters
        model = build_detector(cfg)
    total, trainable = count_parameters(model)
    m = cfg.model
    print(f"config: {args.config}")
    print(f"architecture: {m.architecture} ({m.num_stages} stages), backbone: {m.backbone} + "
          f"{model.backbone.neck_name} ({m.fpn_channels} ch)")
    print(f"objective: {cfg.objective.name}")
    print(f"proposals: {m.num_proposals} ({m.proposal_init} init)")
    print(f"stages: {m.num_stages}")
    print(f"classes: {m.num_classes}")
    print(f"input: short side {m.min_size}, long side <= {m.max_size}")
    print(f"parameters: {total} ({total / 1e6:.1f}M)")
    print(f"trainable: {trainable} ({trainable / 1e6:.1f}M)")
    for name, module in (("backbone", model.backbone), ("proposals", model.proposals), ("decoder", model.decoder)):
        print(f"  {name}: {sum(p.numel() for p in module.parameters()) / 1e6:.2f}M")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data import generate_synthetic

    summary = generate_synthetic(args.out, args.train, args.val, args.seed, args.size)
    print(f"wrote {args.out}: " + ", ".join(
        f"{split} {summary[split]['images']} images / {summary[split]['boxes']} boxes" for split in ("train", "val")))
    return 0


def _data_paths(args: argparse.Namespace):
    from pathlib import Path

    from .engine.train import DataPaths

    if args.data:
        return DataPaths.from_dir(args.data)
    if not (args.train_ann and args.train_images):
        raise ValueError("give --data DIR, or --train-ann and --train-images (and optionally --val-ann/--val-images)")
    val = (Path(args.val_ann), Path(args.val_images)) if args.val_ann else (None, None)
    if args.val_ann and not args.val_images:
        raise ValueError("--val-ann needs --val-images")
    return DataPaths(Path(args.train_ann), Path(args.train_images), *val)


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .engine.train import train

    config = args.config
    if config is None:
        if not args.resume:
            raise ValueError("--config is required (or --resume with a run folder holding config.yaml)")
        config = Path(args.out) / "config.yaml"
    cfg = load_config(config, args.overrides)
    result = train(cfg, _data_paths(args), args.out, resume=args.resume, device=args.device,
                   progress=not args.no_progress)
    _print_metrics(result["metrics"])
    print(f"trained {result['step']} iterations in {result['seconds'] / 60:.1f} min -> {args.out}")
    return 0


def _print_metrics(metrics: dict) -> None:
    if metrics:
        from .evaluation import format_metrics_table

        print(format_metrics_table(metrics))


def packaged_config(name: str) -> str:
    """Path of a config shipped inside the package (``drmm/configs/NAME``)."""
    from pathlib import Path

    return str(Path(__file__).parent / "configs" / name)


def cmd_demo(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .data import generate_synthetic
    from .evaluation import evaluate
    from .engine.train import DataPaths, train
    from .models import detector_from_checkpoint
    from .predict import predict

    t0 = time.time()
    out = Path(args.out)
    data_dir = out / "data"
    if not (data_dir / "annotations" / "val.json").is_file():
        print("1/4 generating the built-in dataset (2000 train / 200 val synthetic 128x128 scenes)")
        generate_synthetic(data_dir, 2000, 200, seed=0, image_size=128)
    cfg = load_config(packaged_config("demo_cpu.yaml"), args.overrides)
    print(f"2/4 training the CPU recipe ({cfg.train.max_iters} iterations, batch {cfg.train.batch_size})")
    train(cfg, DataPaths.from_dir(data_dir), out / "run")
    ckpt = out / "run" / "last.pt"
    print("3/4 evaluating on the validation set")
    from .data import CocoDetection

    model, _ = detector_from_checkpoint(ckpt)
    val = CocoDetection(data_dir / "annotations/val.json", data_dir / "val", train=False)
    metrics = evaluate(model, val, out / "eval", batch_size=8, progress=True)
    print("4/4 drawing predictions on 4 validation images")
    images = [data_dir / "val" / val.coco.imgs[i]["file_name"] for i in val.ids[:4]]
    predict(ckpt, images, out / "predictions", threshold=0.3)
    _print_metrics({k: v for k, v in metrics.items() if k != "ECE"})
    print(f"ECE (D-ECE, IoU 0.5, scores >= 0.05): {metrics.get('ECE', float('nan')):.3f}")
    print(f"demo finished in {(time.time() - t0) / 60:.1f} min; outputs in {out}/ "
          "(run/loss.png, eval/reliability.png, predictions/*.png)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drmm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print a model summary (parameter counts) for a config")
    _add_config_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("synth", help="write the built-in synthetic COCO-format dataset")
    p.add_argument("out", help="output folder (OUT/{train,val}/, OUT/annotations/{train,val}.json)")
    p.add_argument("--train", type=int, default=2000, help="training images")
    p.add_argument("--val", type=int, default=200, help="validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a detector on a COCO-format dataset")
    p.add_argument("--config", help="YAML config (default: the run folder's config.yaml with --resume)")
    p.add_argument("--data", help="dataset folder: DIR/annotations/{train,val}.json, DIR/{train,val}/")
    p.add_argument("--train-ann", help="training annotation JSON (instead of --data)")
    p.add_argument("--train-images", help="training image folder")
    p.add_argument("--val-ann", help="validation annotation JSON")
    p.add_argument("--val-images", help="validation image folder")
    p.add_argument("--out", required=True, help="run folder (config.yaml, log.jsonl, loss.png, last.pt, best.pt)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="generate data, train the CPU recipe, evaluate, draw predictions")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_demo)

    from . import cli_eval, reproduce

    cli_eval.register(sub)
    reproduce.register(sub)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"drmm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
