"""`drmm calibration`: calibration.json and figures against brute force, several detectors, post-hoc, bad input."""
import json

import pytest
from helpers import run_cli
from PIL import Image

import calibration_reference as ref


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 200


def test_one_detector_json_table_and_figures(tmp_path):
    ann_path, dets_path, ann, dets = ref.write_coco(tmp_path, seed=0)
    code, out, err = run_cli("calibration", "--ann", ann_path, "--detections", dets_path, "--out", tmp_path / "o",
                             "--laece-bins", 20, "--bins", 15)
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "calibration.json").read_text())
    kw = dict(iou_min=0.5, matching="coco", min_score=0.05)
    assert report["d_ece"] == pytest.approx(ref.d_ece(ann["annotations"], dets, 15, **kw), abs=1e-12)
    laece, per_class = ref.laece(ann["annotations"], dets, 20, **kw)
    assert report["laece"] == pytest.approx(laece, abs=1e-12) and 0 <= report["laece"] <= 1
    rows = ref.counted(ann["annotations"], dets, **kw)
    assert report["n"] == len(rows) and report["n_correct"] == sum(r[1] for r in rows)
    assert report["left_out"]["ignored_crowd"] == sum(g for *_, g in ref.match(ann["annotations"], dets))
    assert {int(k): v["laece"] for k, v in report["per_class"].items()} == pytest.approx(per_class)
    assert report["options"] == {"iou": 0.5, "min_score": 0.05, "bins": 15, "laece_bins": 20, "matching": "coco"}
    assert [b["count"] for b in report["bins"]["d_ece"]] == ref.ece([(r[0], r[1]) for r in rows], 15)[1]
    assert len(report["bins"]["laece_pooled"]) == 20 and set(report["bins"]["laece_per_class"]) == set(
        report["per_class"])
    for name in ("reliability_d_ece.png", "reliability_laece.png", "confidence_vs_accuracy.png"):
        _png(tmp_path / "o" / name)
    assert "D-ECE" in out and "LaECE" in out and "all (3 classes)" in out and "c1" in out


def test_netcal_matching_and_iou_option(tmp_path):
    ann_path, dets_path, ann, dets = ref.write_coco(tmp_path, seed=3)
    code, _, err = run_cli("calibration", "--ann", ann_path, "--detections", dets_path, "--out", tmp_path / "o",
                           "--matching", "netcal", "--iou", 0.6, "--min-score", 0.1)
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "calibration.json").read_text())
    kw = dict(iou_min=0.6, matching="netcal", min_score=0.1)
    assert report["d_ece"] == pytest.approx(ref.d_ece(ann["annotations"], dets, 10, **kw), abs=1e-12)
    assert report["laece"] == pytest.approx(ref.laece(ann["annotations"], dets, 25, **kw)[0], abs=1e-12)
    assert report["left_out"]["ignored_crowd"] == 0
    code, _, err = run_cli("calibration", "--ann", ann_path, "--detections", dets_path, "--out", tmp_path / "o",
                           "--matching", "voc")
    assert code == 2 and "--matching must be one of coco, netcal" in err


