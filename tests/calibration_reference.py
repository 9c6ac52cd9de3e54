"""Independent references for the calibration tests: plain-Python IoU, matching, binning, D-ECE and LaECE.

Written from the definitions in docs/calibration.md with loops over Python lists (no
numpy, nothing imported from drmm), so a test comparing drmm with them compares two
implementations. Inputs are COCO dicts: ``annotations`` (with ``iscrowd``) and
results entries ``{"image_id", "category_id", "bbox", "score"}``.
"""
from __future__ import annotations

import json
import random


def overlap(a, b) -> float:
    """Intersection area of two [x, y, w, h] boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return iw * ih if iw > 0 and ih > 0 else 0.0


def iou(a, b) -> float:
    inter = overlap(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def iof(det, region) -> float:
    """Intersection over the detection's own area."""
    area = det[2] * det[3]
    return overlap(det, region) / area if area > 0 else 0.0


def match(annotations, detections, iou_min=0.5, matching="coco"):
    """Per detection (file order): ``(correct, matched IoU or 0, ignored)``."""
    out = [None] * len(detections)
    for i, d in sorted(enumerate(detections), key=lambda p: -p[1]["score"]):  # sorted() is stable: file order on ties
        gts = [(j, a) for j, a in enumerate(annotations)
               if a["image_id"] == d["image_id"] and a["category_id"] == d["category_id"]]
        if matching == "netcal":
            best = max([iou(d["bbox"], a["bbox"]) for _, a in gts if not a.get("iscrowd", 0)], default=0.0)
            out[i] = (best >= iou_min, best if best >= iou_min else 0.0, False)
            continue
        best_j, best_iou = None, iou_min
        for j, a in gts:
            if a.get("iscrowd", 0) or a.get("_taken"):
                continue
            v = iou(d["bbox"], a["bbox"])
            if v >= best_iou:  # ">=": of equal IoUs the later one wins
                best_j, best_iou = j, v
        if best_j is not None:
            annotations[best_j]["_taken"] = True
            out[i] = (True, best_iou, False)
        else:
            crowd = any(a.get("iscrowd", 0) and iof(d["bbox"], a["bbox"]) >= iou_min for _, a in gts)
            out[i] = (False, 0.0, crowd)
    for a in annotations:
        a.pop("_taken", None)
    return out


def bin_of(score: float, n_bins: int) -> int:
    """The largest m with m / n_bins <= score (1.0 in the last bin)."""
    for m in range(n_bins - 1, -1, -1):
        if score >= m / n_bins:
            return m
    raise AssertionError(score)


def ece(pairs, n_bins) -> tuple[float, list[int]]:
    """ECE of (score, accuracy) pairs and the count per bin."""
    bins = [[] for _ in range(n_bins)]
    for s, a in pairs:
        bins[bin_of(s, n_bins)].append((s, a))
    n = sum(len(b) for b in bins)
    total = 0.0
    for b in bins:
        if b:
            total += len(b) / n * abs(sum(a for _, a in b) / len(b) - sum(s for s, _ in b) / len(b))
    return (total if n else float("nan")), [len(b) for b in bins]


def counted(annotations, detections, iou_min=0.5, matching="coco", min_score=0.05):
    """(score, correct, iou, category) of the detections the metrics count."""
    m = match(annotations, detections, iou_min, matching)
    return [(d["score"], c, v, d["category_id"]) for d, (c, v, ig) in zip(detections, m)
            if not ig and d["score"] >= min_score]


def d_ece(annotations, detections, n_bins=10, **kw) -> float:
    return ece([(s, 1.0 if c else 0.0) for s, c, _, _ in counted(annotations, detections, **kw)], n_bins)[0]


def laece(annotations, detections, n_bins=25, **kw) -> tuple[float, dict]:
    """(LaECE, {category: LaECE of the class}) over the classes with a counted detection."""
    rows = counted(annotations, detections, **kw)
    per = {c: ece([(s, v) for s, _, v, k in rows if k == c], n_bins)[0] for c in sorted({k for *_, k in rows})}
    return (sum(per.values()) / len(per) if per else float("nan")), per


EDGES = [0.0, 0.05, 0.1, 0.3, 0.4, 0.5, 0.7, 0.96, 1.0]
"""Scores on bin edges (of 10 and of 25 bins), the min-score edge, 0 and 1."""


def random_coco(seed: int, n_images=8, n_cats=4, crowd_rate=0.2):
    """(annotation dict, results list): objects, crowd regions, duplicates, wrong classes, scores on bin edges.

    Category ``n_cats`` has ground truth but no detection; category ``n_cats + 1`` neither.
    """
    rng = random.Random(seed)
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 150} for i in range(1, n_images + 1)]
    cats = [{"id": 10 * c, "name": f"c{c}"} for c in range(1, n_cats + 2)]
    anns, dets = [], []
    for im in images:
        for _ in range(rng.randint(0, 6)):
            cat = 10 * rng.randint(1, n_cats)
            box = [rng.uniform(0, 150), rng.uniform(0, 100), rng.uniform(5, 60), rng.uniform(5, 60)]
            crowd = rng.random() < crowd_rate
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": int(crowd)})
            if cat == 10 * n_cats:
                continue
            for _ in range(rng.randint(0, 3)):  # duplicates, some inside the crowd region
                j = [v + rng.uniform(-8, 8) for v in box[:2]] + [max(1.0, v * rng.uniform(0.5, 1.3)) for v in box[2:]]
                wrong = rng.random() < 0.2
                score = rng.choice(EDGES) if rng.random() < 0.3 else rng.random()
                dets.append({"image_id": im["id"], "category_id": 10 * rng.randint(1, n_cats - 1) if wrong else cat,
                             "bbox": j, "score": score})
        for _ in range(rng.randint(0, 3)):  # background detections
            dets.append({"image_id": im["id"], "category_id": 10 * rng.randint(1, n_cats - 1),
                         "bbox": [rng.uniform(0, 180), rng.uniform(0, 130), 15.0, 15.0], "score": rng.random()})
    return {"images": images, "categories": cats, "annotations": anns}, dets


def write_coco(folder, seed: int, **kw):
    """:func:`random_coco` written to ``folder/ann.json`` and ``folder/dets.json``; returns the two paths and data."""
    ann, dets = random_coco(seed, **kw)
    (folder / "ann.json").write_text(json.dumps(ann))
    (folder / "dets.json").write_text(json.dumps(dets))
    return folder / "ann.json", folder / "dets.json", ann, dets
