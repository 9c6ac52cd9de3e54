"""``drmm calibration``: D-ECE and LaECE of any detector's COCO results, post-hoc calibrators, detectors compared.

The definitions are in :mod:`drmm.evaluation.calibration` and
:mod:`drmm.evaluation.matching`; this module only reads the arguments, prints and
writes (see ``docs/calibration.md``).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import asdict
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibration", help="D-ECE and LaECE of COCO results files; post-hoc calibration; reliability figures",
        description="D-ECE and LaECE of any detector's COCO results file against its annotation file; with "
        "--fit, a post-hoc calibrator fitted on other detections, before / after. Writes OUT/calibration.json, "
        "reliability diagrams for D-ECE and LaECE and OUT/confidence_vs_accuracy.png (every detector's curves "
        "together, paper Figure 2). Definitions: docs/calibration.md.")
    p.add_argument("--ann", required=True, metavar="ANN.json", help="COCO annotation file (the ground truth)")
    p.add_argument("--detections", required=True, nargs="+", metavar="DETS.json",
                   help="COCO results file(s): a list of {image_id, category_id, bbox [x,y,w,h], score}")
    p.add_argument("--names", nargs="+", metavar="NAME", help="a name per --detections file (default: file names)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--iou", type=float, default=0.5, help="IoU for a correct detection (default 0.5)")
    p.add_argument("--min-score", type=float, default=0.05, help="lower scores are left out (default 0.05)")
    p.add_argument("--bins", type=int, default=10, help="D-ECE bins (default 10)")
    p.add_argument("--laece-bins", type=int, default=25, help="LaECE bins per class (default 25)")
    p.add_argument("--matching", default="coco",
                   help="coco (default: one-to-one by score, crowd regions ignored, as COCOeval) or netcal "
                        "(max IoU, duplicates all correct)")
    p.add_argument("--fit", metavar="FIT_DETS.json",
                   help="fit a calibrator on these detections (other images) and report before / after")
    p.add_argument("--fit-ann", metavar="FIT_ANN.json", help="annotation file of --fit (default: --ann)")
    p.add_argument("--method", default="temperature", help="temperature (default), platt or isotonic")
    p.add_argument("--per-class", action="store_true",
                   help="with --fit: one map per class (a class with too few detections keeps the all-classes map)")
    p.add_argument("--save", metavar="CALIBRATOR.json",
                   help="with --fit: write the fitted calibrator, for drmm predict / eval / export --calibrator")
    p.add_argument("--skip-invalid", action="store_true",
                   help="leave out (and count) entries with unknown ids, bad boxes or scores instead of failing")
    p.set_defaults(func=run)


def _names(args: argparse.Namespace) -> list[str]:
    names = args.names or [Path(d).stem for d in args.detections]
    if len(names) != len(args.detections):
        raise ValueError(f"--names gives {len(names)} name(s) for {len(args.detections)} --detections file(s)")
    if len(set(names)) != len(names):
        raise ValueError(f"detector names must differ ({', '.join(names)}): give --names")
    return names


def _diagrams(summary, folder: Path, title: str, suffix: str = "") -> list[Path]:
    from ..plotting import reliability_diagram

    paths = [folder / f"reliability_d_ece{suffix}.png", folder / f"reliability_laece{suffix}.png"]
    reliability_diagram(summary.d_ece, paths[0], title_extra=title, ylabel="precision")
    reliability_diagram(summary.laece.pooled, paths[1], title_extra=f"{title} (classes pooled)".strip(),
                        metric="LaECE", ylabel="mean IoU-accuracy")
    if summary.eccv is not None:  # ECCV 2024: all detections, TP at IoU >= 0; adaptive (equal-count) bins
        from ..plotting import adaptive_reliability_diagram

        paths.append(folder / f"reliability_laace_0{suffix}.png")
        adaptive_reliability_diagram(summary.eccv.bins_laace_0, paths[-1], f"{title} (classes pooled)".strip())
    return paths


def _eccv_table(rows: list[tuple[str, dict]], first: str) -> str:
    """``first`` | n | TP | GT | LaECE_0 | LaACE_0 | oLRP | LRP-opt. threshold, x100 but the threshold."""
    def f(v, scale=100.0):
        return "-" if v is None or v != v else f"{scale * v:.2f}"

    width = max([len(first)] + [len(n) for n, _ in rows])
    lines = [f"{first:<{width}}  {'n':>7}  {'TP':>7}  {'GT':>7}  {'LaECE_0':>7}  {'LaACE_0':>7}  {'oLRP':>6}  "
             f"{'thresh.':>7}", "-" * (width + 66)]
    lines += [f"{n:<{width}}  {r['n']:>7}  {r.get('n_tp', '')!s:>7}  {r.get('n_gt', '')!s:>7}  {f(r['laece_0']):>7}  "
              f"{f(r['laace_0']):>7}  {f(r['olrp']):>6}  {f(r.get('lrp_threshold'), 1.0):>7}" for n, r in rows]
    return "\n".join(lines)


def _eccv_rows(report: dict) -> list[tuple[str, dict]]:
    e = report["eccv"]
    return [(c["name"], c) for c in e["per_class"].values()] + [
        (f"all ({len(e['per_class'])} classes)", {**e, "olrp": e["lrp"]})]


def describe_calibrator(calibrator, path: Path) -> str:
    """The console lines of a saved calibrator: where, what, and the classes that keep the all-classes map."""
    lines = [f"saved the {calibrator.method} calibrator ({_params(calibrator.params)}"
             + (f"; per class: {len(calibrator.classes)} classes" if calibrator.classes is not None else "")
             + f") to {path}"]
    for c, why in calibrator.fallbacks().items():
        lines.append(f"  class {c} ({calibrator.classes[c]['name']}): {why}")
    return "\n".join(lines)


def _row(name: str, summary) -> dict:
    return {"name": name, "n": summary.d_ece.n, "n_correct": int(summary.counted.correct.sum()),
            "d_ece": summary.d_ece.ece, "laece": summary.laece.laece}


def _params(params: dict) -> str:
    if "x" in params:  # isotonic: the fitted points
        return f"{len(params['x'])} points"
    return ", ".join(f"{k} {v:.4g}" for k, v in params.items())


def _class_rows(report: dict) -> list[dict]:
    rows = [{"name": c["name"], **c} for c in report["per_class"].values()]
    return rows + [{"name": f"all ({report['n_classes']} classes)", "n": report["n"], "n_correct": report["n_correct"],
                    "d_ece": report["d_ece"], "laece": report["laece"]}]


def run(args: argparse.Namespace) -> int:
    from ..evaluation import (CalibrationOptions, calibration_summary, format_calibration_table, load_detections,
                              load_ground_truth, posthoc_comparison, write_json)
    from ..plotting import calibration_curves

    options = CalibrationOptions(args.iou, args.min_score, args.bins, args.laece_bins, args.matching)
    names = _names(args)
    if args.fit and len(names) > 1:
        raise ValueError("--fit calibrates one detector: give a single --detections file")
    if args.fit_ann and not args.fit:
        raise ValueError("--fit-ann needs --fit")
    if (args.save or args.per_class) and not args.fit:
        raise ValueError("--save and --per-class need --fit FIT_DETS.json (the detections to fit on)")
    gt = load_ground_truth(args.ann)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {name: (d := load_detections(path, gt, args.skip_invalid), calibration_summary(gt, d, options))
               for name, path in zip(names, args.detections)}
    print(f"{args.ann}: {len(gt.image_ids)} images, {len(gt.categories)} categories; {options.matching} matching, "
          f"IoU {options.iou:g}, scores >= {options.min_score:g}, {options.bins} D-ECE / {options.laece_bins} "
          "LaECE bins (x100)")
    figures = []
    if len(results) == 1:
        (name, (dets, summary)), = results.items()
        report = summary.to_json(gt, dets)
        print(format_calibration_table(_class_rows(report)))
        print(f"\nLaECE_0 ({options.laece_bins} bins), LaACE_0, oLRP (Kuzucu et al. 2024): every detection, "
              f"TP at IoU >= {summary.eccv.tau:g}; thresh.: LRP-optimal")
        print(_eccv_table(_eccv_rows(report), "class"))
        left = report["left_out"]
        print(f"left out: {left['ignored_crowd']} on crowd regions only, {left['below_min_score']} below "
              f"{options.min_score:g}" + "".join(f", {v} {k}" for k, v in left["skipped_entries"].items() if v))
        figures += _diagrams(summary, out, name)
        if args.fit:
            fit_gt = load_ground_truth(args.fit_ann) if args.fit_ann else gt
            fit_dets = load_detections(args.fit, fit_gt, args.skip_invalid)
            cmp = posthoc_comparison((fit_gt, fit_dets), (gt, dets), args.method, options, per_class=args.per_class)
            report["posthoc"] = {**cmp.to_json(), "fit_detections": args.fit, "fit_annotations": fit_gt.source}
            shared = set(fit_dets.image_id.tolist()) & set(dets.image_id.tolist())
            print(f"\n{args.method} calibration fitted on {cmp.n_fit} detections of {args.fit} "
                  f"({_params(cmp.calibrator.params)}):")
            print(format_calibration_table([_row("before", cmp.before), _row(f"after {args.method}", cmp.after)],
                                           first=name))
            if shared and fit_gt.source == gt.source:
                print(f"warning: {len(shared)} image(s) are in both --fit and --detections: 'after' is optimistic")
            figures += _diagrams(cmp.after, out, f"{name}, after {args.method} scaling", f"_{args.method}")
            if args.save:
                saved = cmp.calibrator.save(args.save, {"detections": args.fit, "annotations": fit_gt.source,
                                                        **asdict(options)})
                print(describe_calibrator(cmp.calibrator, saved))
    else:
        report = {"detectors": [{"name": n, **s.to_json(gt, d)} for n, (d, s) in results.items()],
                  "options": asdict(options), "annotations": gt.source}
        print(format_calibration_table([_row(n, s) for n, (_, s) in results.items()], first="detector"))
        print("\n" + _eccv_table([(d["name"], {**d["eccv"], "olrp": d["lrp"]}) for d in report["detectors"]], "detector"))
        for n, (_, s) in results.items():
            figures += _diagrams(s, out / re.sub(r"[^\w.-]+", "_", n), n)
    curves = out / "confidence_vs_accuracy.png"
    calibration_curves({"precision": {n: s.d_ece for n, (_, s) in results.items()},
                        "mean IoU-accuracy": {n: s.laece.pooled for n, (_, s) in results.items()}}, curves)
    write_json(out / "calibration.json", report)
    print(f"\nwrote {out / 'calibration.json'}, {', '.join(str(f) for f in [*figures, curves])}")
    return 0
