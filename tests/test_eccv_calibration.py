"""LaECE_0, LaACE_0, LRP and LRP-optimal thresholds (Kuzucu, Oksuz et al., ECCV 2024): brute force, hand cases.

The brute force below is written from the definitions (docs/calibration.md, the
module doc of drmm.evaluation.eccv_calibration) with plain Python loops; its matching
is ``calibration_reference.match`` at IoU >= 0, and the matching itself is also
checked against pycocotools' COCOeval at ``iouThrs = [0]`` (what the authors' code runs).
"""
import contextlib
import io
import json

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

import calibration_reference as ref
from drmm.evaluation import detections_from_results, ground_truth_from_coco
from drmm.evaluation.eccv_calibration import (adaptive_bins, binned_error, eccv_calibration, eccv_targets,
                                              equal_width_bins, laace_0_class, laece_0_class, lrp, optimal_lrp)


# ----------------------------------------------------------------------------- brute force


def _bf_bin(s, n_bins):
    """Their bins: 0 is [0, 1/B], m is (m/B, (m+1)/B]."""
    for m in range(n_bins):
        if (m == 0 and s <= 1 / n_bins) or (m / n_bins < s <= (m + 1) / n_bins):
            return m
    raise AssertionError(s)


def _bf_laece(rows, n_bins):
    total = 0.0
    for m in range(n_bins):
        b = [(s, u) for s, _, u in rows if _bf_bin(s, n_bins) == m]
        if b:
            total += len(b) / len(rows) * abs(sum(u for _, u in b) / len(b) - sum(s for s, _ in b) / len(b))
    return total


def _bf_lrp(rows, n_gt, tau=0.0):
    tps = [u for _, tp, u in rows if tp]
    n_fp = sum(1 for _, tp, _ in rows if not tp)
    if not tps:
        return 1.0
    return (sum(1 - u for u in tps) / (1 - tau) + n_fp + n_gt - len(tps)) / (len(tps) + n_fp + n_gt - len(tps))


def _bf_olrp(rows, n_gt):
    """(oLRP, threshold): every distinct score tried from the highest, the first minimum kept."""
    if not any(tp for _, tp, _ in rows):
        return 1.0, None
    best = (2.0, None)
    for t in sorted({s for s, _, _ in rows}, reverse=True):
        v = _bf_lrp([r for r in rows if r[0] >= t], n_gt)
        if v < best[0]:
            best = (v, t)
    return best


def _bf_eccv(ann, dets, n_bins=25):
    """Every value of eccv_calibration, from the definitions."""
    n_gt = {}
    for a in ann["annotations"]:
        if not a.get("iscrowd", 0):
            n_gt[a["category_id"]] = n_gt.get(a["category_id"], 0) + 1
    outcome = ref.match(ann["annotations"], dets, iou_min=0.0)
    rows = {c: [(d["score"], tp, u) for d, (tp, u, ig) in zip(dets, outcome) if d["category_id"] == c and not ig]
            for c in n_gt}
    per = {}
    for c, r in rows.items():
        olrp, thr = _bf_olrp(r, n_gt[c])
        kept = [x for x in r if thr is None or x[0] >= thr]
        per[c] = {"olrp": olrp, "thr": thr, "n": len(r),
                  "laece": _bf_laece(r, n_bins) if r else None,
                  "laace": sum(abs(u - s) for s, _, u in r) / len(r) if r else None,
                  "laece_thr": _bf_laece(kept, n_bins) if kept else None,
                  "laace_thr": sum(abs(u - s) for s, _, u in kept) / len(kept) if kept else None}

    def mean(key):
        v = [p[key] for p in per.values() if p[key] is not None]
        return sum(v) / len(v)

    return {"laece_0": mean("laece"), "laace_0": mean("laace"), "lrp": mean("olrp"), "per_class": per,
            "laece_thr": mean("laece_thr"), "laace_thr": mean("laace_thr")}


