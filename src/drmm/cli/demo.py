"""``drmm demo``: generate the built-in data, train the CPU recipe, evaluate, draw predictions."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import load_config, packaged_config
from .common import add_set_option, print_metrics


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="generate data, train the CPU recipe, evaluate, draw predictions")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--config", help="training recipe (default: the packaged demo.yaml, AdaMixer sized for 5-8 min "
                   "on 2 CPU cores; configs/demo_cpu.yaml is the Sparse R-CNN one)")
    add_set_option(p, help=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import build_dataset, generate_synthetic
    from ..evaluation import evaluate
    from ..engine.train import DataPaths, train
    from ..hardware import named_on_command_line
    from ..checkpoints import detector_from_checkpoint
    from ..predict import predict

    t0 = time.time()
    out = Path(args.out)
    data_dir = out / "data"
    cfg = load_config(args.config or packaged_config("demo.yaml"), args.overrides)
    if not (data_dir / "annotations" / "val.json").is_file():
        print("1/4 generating the built-in dataset (2000 train / 200 val synthetic 128x128 scenes)")
        generate_synthetic(data_dir, 2000, 200, seed=0, image_size=128)
    print(f"2/4 training the CPU recipe ({cfg.model.architecture}, {cfg.train.max_iters} iterations, "
          f"batch {cfg.train.batch_size})")
    train(cfg, DataPaths.from_dir(data_dir), out / "run", force_amp=named_on_command_line(args.overrides, "train.amp"))
    ckpt = out / "run" / "last.pt"
    print("3/4 evaluating on the validation set")
    model, _ = detector_from_checkpoint(ckpt)
    val = build_dataset(cfg.data, data_dir / "annotations/val.json", data_dir / "val", train=False)
    metrics = evaluate(model, val, out / "eval", batch_size=8, progress=True)
    print("4/4 drawing predictions on 4 validation images")
    images = [data_dir / "val" / val.coco.imgs[i]["file_name"] for i in val.ids[:4]]
    predict(ckpt, images, out / "predictions", threshold=0.3)
    print_metrics({k: v for k, v in metrics.items() if k not in ("ECE", "LaECE")})
    print(f"D-ECE {metrics.get('ECE', float('nan')):.3f}, LaECE {metrics.get('LaECE', float('nan')):.3f} "
          "(IoU 0.5, scores >= 0.05)")
    print(f"demo finished in {(time.time() - t0) / 60:.1f} min; outputs in {out}/ "
          "(run/loss.png, eval/reliability.png, predictions/*.png)")
    return 0
