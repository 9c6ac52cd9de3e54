"""``drmm reproduce``: the command of :mod:`drmm.reproduce` (which holds the variants, running and report)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .. import reproduce as library
from .common import add_set_option


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce", help="train the paper's objective variants under one budget and check its claims",
        description=library.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder: DIR/annotations/{train,val}.json, DIR/{train,val}/")
    p.add_argument("--out", required=True, help="output folder (OUT/<variant>/, OUT/results.md, OUT/results.json)")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="training time per variant; faster objectives do more iterations")
    p.add_argument("--iters", type=int, metavar="N",
                   help="exactly N training iterations per variant instead (reproducible)")
    p.add_argument("--config", help="base YAML config (default: the packaged demo_cpu.yaml)")
    add_set_option(p, help="override a base config value for every variant (repeatable)")
    p.add_argument("--variants", metavar="A,B,...",
                   help=f"comma-separated subset (default, in order: {','.join(library.DEFAULT_VARIANTS)})")
    p.add_argument("--seed", type=int, metavar="S", help="train.seed for every variant (default: the config's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def command_line(args: argparse.Namespace) -> str:
    """The command line, rebuilt from the parsed arguments (equivalent to what was typed)."""
    parts = ["drmm", "reproduce", "--data", str(args.data), "--out", str(args.out)]
    if args.budget_minutes is not None:
        parts += ["--budget-minutes", f"{args.budget_minutes:g}"]
    if args.iters is not None:
        parts += ["--iters", str(args.iters)]
    if args.config:
        parts += ["--config", str(args.config)]
    for o in args.overrides:
        parts += ["--set", o]
    if args.variants:
        parts += ["--variants", args.variants]
    if args.seed is not None:
        parts += ["--seed", str(args.seed)]
    if args.device:
        parts += ["--device", args.device]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    if args.iters is None and args.budget_minutes is None:
        raise ValueError("give a budget: --budget-minutes M (training time per variant) or --iters N")
    if args.iters is not None and args.budget_minutes is not None:
        print(f"--iters {args.iters} given: every variant trains exactly {args.iters} iterations, "
              "--budget-minutes is not applied")
    variants = ([v.strip() for v in args.variants.split(",") if v.strip()] if args.variants
                else list(library.DEFAULT_VARIANTS))
    report = library.reproduce(args.data, args.out, config=args.config, overrides=args.overrides, variants=variants,
                               seed=args.seed, budget_minutes=args.budget_minutes, iters=args.iters,
                               device=args.device, progress=not args.no_progress, command=command_line(args))
    print()
    print(library.format_table(report["variants"], report["failed"]))
    print("(AP, AR, ECE, LaECE in percentage points; exp(-MCM) in 0..1)\n")
    print("D-ECE and LaECE on the held-out half of val, before and after temperature scaling fitted on the other:")
    print(library.format_posthoc_table(report["variants"]) + "\n")
    print("On the same held-out half, as trained and with the best post-hoc calibrator for LaECE_0 and for D-ECE "
          "(fitted on the other half):")
    print(library.format_heldout_table(report["variants"]) + "\n")
    print(library.format_claims(report["claims"]))
    print(f"\nwrote {Path(args.out) / 'results.md'} and results.json")
    return 0
