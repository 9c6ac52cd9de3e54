"""``drmm calibrate``: fit a score calibrator on a held-out set and write a checkpoint that carries it.

The model runs over the set as ``drmm eval`` runs it (raw scores); the calibrator is fitted on the
detections ECE counts (:func:`drmm.evaluation.posthoc.fit_calibrators`), stored under the checkpoint's
``"calibrator"`` key and next to it as JSON; predict, eval, export and ``DRMM`` then give calibrated
scores (``--raw-scores`` the model's own). See ``docs/calibration.md``.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .common import add_dataset_args, add_set_option, data_options, dataset_paths, device


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help="fit a score calibrator on held-out images; write a checkpoint that carries it",
        description="Run a checkpoint on a held-out set, fit a post-hoc calibrator (temperature, Platt or "
        "isotonic; one map, or one per class) on its detections and write OUT (the checkpoint with the "
        "calibrator: predict, eval, export and DRMM use it) and OUT's .calibrator.json. The before / after "
        "table is measured on the images fitted on (in-sample). See docs/calibration.md.")
    p.add_argument("--weights", required=True, help="checkpoint (.pt) to calibrate")
    add_dataset_args(p)
    p.add_argument("--method", default="isotonic", help="isotonic (default), platt or temperature")
    p.add_argument("--target", choices=["correct", "iou"], default="correct",
                   help="what a score comes to mean: correct (default: the chance of a hit at IoU 0.5, fitted on the "
                        "detections ECE counts) or iou (the expected IoU, LaECE_0's target, fitted on every detection)")
    p.add_argument("--per-class", action="store_true",
                   help="one map per class (a class with too few detections keeps the all-classes map)")
    p.add_argument("--out", required=True, metavar="CKPT_CAL.pt", help="the calibrated checkpoint to write")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=2, help="data loading processes (0: in the main process)")
    p.add_argument("--min-score", type=float, default=0.05,
                   help="fit on (and measure) the detections scoring at least this (default 0.05, as ECE)")
    add_set_option(p, help="a data option, e.g. --set data.skip_unreadable=true (data.* keys only; repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import (atomic_save, check_class_mapping, checkpoint_classes, detector_from_checkpoint,
                               make_checkpoint)
    from ..data import build_dataset
    from ..evaluation import CalibrationOptions, format_calibration_table, run_inference, score_detections
    from ..evaluation.calibration_summary import calibration_summary
    from ..evaluation.cocofiles import detections_from_results, ground_truth_from_coco
    from ..evaluation.heldout import fit_on
    from ..evaluation.posthoc import METHODS
    from .calibration import describe_calibrator

    if args.method not in METHODS:
        raise ValueError(f"unknown calibration method {args.method!r}; choose from {', '.join(METHODS)}")
    out = Path(args.out)
    if out.resolve() == Path(args.weights).resolve():
        raise ValueError(f"--out {out} is the checkpoint itself: write the calibrated one to another file")
    data_cfg = data_options(args.overrides)
    ann, images = dataset_paths(args, data_cfg.format)
    if not Path(ann).is_file():
        raise FileNotFoundError(f"annotation file not found: {ann}")
    model, ckpt = detector_from_checkpoint(args.weights, map_location="cpu", raw_scores=True)  # fit on raw scores
    names, cat_ids = checkpoint_classes(model, ckpt)
    model.optimize_for_inference()
    dataset = build_dataset(data_cfg, ann, images, train=False)
    check_class_mapping(dataset, ckpt, model.cfg.model.num_classes, args.weights)
    dets, ids, _ = run_inference(model, dataset, args.batch_size, device(args.device), args.workers)
    options = CalibrationOptions(min_score=args.min_score)
    metrics, before, results, _ = score_detections(dataset.coco, dets, ids, cat_ids, options)
    gt = ground_truth_from_coco(dataset.coco.dataset, source=str(ann))
    gt.categories = dict(zip(cat_ids, names))  # the model's class names (per-class entries)
    found = detections_from_results(results, gt, skip_invalid=True)
    calibrator = fit_on(gt, found, args.method, args.target, args.per_class, options)
    after = calibration_summary(gt, replace(found, scores=calibrator(found.scores, found.category_id)), options)
    spec = calibrator.to_spec({"checkpoint": str(args.weights), "annotations": str(ann), "images": len(ids),
                               "target": args.target, "iou": options.iou, "min_score": options.min_score,
                               "matching": options.matching})
    weights = ckpt["ema"] if isinstance(ckpt.get("ema"), dict) else ckpt["model"]  # the weights the model ran
    atomic_save(make_checkpoint(weights, ckpt["config"], names, cat_ids, calibrator=spec), out)
    saved = calibrator.save(out.with_suffix(".calibrator.json"), spec["fit"])

    def row(name: str, s) -> dict:
        return {"name": name, "n": s.d_ece.n, "n_correct": int(s.counted.correct.sum()), "d_ece": s.d_ece.ece,
                "laece": s.laece.laece}

    what = (f"detections scoring >= {options.min_score:g}, to correct at IoU {options.iou:g}" if args.target == "correct"
            else "detections (all of them), to their IoU (a true positive at IoU >= 0)")
    print(f"{len(ids)} images of {ann}; fitted on {calibrator.n_fit} {what} "
          f"(AP {100 * metrics['AP']:.2f}: a calibrator keeps the ranking, so AP stays)")
    print(f"on the same images (in-sample: measure on others with drmm eval --weights {out}), x100:")
    print(format_calibration_table([row("raw", before), row(f"{args.method}", after)], first="scores"))
    print("LaECE_0 / LaACE_0: " + ", ".join(f"{n} {100 * s.eccv.laece_0:.2f} / {100 * s.eccv.laace_0:.2f}"
                                            for n, s in (("raw", before), (args.method, after))))
    print(describe_calibrator(calibrator, saved))
    print(f"wrote {out} (the checkpoint with its calibrator)")
    return 0