def _eccv(ann, dets, n_bins=25):
    gt = ground_truth_from_coco(ann)
    return eccv_calibration(gt, detections_from_results(dets, gt), n_bins)


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_matches_brute_force_on_random_coco_files(seed):
    """Crowd regions, duplicates, wrong classes, classes without detections or ground truth, scores on bin edges."""
    ann, dets = ref.random_coco(seed, crowd_rate=0.3)
    got, want = _eccv(ann, dets), _bf_eccv(ann, dets)
    assert got.laece_0 == pytest.approx(want["laece_0"], abs=1e-12)
    assert got.laace_0 == pytest.approx(want["laace_0"], abs=1e-12)
    assert got.lrp == pytest.approx(want["lrp"], abs=1e-12)
    assert got.laece_0_at_lrp_thresholds == pytest.approx(want["laece_thr"], abs=1e-12)
    assert got.laace_0_at_lrp_thresholds == pytest.approx(want["laace_thr"], abs=1e-12)
    assert set(got.per_class) == set(want["per_class"])
    for c, w in want["per_class"].items():
        g = got.per_class[c]
        assert g["n"] == w["n"] and g["olrp"] == pytest.approx(w["olrp"], abs=1e-12)
        assert (np.isnan(g["lrp_threshold"]) if w["thr"] is None else g["lrp_threshold"] == w["thr"])
    assert 0 < got.laece_0 < 1 and 0 < got.lrp < 1 and got.laece_0 <= got.laace_0 + 1e-12  # |mean| <= mean |.|
    assert any(np.isnan(g["lrp_threshold"]) or g["lrp_threshold"] > min(d["score"] for d in dets)
               for g in got.per_class.values())


def _cocoeval_at_zero(ann, dets):
    """Per detection: (true positive, ignored) as pycocotools' COCOeval decides at iouThrs = [0.0]."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ann
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), iouType="bbox")
        ev.params.iouThrs = np.array([0.0])
        ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [[0, 1e10]], ["all"], [10_000]
        ev.evaluate()
    out = {}
    for e in ev.evalImgs:
        if e is not None:
            for k, i in enumerate(e["dtIds"]):
                ig = bool(e["dtIgnore"][0, k])
                out[i] = (bool(e["dtMatches"][0, k] > 0) and not ig, ig)
    return [out[i + 1] for i in range(len(dets))]


@pytest.mark.parametrize("seed", [0, 3])
def test_matching_at_tau_0_is_cocoevals(seed):
    """At IoU >= 0 a detection takes any remaining ground truth (IoU 0 too), as the authors' COCOeval does."""
    ann, dets = ref.random_coco(seed, crowd_rate=0.3)
    dets = [dict(d, score=min(d["score"], 0.99) + 1e-9 * i) for i, d in enumerate(dets)]  # no ties
    gt = ground_truth_from_coco(ann)
    t = eccv_targets(gt, detections_from_results(dets, gt))
    expected = _cocoeval_at_zero(ann, dets)
    keep = [not ig and d["category_id"] in t.n_gt for d, (_, ig) in zip(dets, expected)]
    assert t.tp.tolist() == [tp for (tp, _), k in zip(expected, keep) if k]
    assert any(ig for _, ig in expected) and not all(keep)


# ----------------------------------------------------------------------------- hand cases


def _coco(anns, dets, cats=(1, 2)):
    return {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "categories": [{"id": c, "name": f"c{c}"} for c in cats],
            "annotations": [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "iscrowd": cr}
                            for i, (im, c, b, cr) in enumerate(anns)]}, [
        {"image_id": im, "category_id": c, "bbox": b, "score": s} for im, c, b, s in dets]


def test_perfect_calibration_is_zero():
    """Each score equals its IoU (0.5, 0.8): 0, not NaN (their code drops a class whose error is exactly 0)."""
    ann, dets = _coco([(1, 1, [0, 0, 10, 10], 0), (1, 2, [0, 0, 10, 10], 0)],
                      [(1, 1, [0, 0, 10, 5], 0.5), (1, 2, [0, 0, 10, 8], 0.8)])
    r = _eccv(ann, dets)
    assert r.laece_0 == 0.0 and r.laace_0 == 0.0 and r.laece_0_at_lrp_thresholds == 0.0


def test_one_false_positive():
    """Class 1 has one object in image 1, one detection at s = 0.3 in image 2 (nothing to overlap): a false positive.

    Its target is 0, it is alone in its bin: LaECE_0 = 1/1 * |0 - 0.3| = 0.3, LaACE_0 = |0 - 0.3| = 0.3.
    LRP: TP 0, FP 1, FN 1 -> (0 + 1 + 1) / (0 + 1 + 1) = 1 (no true positive: 1, no threshold).
    """
    ann, dets = _coco([(1, 1, [0, 0, 10, 10], 0)], [(2, 1, [0, 0, 10, 10], 0.3)])
    r = _eccv(ann, dets)
    assert r.laece_0 == pytest.approx(0.3) and r.laace_0 == pytest.approx(0.3) and r.lrp == 1.0
    assert np.isnan(r.per_class[1]["lrp_threshold"]) and r.thresholds() == {"1": None}
    # the same detection where class 1 has no ground truth at all: the class is left out (their prepare_input)
    ann, dets = _coco([], [(2, 1, [0, 0, 10, 10], 0.3)])
    r = _eccv(ann, dets)
    assert np.isnan(r.laece_0) and np.isnan(r.laace_0) and r.per_class == {} and r.n == 0


