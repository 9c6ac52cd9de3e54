"""``drmm bench``: inference speed (fp32 / bf16 / fp16) of a checkpoint or config on random tensors."""
from __future__ import annotations

import argparse

import torch

from ..config import load_config
from .common import add_set_option, device


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="inference speed (fp32 / bf16) on random tensors")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint (.pt)")
    src.add_argument("--config", help="YAML config (random weights)")
    add_set_option(p, help="override a --config value (repeatable)")
    p.add_argument("--size", default="800x1216", help="input HxW (default 800x1216)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtypes", help="comma-separated of fp32, bf16, fp16 (default: fp32,bf16; fp32 alone on a CPU "
                   "without bf16 instructions, where bf16 is emulated)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads on CPU")
    p.add_argument("--compile", action="store_true",
                   help="also torch.compile the decoder (compiles during the warm-up runs)")
    p.add_argument("--no-optimize", action="store_true",
                   help="time the model as built (default: as drmm eval / predict run it, optimize_for_inference)")
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> (H, W), both positive."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like HxW (e.g. 800x1216), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"--size must be positive, got {text!r}")
    return h, w


def bench_dtypes(text: str | None, dev: torch.device) -> list[str]:
    """``--dtypes`` as a list; the default's bf16 is dropped (with a warning) on a CPU without bf16 instructions."""
    from ..hardware import resolve_amp

    dtypes = [d.strip() for d in (text or "fp32,bf16").split(",") if d.strip()]
    if "bf16" in dtypes and resolve_amp("bf16", dev, forced=text is not None, what="bench",
                                        insist="--dtypes fp32,bf16") == "none":
        dtypes.remove("bf16")
    return dtypes


def run(args: argparse.Namespace) -> int:
    from ..bench import benchmark
    from ..checkpoints import detector_from_checkpoint
    from ..models import build_detector, count_parameters

    dev = device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = parse_size(args.size)
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
    dtypes = bench_dtypes(args.dtypes, dev)
    m = model.cfg.model
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{source}: {m.backbone}, {m.num_proposals} proposals, {m.num_stages} stages, "
          f"{count_parameters(model)[0] / 1e6:.1f}M parameters; {name}")
    print(f"input {size[0]}x{size[1]} (model resizes to short side {m.min_size}, long side <= {m.max_size}), "
          f"batch {args.batch}, median of {args.runs} runs after {args.warmup} warm-up")
    benchmark(model, size, args.batch, dev, args.runs, args.warmup, dtypes)
    return 0
