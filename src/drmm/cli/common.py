"""What several commands share: the config arguments, device parsing, dataset paths, the metrics table."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """The ``config`` positional (a YAML file)."""
    p.add_argument("config", help="YAML config file")


def add_set_option(p: argparse.ArgumentParser, help: str | None = "override a config value (repeatable)") -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``: the only declaration of the option."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def data_options(overrides: list[str]):
    """:class:`~drmm.config.DataConfig` from ``--set data.KEY=VALUE`` (for commands reading a checkpoint)."""
    from ..config import Config, apply_overrides

    other = [o for o in overrides if not o.startswith("data.")]
    if other:
        raise ValueError(f"--set {other[0]}: only data.* keys can be set here (the checkpoint carries the rest)")
    return apply_overrides(Config(), overrides).data


def device(name: str) -> torch.device:
    """``--device NAME`` as a device; an error when it names CUDA on a machine without it."""
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    return dev


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    """One split of a dataset: ``--data DIR [--split S]`` or ``--ann FILE --images DIR`` (see :func:`dataset_paths`)."""
    p.add_argument("--data", help="dataset root: COCO (DIR/annotations/SPLIT.json, DIR/SPLIT/), YOLO "
                                  "(DIR/data.yaml) or VOC (DIR/Annotations, ImageSets/Main/SPLIT.txt)")
    p.add_argument("--split", default="val", help="split under --data (default: val)")
    p.add_argument("--ann", help="COCO annotation file, YOLO data.yaml or VOC ImageSets/Main/SPLIT.txt (with --images)")
    p.add_argument("--images", help="image folder (with --ann)")


def dataset_paths(args: argparse.Namespace, fmt: str | None = None) -> tuple[Path, Path]:
    """(annotation source, image folder) from ``--data DIR [--split S]`` or ``--ann A --images D``.

    ``fmt`` (``data.format``): the layout of ``--data``, None to detect it (:mod:`drmm.data.formats`).
    """
    if args.data is not None:
        if args.ann is not None or args.images is not None:
            raise ValueError("give either --data DIR or --ann FILE --images DIR, not both")
        from ..data.formats import dataset_split

        return dataset_split(args.data, args.split, fmt)
    if args.ann is None or args.images is None:
        raise ValueError("give --data DIR (DIR/annotations/SPLIT.json + DIR/SPLIT/) or both --ann and --images")
    return Path(args.ann), Path(args.images)


def add_training_data_args(p: argparse.ArgumentParser) -> None:
    """Training (and validation) data: ``--data DIR`` or explicit paths (see :func:`training_data_paths`)."""
    p.add_argument("--data", help="dataset folder: COCO (DIR/annotations/{train,val}.json, DIR/{train,val}/), "
                                  "YOLO (DIR/data.yaml) or VOC (DIR/Annotations, DIR/ImageSets/Main)")
    p.add_argument("--train-ann", help="training annotation JSON (instead of --data)")
    p.add_argument("--train-images", help="training image folder")
    p.add_argument("--val-ann", help="validation annotation JSON")
    p.add_argument("--val-images", help="validation image folder")


def training_data_paths(args: argparse.Namespace, fmt: str | None = None):
    """:class:`drmm.engine.train.DataPaths` from ``--data DIR`` (``fmt``: its layout, None: detected) or
    ``--train-ann/--train-images[/--val-*]``."""
    from ..engine.train import DataPaths

    if args.data:
        return DataPaths.from_dir(args.data, fmt)
    if not (args.train_ann and args.train_images):
        raise ValueError("give --data DIR, or --train-ann and --train-images (and optionally --val-ann/--val-images)")
    if args.val_ann and not args.val_images:
        raise ValueError("--val-ann needs --val-images")
    val = (Path(args.val_ann), Path(args.val_images)) if args.val_ann else (None, None)
    return DataPaths(Path(args.train_ann), Path(args.train_images), *val)


def print_metrics(metrics: dict) -> None:
    """The COCO metrics table (nothing when ``metrics`` is empty)."""
    if metrics:
        from ..evaluation import format_metrics_table

        print(format_metrics_table(metrics))


def add_calibrator_args(p: argparse.ArgumentParser) -> None:
    """``--calibrator FILE.json`` | ``--raw-scores``: a checkpoint's scores (default: its own calibrator's)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--calibrator", metavar="CALIBRATOR.json",
                   help="calibrate the scores with this file (drmm calibration --save, drmm calibrate) instead of "
                        "the checkpoint's own calibrator")
    g.add_argument("--raw-scores", action="store_true",
                   help="the model's own scores, without the calibrator the checkpoint carries (drmm calibrate)")


def scores_line(calibrator: dict | None, source) -> str:
    """The console line saying which scores a command gives: raw, or calibrated by what from where."""
    if not calibrator:
        return "scores: the model's own (no calibrator)"
    return (f"scores: calibrated ({calibrator['method']}{', per class' if calibrator['per_class'] else ''}; "
            f"calibrator of {source})")
