"""What reduced precision costs a trained detector: one exported graph, every CPU runtime, COCO AP and D-ECE.

Exports ``--weights`` (dynamic sizes, checked against PyTorch as ``drmm export``
does) and runs every image of ``--ann`` through each backend of ``drmm predict
--onnx``: onnxruntime f32, OpenVINO f32 and OpenVINO bf16 (the OpenVINO rows need
``pip install 'drmm[openvino]'``; bf16 needs AVX-512 BF16 or AMX). For each backend:
ms per image (median), COCO AP / AP50 / AP75 (pycocotools), D-ECE and LaECE
(``drmm calibration``'s definitions, scores >= 0.05), and how many detections equal
onnxruntime's within the export tolerance (scores within 1e-4, boxes within 0.05 px,
same label) with the 99th percentile and the largest deviation of the k-th best score of an
image from onnxruntime's k-th best. Images are read as ``drmm predict`` reads them.

    python benchmarks/onnx_precision.py --weights runs/demo/run/last.pt \\
        --images data/val --ann data/annotations/val.json [--threads 2] [--limit N]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import describe, environment, onnx_backends  # noqa: E402

from drmm.evaluation.calibration_summary import calibration_summary  # noqa: E402
from drmm.evaluation.coco import coco_evaluate  # noqa: E402
from drmm.evaluation.cocofiles import detections_from_results, load_ground_truth  # noqa: E402
from drmm.export import count_matched_detections, export_checkpoint  # noqa: E402
from drmm.image_files import load_rgb  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", required=True, help="folder of the annotation file's images")
    ap.add_argument("--ann", required=True, help="COCO annotation file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(describe(environment(torch.device("cpu"))))
    from pycocotools.coco import COCO

    coco = COCO(args.ann)
    images = coco.dataset["images"][: args.limit or None]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_checkpoint(args.weights, Path(tmp) / "model.onnx")
        runners = onnx_backends(path, args.threads)
    results = {name: [] for name in runners}
    times = {name: [] for name in runners}
    equal, total, deviations = dict.fromkeys(runners, 0), 0, {name: [] for name in runners}
    for info in images:
        rgb = np.asarray(load_rgb(Path(args.images) / info["file_name"]), dtype=np.float32) / 255
        image = np.ascontiguousarray(rgb.transpose(2, 0, 1))
        outputs = {}
        for name, detector in runners.items():
            t = time.perf_counter()
            outputs[name] = detector(image)
            times[name].append(time.perf_counter() - t)
            boxes, scores, labels = outputs[name]
            results[name] += [{"image_id": info["id"], "category_id": int(c), "score": float(s),
                               "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                              for b, s, c in zip(boxes, scores, labels)]
        ref = outputs["onnxruntime f32"]
        total += len(ref[1])
        for name, got in outputs.items():
            equal[name] += count_matched_detections(ref, got)
            deviations[name].append(np.abs(np.sort(ref[1]) - np.sort(got[1])))  # k-th best vs k-th best
    gt = load_ground_truth(args.ann)
    ids = [info["id"] for info in images]
    print(f"\n{len(images)} images of {args.ann}; {args.threads} threads")
    print(f"{'backend':<17} {'ms/image':>9} {'AP':>6} {'AP50':>6} {'AP75':>6} {'D-ECE':>6} {'LaECE':>6} "
          f"{'equal to onnxruntime f32':>25} {'|score| dev p99 / max':>22}")
    for name, res in results.items():
        dev = np.concatenate(deviations[name])
        metrics = coco_evaluate(coco, res, ids)
        cal = calibration_summary(gt, detections_from_results(res, gt))
        print(f"{name:<17} {np.median(times[name]) * 1e3:9.1f} {100 * metrics['AP']:6.1f} "
              f"{100 * metrics['AP50']:6.1f} {100 * metrics['AP75']:6.1f} {100 * cal.d_ece.ece:6.2f} "
              f"{100 * cal.laece.laece:6.2f} {f'{equal[name]}/{total}':>25} "
              f"{np.percentile(dev, 99):10.1e} / {dev.max():.1e}")


if __name__ == "__main__":
    main()
