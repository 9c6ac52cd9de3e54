"""The ``drmm`` command: info, synth, train, demo, eval, calibration, calibrate, predict, export, bench, reproduce,
convert-mmdet, convert-dataset.

See ``drmm COMMAND --help``.
"""
# One module per command, each with register(subparsers) (its parser; set_defaults(func=run))
# and run(args) -> exit code; common.py holds what several commands share.
from __future__ import annotations

import argparse
import logging
import sys

from . import (bench, calibrate, calibration, convert_dataset, convert_mmdet, demo, export, info, predict, reproduce,
               synth, train)
from . import eval as eval_  # the module is named after its command

COMMANDS = (info, synth, train, demo, eval_, calibration, calibrate, predict, export, bench, reproduce, convert_mmdet,
            convert_dataset)
"""The command modules, in the order ``drmm --help`` lists them."""


def register(subparsers) -> None:
    """Add every command to ``subparsers`` (an ``ArgumentParser.add_subparsers()`` result)."""
    for command in COMMANDS:
        command.register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """The ``drmm`` argument parser with all commands; parsed ``args.func(args)`` runs the chosen one."""
    parser = argparse.ArgumentParser(prog="drmm", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``drmm ARGV``; input errors (missing files, bad values) print one line and return 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("onnxscript", "onnx_ir"):  # torch.onnx's optimiser logs each of its ~700 rewrites
        logging.getLogger(chatty).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"drmm {args.command}: error: {e}", file=sys.stderr)
        return 2