def test_several_detectors_in_one_figure(tmp_path):
    ann_path, dets_path, ann, dets = ref.write_coco(tmp_path, seed=4)
    other = [dict(d, score=d["score"] ** 2) for d in dets]  # a second, less confident detector
    (tmp_path / "other.json").write_text(json.dumps(other))
    code, out, err = run_cli("calibration", "--ann", ann_path, "--detections", dets_path, tmp_path / "other.json",
                             "--names", "D-RMM", "squared scores", "--out", tmp_path / "o")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "calibration.json").read_text())
    assert [d["name"] for d in report["detectors"]] == ["D-RMM", "squared scores"]
    for entry, detections in zip(report["detectors"], (dets, other)):
        rows = ref.counted(ann["annotations"], detections)
        curve = [v for b in entry["bins"]["d_ece"] if b["count"] for v in (b["mean_score"], b["accuracy"])]
        pairs = [(r[0], 1.0 if r[1] else 0.0) for r in rows]
        expected = []  # the curve: (mean score, precision) of each non-empty bin, by brute force
        for m in range(10):
            b = [p for p in pairs if ref.bin_of(p[0], 10) == m]
            if b:
                expected += [sum(s for s, _ in b) / len(b), sum(a for _, a in b) / len(b)]
        assert curve == pytest.approx(expected)
        assert entry["d_ece"] == pytest.approx(ref.d_ece(ann["annotations"], detections), abs=1e-12)
    _png(tmp_path / "o" / "confidence_vs_accuracy.png")
    for folder in ("D-RMM", "squared_scores"):
        _png(tmp_path / "o" / folder / "reliability_d_ece.png")
    assert "squared scores" in out
    code, _, err = run_cli("calibration", "--ann", ann_path, "--detections", dets_path, dets_path, "--out", tmp_path)
    assert code == 2 and "give --names" in err
    code, _, err = run_cli("calibration", "--ann", ann_path, "--detections", dets_path, "--names", "a", "b",
                           "--out", tmp_path)
    assert code == 2 and "--names gives 2 name(s) for 1" in err


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_fit_on_one_set_report_on_another(tmp_path, method):
    ann_path, dets_path, ann, dets = ref.write_coco(tmp_path, seed=5, n_images=40)
    # over-confident: every score pushed towards 1; fit on the first 20 images, report on the others
    sharp = [dict(d, score=d["score"] ** 0.2) for d in dets]
    (tmp_path / "fit.json").write_text(json.dumps([d for d in sharp if d["image_id"] <= 20]))
    (tmp_path / "eval.json").write_text(json.dumps([d for d in sharp if d["image_id"] > 20]))
    code, out, err = run_cli("calibration", "--ann", ann_path, "--detections", tmp_path / "eval.json",
                             "--fit", tmp_path / "fit.json", "--fit-ann", ann_path, "--method", method,
                             "--out", tmp_path / "o")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "calibration.json").read_text())
    post = report["posthoc"]
    assert post["method"] == method and post["n"] == report["n"] > 0 and post["n_fit"] > 0
    assert post["d_ece"] < report["d_ece"]  # the calibrator fixes most of the over-confidence
    evaluated = [d for d in sharp if d["image_id"] > 20]
    assert report["d_ece"] == pytest.approx(ref.d_ece(ann["annotations"], evaluated), abs=1e-12)
    _png(tmp_path / "o" / f"reliability_d_ece_{method}.png")
    assert f"after {method}" in out and "warning" not in out
    code, out, _ = run_cli("calibration", "--ann", ann_path, "--detections", tmp_path / "eval.json",
                           "--fit", tmp_path / "eval.json", "--method", method, "--out", tmp_path / "o2")
    assert code == 0 and "in both --fit and --detections" in out


def test_fit_option_errors(tmp_path):
    ann_path, dets_path, _, _ = ref.write_coco(tmp_path, seed=0)
    base = ["calibration", "--ann", ann_path, "--out", tmp_path / "o"]
    assert run_cli(*base, "--detections", dets_path, "--fit", dets_path, "--method", "beta")[2].endswith(
        "unknown calibration method 'beta'; choose from temperature, platt, isotonic\n")
    assert "single --detections" in run_cli(*base, "--detections", dets_path, dets_path, "--names", "a", "b",
                                            "--fit", dets_path)[2]
    assert "--fit-ann needs --fit" in run_cli(*base, "--detections", dets_path, "--fit-ann", ann_path)[2]


GOOD = {"image_id": 1, "category_id": 10, "bbox": [1, 2, 3, 4], "score": 0.5}