def test_zero_overlap_takes_the_object_at_tau_0():
    """In the object's image, a box overlapping nothing is matched with IoU 0 (their IoU >= 0): target 0 all the same.

    LRP: TP 1 with (1 - 0) / (1 - 0) = 1, FP 0, FN 0 -> 1 / 1 = 1.
    """
    ann, dets = _coco([(1, 1, [0, 0, 10, 10], 0)], [(1, 1, [50, 50, 10, 10], 0.3)])
    gt = ground_truth_from_coco(ann)
    t = eccv_targets(gt, detections_from_results(dets, gt))
    assert t.tp.tolist() == [True] and t.iou.tolist() == [0.0]
    r = _eccv(ann, dets)
    assert r.laece_0 == pytest.approx(0.3) and r.lrp == 1.0 and r.per_class[1]["lrp_threshold"] == 0.3


@pytest.mark.parametrize("s, box, u", [(0.3, [0, 0, 10, 5], 0.5), (0.9, [0, 0, 10, 8], 0.8), (0.5, [0, 0, 10, 5], 0.5)])
def test_one_true_positive_gives_score_minus_iou(s, box, u):
    """One TP with IoU u at score s: one bin of one detection, so LaECE_0 = LaACE_0 = |s - u|."""
    ann, dets = _coco([(1, 1, [0, 0, 10, 10], 0)], [(1, 1, box, s)])
    r = _eccv(ann, dets)
    assert r.laece_0 == pytest.approx(abs(s - u)) and r.laace_0 == pytest.approx(abs(s - u))
    assert r.lrp == pytest.approx(1 - u)  # (1 - u) / (1 - 0) + 0 + 0 over 1


def test_lrp_and_optimal_threshold_by_hand():
    """Two objects; detections (score, TP?, IoU): (0.9, y, 0.8), (0.7, n), (0.4, y, 0.2); tau = 0.

    Threshold 0.9: TP 1, FP 0, FN 1: (0.2 + 0 + 1) / 2 = 0.6
    Threshold 0.7: TP 1, FP 1, FN 1: (0.2 + 1 + 1) / 3 = 0.7333
    Threshold 0.4: TP 2, FP 1, FN 0: (0.2 + 0.8 + 1) / 3 = 0.6667
    oLRP 0.6 at 0.9 (components: loc 0.2, FP 0, FN 0.5); LRP of all = 0.6667.
    """
    scores, tp, iou = np.array([0.4, 0.9, 0.7]), np.array([True, True, False]), np.array([0.2, 0.8, 0.0])
    r = optimal_lrp(scores, tp, iou, n_gt=2)
    assert r.olrp == pytest.approx(0.6) and r.threshold == 0.9
    assert (r.loc, r.fp, r.fn) == pytest.approx((0.2, 0.0, 0.5))
    assert lrp(tp, iou, 2) == pytest.approx(2 / 3)
    # tau = 0.5: TPs of IoU 0.8 and 0.6, one FP, three objects: (0.2 + 0.4) / 0.5 + 1 + 1 over 2 + 1 + 1 = 0.8
    assert lrp(np.array([True, True, False]), np.array([0.8, 0.6, 0.0]), 3, tau=0.5) == pytest.approx(0.8)
    # the same detections from files: the 0.7 one in image 2, where class 1 has no object
    ann, dets = _coco([(1, 1, [0, 0, 10, 10], 0), (1, 1, [100, 0, 10, 10], 0)],
                      [(1, 1, [0, 0, 10, 8], 0.9), (2, 1, [0, 0, 10, 10], 0.7), (1, 1, [100, 0, 10, 2], 0.4)])
    e = _eccv(ann, dets)
    assert e.lrp == pytest.approx(0.6) and e.thresholds() == {"1": 0.9}
    # at the threshold only the 0.9 detection is left: |0.9 - 0.8| = 0.1
    assert e.laece_0_at_lrp_thresholds == pytest.approx(0.1) and e.laace_0_at_lrp_thresholds == pytest.approx(0.1)


