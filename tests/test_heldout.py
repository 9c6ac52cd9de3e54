"""The held-out comparison of issue 26 item 3 (drmm.evaluation.heldout) on a hand-made detector: one box per
image at score 0.9, right on half the images, so every number below is worked out by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from drmm.evaluation.cocofiles import detections_from_results, load_ground_truth
from drmm.evaluation.heldout import heldout_calibration


@pytest.fixture()
def overconfident(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(1, 41)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}
            for i in range(1, 41)]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "box"}]}))
    # image i: the detection covers the ground truth when (i - 1) // 2 is even (images 1, 2, 5, 6, ...), else it
    # lies elsewhere (IoU 0): half of each half right (the halves are the odd and the even image ids)
    results = [{"image_id": i, "category_id": 1, "score": 0.9,
                "bbox": [10, 10, 20, 20] if (i - 1) // 2 % 2 == 0 else [60, 60, 20, 20]} for i in range(1, 41)]
    gt = load_ground_truth(path)
    return gt, detections_from_results(results, gt), COCO(str(path))


def test_raw_and_calibrated_errors_by_hand(overconfident):
    gt, dets, coco = overconfident
    r = heldout_calibration(gt, dets, coco)
    assert r["n_fit"] == r["n_report"] == 20
    raw = r["as_trained"]
    # one bin holds every detection: |accuracy 0.5 - score 0.9| = 0.4, for D-ECE (correct at IoU 0.5) and for
    # LaECE_0 / LaACE_0 (target IoU: 1 on the right images, 0 on the others)
    assert raw["d_ece"] == pytest.approx(0.4) and raw["laece_0"] == pytest.approx(0.4)
    # LaACE_0 (one detection per bin): the mean |IoU - score| = (10 x 0.1 + 10 x 0.9) / 20
    assert raw["laace_0"] == pytest.approx(0.5)
    # oLRP against the measured half's 20 ground truths only (not the file's 40): at IoU >= 0 every detection
    # takes its image's ground truth, 10 with IoU 1 and 10 with IoU 0, so 20 TP, no FP, no FN:
    # (sum (1 - IoU) + FP + FN) / (TP + FP + FN) = 10 / 20 (with the other half's 20 as misses: 30 / 40)
    assert raw["lrp"] == pytest.approx(10 / 20)
    # AP, the same at every IoU threshold (IoU is 1 or 0): equal scores keep image order (2, 4, 6, ...: right,
    # wrong, right, ...), so the j-th true positive comes at rank 2j - 1 with precision j / (2j - 1) and recall
    # j / 20; COCO's interpolated precision at recall r <= 0.5 is that of the first j with j / 20 >= r, 0 above
    # (COCO's 101 recall thresholds, np.linspace(0, 1, 101), sit a hair off some multiples of 0.05: compare as it does)
    hand = sum(next((j / (2 * j - 1) for j in range(1, 11) if j / 20 >= r), 0.0) for r in np.linspace(0, 1, 101)) / 101
    assert raw["AP"] == pytest.approx(hand, abs=1e-9)
    for c in r["candidates"]:  # every map sends 0.9 to (about) 0.5, the fit half's rate; one score: AP the same
        # (temperature reaches 0.5 only as T -> inf: the optimiser stops near T = 400, s = 0.5013)
        assert c["d_ece"] == pytest.approx(0.0, abs=5e-3) and c["laece_0"] == pytest.approx(0.0, abs=5e-3), c
        assert c["AP"] == pytest.approx(raw["AP"], abs=1e-12)
    assert r["best"]["iou"]["target"] == "iou" and r["best"]["correct"]["target"] == "correct"
    assert r["best"]["iou"]["laece_0"] == min(c["laece_0"] for c in r["candidates"] if c["target"] == "iou")
    # the paper's protocol: at IoU >= 0 each class's LRP-optimal threshold on the fit half keeps every detection
    # (one score), so the thresholded values are the plain ones
    assert raw["laece_0_thr"] == pytest.approx(raw["laece_0"]) and raw["laace_0_thr"] == pytest.approx(0.5)


def test_none_is_best_when_no_calibrator_helps(overconfident):
    """Scores that are right already (0.5 on a detector right half the time): nothing beats them."""
    gt, dets, coco = overconfident
    from dataclasses import replace
    r = heldout_calibration(gt, replace(dets, scores=np.full(len(dets), 0.5)), coco)
    assert r["as_trained"]["d_ece"] == pytest.approx(0.0)
    assert r["best"]["correct"]["method"] == "none" and r["best"]["correct"]["d_ece"] == r["as_trained"]["d_ece"]


def test_the_maps_are_fitted_on_the_other_half(overconfident):
    gt, dets, coco = overconfident
    # the fit half (even positions of the sorted ids: images 1, 3, 5, ...) all right: its maps send 0.9 up,
    # while the measured half (2, 4, 6, ...) stays half right
    right = {i for i in range(1, 41, 2)} | {i for i in range(2, 41, 2) if (i - 1) // 2 % 2 == 0}
    results = [{"image_id": i, "category_id": 1, "score": 0.9,
                "bbox": [10, 10, 20, 20] if i in right else [60, 60, 20, 20]} for i in range(1, 41)]
    r = heldout_calibration(gt, detections_from_results(results, gt), coco)
    iso = next(c for c in r["candidates"] if c["method"] == "isotonic" and c["target"] == "correct"
               and not c["per_class"])
    assert iso["params"]["y"] == [1.0]  # fitted where every detection is right
    assert iso["d_ece"] == pytest.approx(0.5)  # measured where half are: |0.5 - 1|