@pytest.mark.parametrize("bad, message, reason", [
    (dict(GOOD, image_id=999), "entry 1: image_id 999 is not an image of", "unknown_image"),
    (dict(GOOD, category_id=7), "entry 1: category_id 7 is not a category of", "unknown_category"),
    (dict(GOOD, bbox=[1, 2, -3, 4]), "entry 1: bbox [1, 2, -3, 4] is not [x, y, w, h]", "bad_box"),
    (dict(GOOD, bbox=[1, 2, float("nan"), 4]), "entry 1: bbox [1, 2, nan, 4]", "bad_box"),
    (dict(GOOD, score=1.5), "entry 1: score 1.5 is not in [0, 1]", "bad_score"),
    (dict(GOOD, score=-0.1), "entry 1: score -0.1 is not in [0, 1]", "bad_score"),
    (dict(GOOD, score=float("nan")), "entry 1: score nan is not in [0, 1]", "bad_score"),
])
def test_bad_entries_are_named_or_counted(tmp_path, bad, message, reason):
    ann_path, _, _, _ = ref.write_coco(tmp_path, seed=0)
    (tmp_path / "bad.json").write_text(json.dumps([GOOD, bad, GOOD]))  # json writes NaN as NaN, as Python reads it
    args = ["calibration", "--ann", ann_path, "--detections", tmp_path / "bad.json", "--out", tmp_path / "o"]
    code, _, err = run_cli(*args)
    assert code == 2 and f"{tmp_path / 'bad.json'}: {message}" in err and "--skip-invalid" in err
    code, _, err = run_cli(*args, "--skip-invalid")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "calibration.json").read_text())
    assert report["left_out"]["skipped_entries"][reason] == 1 and report["n"] == 2


@pytest.mark.parametrize("content, message", [
    ({"annotations": []}, "expected a JSON list of detections (COCO results format), got dict"),
    ([GOOD, [1, 2]], "entry 1 is a list, not an object"),
    ([GOOD, {"image_id": 1, "bbox": [0, 0, 1, 1]}], "entry 1 has no 'category_id', 'score'"),
    ([{**GOOD, "bbox": [0, 0, 1]}], "entry 0: bbox [0, 0, 1] is not a list of 4 numbers"),
    ([{**GOOD, "score": "high"}], "entry 0: score 'high' is not a number"),
    ("not json", "not valid JSON"),
])
def test_wrong_json_shape_is_an_error_even_with_skip_invalid(tmp_path, content, message):
    ann_path, _, _, _ = ref.write_coco(tmp_path, seed=0)
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    code, _, err = run_cli("calibration", "--ann", ann_path, "--detections", path, "--out", tmp_path / "o",
                           "--skip-invalid")
    assert code == 2 and str(path) in err and message in err and err.count("\n") == 1


def test_bad_annotation_file_and_missing_files(tmp_path):
    (tmp_path / "ann.json").write_text(json.dumps([1, 2]))
    (tmp_path / "dets.json").write_text("[]")
    code, _, err = run_cli("calibration", "--ann", tmp_path / "ann.json", "--detections", tmp_path / "dets.json",
                           "--out", tmp_path / "o")
    assert code == 2 and "not a COCO annotation file" in err
    code, _, err = run_cli("calibration", "--ann", tmp_path / "none.json", "--detections", tmp_path / "dets.json",
                           "--out", tmp_path / "o")
    assert code == 2 and "file not found" in err and "none.json" in err


def test_no_detection_counted_gives_null_metrics(tmp_path):
    ann_path, _, _, _ = ref.write_coco(tmp_path, seed=0)
    (tmp_path / "low.json").write_text(json.dumps([dict(GOOD, score=0.01)]))
    code, out, err = run_cli("calibration", "--ann", ann_path, "--detections", tmp_path / "low.json",
                             "--out", tmp_path / "o")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "calibration.json").read_text())
    assert report["d_ece"] is None and report["laece"] is None and report["n"] == 0
    assert report["left_out"]["below_min_score"] == 1