def test_optimal_threshold_keeps_ties_together():
    """(0.8, FP), (0.5, TP with IoU 1), (0.5, FP); one object.

    Threshold 0.8: (0 + 1 + 1) / 2 = 1. Threshold 0.5 keeps both 0.5 detections: (0 + 2 + 0) / 3 = 2/3.
    Cutting between the equal scores (their code can) would give (0 + 1 + 0) / 2 = 0.5, which no threshold gives.
    """
    r = optimal_lrp(np.array([0.8, 0.5, 0.5]), np.array([False, True, False]), np.array([0, 1.0, 0]), n_gt=1)
    assert r.olrp == pytest.approx(2 / 3) and r.threshold == 0.5


def test_adaptive_bins_have_equal_counts():
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05])
    idx = adaptive_bins(scores, 5)
    assert np.bincount(idx).tolist() == [2, 2, 2, 2, 2]
    assert idx.tolist() == [4, 0, 2, 1, 3, 1, 4, 2, 3, 0]  # by rank: 0.05, 0.1 | 0.2, 0.3 | 0.4, 0.5 | ...
    assert np.bincount(adaptive_bins(scores[:7], 3)).tolist() == [3, 2, 2]
    assert adaptive_bins(scores[:4]).tolist() == [3, 0, 2, 1]  # default: one detection per bin
    # scores 0.1, 0.2 | 0.8, 0.9 with targets 0, 0.4 | 1, 0.6: 1/2 |0.2 - 0.15| + 1/2 |0.8 - 0.85| = 0.05
    s, u = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.0, 0.4, 1.0, 0.6])
    assert laace_0_class(s, u, 2) == pytest.approx(0.05)
    assert laace_0_class(s, u) == pytest.approx((0.1 + 0.2 + 0.2 + 0.3) / 4)  # one per bin: mean |u - s|
    # equal-width: no two share a bin of 25 -> mean |u - s|; one bin: |mean u - mean s| = |0.5 - 0.5|
    assert laece_0_class(s, u, 25) == pytest.approx(0.2) and laece_0_class(s, u, 1) == pytest.approx(0.0, abs=1e-15)


def test_equal_width_bins_are_right_closed():
    """Their bins: 0 -> [0, 0.04], 0.04 stays in bin 0, 0.48 in (0.44, 0.48], 1 in the last."""
    s = np.array([0.0, 0.04, 0.0400001, 0.48, 0.5, 1.0])
    assert equal_width_bins(s, 25).tolist() == [0, 0, 1, 11, 12, 24]
    assert [_bf_bin(v, 25) for v in s] == [0, 0, 1, 11, 12, 24]
    err, conf, acc, count = binned_error(s, s, equal_width_bins(s, 25), 25)
    assert err == 0.0 and count.sum() == 6 and np.isnan(conf[5]) and acc[24] == 1.0


# ----------------------------------------------------------------------------- the command


def test_calibration_command_writes_eccv_keys_table_and_figure(tmp_path):
    ann_path, dets_path, ann, dets = ref.write_coco(tmp_path, seed=0)
    code, out, err = run_cli("calibration", "--ann", ann_path, "--detections", dets_path, "--out", tmp_path / "o")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "calibration.json").read_text())
    want = _bf_eccv(ann, dets)
    assert report["laece_0"] == pytest.approx(want["laece_0"], abs=1e-12)
    assert report["laace_0"] == pytest.approx(want["laace_0"], abs=1e-12)
    assert report["lrp"] == pytest.approx(want["lrp"], abs=1e-12)
    assert report["lrp_thresholds"] == {str(c): w["thr"] for c, w in want["per_class"].items()}
    assert report["eccv"]["tau"] == 0.0 and set(report["eccv"]["per_class"]) == set(report["lrp_thresholds"])
    assert len(report["eccv"]["bins"]["laace_0_pooled"]) == 25
    assert sum(b["count"] for b in report["eccv"]["bins"]["laace_0_pooled"]) == report["eccv"]["n"]
    with Image.open(tmp_path / "o" / "reliability_laace_0.png") as im:
        assert im.format == "PNG" and min(im.size) > 200
    assert "LaECE_0" in out and "LaACE_0" in out and "oLRP" in out
