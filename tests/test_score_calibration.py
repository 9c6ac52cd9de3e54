"""Calibrators that travel with the model (issue 26 item 2): the file, the torch module, the commands.

The reference for the torch module is the numpy ``Calibrator`` of ``posthoc.py`` (what
``drmm calibration`` reports with); the applied map differs from it by the tie-break
term only (at most ``TIE`` = 1e-6).
"""
from __future__ import annotations

import json

import calibration_reference as ref
import numpy as np
import pytest
import torch
from helpers import run_cli, tiny_config
from PIL import Image

from drmm import DRMM, build_detector
from drmm.checkpoints import atomic_save, detector_from_checkpoint, make_checkpoint
from drmm.data import CocoDetection, generate_synthetic
from drmm.data.synthetic import CLASS_NAMES
from drmm.evaluation import METRIC_NAMES, run_inference, score_detections
from drmm.evaluation.calibration_summary import summarize
from drmm.evaluation.posthoc import METHODS as FIT_METHODS
from drmm.evaluation.posthoc import ClassCalibrators, fit_calibrators
from drmm.models.score_calibration import (METHODS, TIE, ScoreCalibration, check_calibrator_classes,
                                           read_calibrator, set_score_calibration)

CLASSES = {3: "cat", 7: "dog", 11: "owl", 13: "eel"}  # eel: too few detections for its own map


def _fit_data(seed: int = 0, n: int = 900):
    """Scores, correctness and category ids: each class miscalibrated its own way; class 13 has 5 detections."""
    rng = np.random.default_rng(seed)
    ids = rng.choice([3, 7, 11], n)
    ids[:5] = 13
    s = rng.random(n)
    power = np.select([ids == 3, ids == 7], [0.5, 2.0], 1.0)
    return s, rng.random(n) < s ** power, ids


def _query(seed: int = 1):
    """Float32 scores over [0, 1] with edges, extremes and knots-adjacent values, and random labels 0..3."""
    rng = np.random.default_rng(seed)
    s = np.r_[rng.random(300), 0.0, 1.0, 1e-9, 1e-7, 1 - 1e-8, 0.05, 0.5].astype(np.float32)
    return s, rng.integers(0, 4, len(s))


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_module_matches_the_numpy_calibrator(method, per_class):
    scores, correct, ids = _fit_data()
    cal = fit_calibrators(method, scores, correct, ids, CLASSES if per_class else None)
    cat_ids = list(CLASSES)
    module = ScoreCalibration(cal.to_spec(), cat_ids)
    s, labels = _query()
    got = module(torch.from_numpy(s)[None], torch.from_numpy(labels)[None])[0]
    assert got.dtype == torch.float64
    expected = cal(s.astype(np.float64), np.asarray(cat_ids)[labels])
    np.testing.assert_allclose(got.numpy(), expected, atol=1.5 * TIE, rtol=0)
    if per_class:  # the classes really have their own maps, and eel keeps the all-classes one
        assert set(cal.fallbacks()) == {13} and not np.allclose(expected, cal.overall(s.astype(np.float64)))
        eel = labels == 3
        np.testing.assert_allclose(got.numpy()[eel], cal.overall(s[eel].astype(np.float64)), atol=1.5 * TIE, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_the_applied_map_is_strictly_increasing_at_float32_resolution(method):
    """Adjacent float32 scores (isotonic steps, clipped logits, saturation) stay apart and in order: AP cannot move."""
    scores, correct, ids = _fit_data()
    module = ScoreCalibration(fit_calibrators(method, scores, correct, ids, CLASSES).to_spec(), list(CLASSES))
    base = np.array([1e-9, 1e-6, 1e-3, 0.05, 0.2, 0.5, 0.7, 0.9, 0.999, 1 - 1e-7], dtype=np.float32)
    s = np.unique(np.r_[base, np.nextafter(base, np.float32(1)), np.nextafter(base, np.float32(0)),
                        np.linspace(0, 1, 2001, dtype=np.float32), 1.0].astype(np.float32))
    for label in range(len(CLASSES)):
        out = module(torch.from_numpy(s)[None], torch.full((1, len(s)), label))[0].numpy()
        assert np.all(np.diff(out) > 0), f"class {label}: ties or inversions at {s[1:][np.diff(out) <= 0][:5]}"
        assert out.min() >= 0 and out.max() <= 1


def test_methods_agree_with_the_fitting_code():
    assert tuple(METHODS) == tuple(FIT_METHODS)


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_save_and_read_round_trip(tmp_path, method, per_class):
    scores, correct, ids = _fit_data(seed=2)
    cal = fit_calibrators(method, scores, correct, ids, CLASSES if per_class else None)
    path = cal.save(tmp_path / "cal.json", {"detections": "fit.json"})
    raw = json.loads(path.read_text())
    assert raw["method"] == method and raw["per_class"] is per_class and raw["version"] == 1
    assert raw["params"] == cal.overall.params and raw["fit"] == {"detections": "fit.json"}
    if per_class:
        assert list(raw["classes"]) == ["3", "7", "11", "13"] and raw["classes"]["7"]["name"] == "dog"
        assert raw["classes"]["7"]["params"] == cal.classes[7]["calibrator"].params
        assert "params" not in raw["classes"]["13"] and "5 detections" in raw["classes"]["13"]["fallback"]
    spec = read_calibrator(path)
    assert spec == cal.to_spec({"detections": "fit.json"})
    back = ClassCalibrators.from_spec(spec)
    s, labels = _query()
    cats = np.asarray(list(CLASSES))[labels]
    np.testing.assert_array_equal(back(s, cats), cal(s, cats))


def _good(tmp_path):
    scores, correct, ids = _fit_data()
    return fit_calibrators("isotonic", scores, correct, ids, CLASSES).to_spec()


@pytest.mark.parametrize("edit, message", [
    (lambda d: "{not json", "invalid JSON"),
    (lambda d: [1, 2], "expected a JSON object"),
    (lambda d: {**d, "method": "beta"}, "unknown method 'beta'"),
    (lambda d: {**d, "format": "other"}, "'format' is 'other'"),
    (lambda d: {**d, "version": 9}, "version 9 is not 1"),
    (lambda d: {k: v for k, v in d.items() if k != "params"}, "params must be an object with x, y"),
    (lambda d: {**d, "params": {"x": [0.1, 0.5]}}, "isotonic params lack y"),
    (lambda d: {**d, "params": {"x": [0.5, 0.1], "y": [0.1, 0.2]}}, "x must be strictly increasing"),
    (lambda d: {**d, "params": {"x": [0.1, 0.5], "y": [0.1, "a"]}}, "y[1] must be a finite number"),
    (lambda d: {**d, "classes": {"3": {"name": "cat"}}}, "classes['3'] has neither 'params' nor 'fallback'"),
    (lambda d: {**d, "method": "platt", "per_class": False, "params": {"a": -1.0, "b": 0.0}}, "reverse"),
    (lambda d: {**d, "method": "temperature", "per_class": False, "params": {"temperature": 0}}, "must be > 0"),
])
def test_bad_files_are_errors_naming_the_file(tmp_path, edit, message):
    path = tmp_path / "broken_cal.json"
    content = edit(_good(tmp_path))
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError) as e:
        read_calibrator(path)
    assert str(path) in str(e.value) and message in str(e.value) and "drmm calibrate" in str(e.value)


def test_classes_must_be_the_models(tmp_path):
    spec = _good(tmp_path)
    check_calibrator_classes(spec, list(CLASSES.values()), list(CLASSES), "cal.json")
    with pytest.raises(ValueError, match=r"cal.json: per-class calibrator for category ids \[3, 7, 11, 13\], but "
                                         r"m.pt has \[1, 2, 3, 4\]"):
        check_calibrator_classes(spec, list(CLASSES.values()), [1, 2, 3, 4], "cal.json", "m.pt")
    with pytest.raises(ValueError, match="class names differ from the model's .7: 'dog' vs 'wolf'"):
        check_calibrator_classes(spec, ["cat", "wolf", "owl", "eel"], list(CLASSES), "cal.json")
    one_map = fit_calibrators("platt", *_fit_data()[:2])
    check_calibrator_classes(one_map.to_spec(), ["x"], [1], "cal.json")  # one map fits any model
    with pytest.raises(FileNotFoundError, match="calibrator file not found: .*nothere.json"):
        read_calibrator(tmp_path / "nothere.json")


def test_calibration_command_saves_a_per_class_calibrator(tmp_path):
    ann_path, dets_path, ann, dets = ref.write_coco(tmp_path, seed=5, n_images=40)
    sharp = [dict(d, score=d["score"] ** 0.2) for d in dets]
    (tmp_path / "fit.json").write_text(json.dumps([d for d in sharp if d["image_id"] <= 20]))
    (tmp_path / "eval.json").write_text(json.dumps([d for d in sharp if d["image_id"] > 20]))
    base = ["calibration", "--ann", ann_path, "--detections", tmp_path / "eval.json", "--out", tmp_path / "o"]
    code, out, err = run_cli(*base, "--fit", tmp_path / "fit.json", "--method", "isotonic", "--per-class",
                             "--save", tmp_path / "cal.json")
    assert code == 0, err
    spec = read_calibrator(tmp_path / "cal.json")
    names = {int(c["id"]): c["name"] for c in ann["categories"]}
    assert spec["per_class"] and {int(k): v["name"] for k, v in spec["classes"].items()} == names
    assert "saved the isotonic calibrator" in out and str(tmp_path / "cal.json") in out
    for c, entry in spec["classes"].items():  # every class that keeps the all-classes map is named on the console
        assert ("fallback" in entry) == (f"class {c} ({entry['name']}): " in out)
    assert spec["fit"]["detections"] == str(tmp_path / "fit.json") and spec["fit"]["iou"] == 0.5
    code, _, err = run_cli(*base, "--save", tmp_path / "c2.json")
    assert code == 2 and "--save and --per-class need --fit" in err


# ---- the calibrator in the model: drmm calibrate, predict (torch and ONNX), eval, DRMM, AP


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model, the shapes dataset (val: fitted on; train: never) and `drmm calibrate` on val."""
    root = tmp_path_factory.mktemp("calib")
    generate_synthetic(root / "data", 3, 12, seed=0, image_size=64, progress=False)
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=5)
    raw = root / "raw.pt"
    atomic_save(make_checkpoint(build_detector(cfg), cfg.to_dict(), CLASS_NAMES, [1, 2, 3, 4, 5]), raw)
    code, out, err = run_cli("calibrate", "--weights", raw, "--data", root / "data", "--method", "isotonic",
                             "--per-class", "--out", root / "cal.pt", "--workers", 0)
    assert code == 0, err
    return {"root": root, "raw": raw, "cal": root / "cal.pt", "json": root / "cal.calibrator.json", "out": out,
            "images": root / "data" / "train"}


def test_calibrate_writes_a_checkpoint_that_carries_the_calibrator(run):
    ckpt = torch.load(run["cal"], map_location="cpu", weights_only=True)
    spec = read_calibrator(run["json"])
    assert ckpt["calibrator"] == spec and spec["method"] == "isotonic" and spec["per_class"]
    assert {int(k): v["name"] for k, v in spec["classes"].items()} == dict(zip(range(1, 6), CLASS_NAMES))
    assert spec["fit"]["checkpoint"] == str(run["raw"]) and spec["fit"]["images"] == 12
    raw = torch.load(run["raw"], map_location="cpu", weights_only=True)
    assert all(torch.equal(raw["model"][k], ckpt["model"][k]) for k in raw["model"])
    out = run["out"]
    assert "in-sample" in out and "raw " in out and "isotonic " in out and f"wrote {run['cal']}" in out
    for c, entry in spec["classes"].items():
        assert ("fallback" in entry) == (f"class {c} ({entry['name']}): " in out)
    code, _, err = run_cli("calibrate", "--weights", run["raw"], "--data", run["root"] / "data", "--method", "beta",
                           "--out", run["root"] / "x.pt")
    assert code == 2 and "unknown calibration method 'beta'" in err


def _predicted(folder):
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def test_predict_onnx_and_the_file_give_the_same_calibrated_scores(run, raw_detections, tmp_path):
    """Fitted on val, applied to train images: drmm predict, --calibrator FILE, ONNX and numpy agree; --raw-scores."""
    pytest.importorskip("onnxruntime", reason="pip install 'drmm[export]'")
    from drmm.onnx_predict import OnnxDetector

    out = {}
    for name, args in {"cal": ["--weights", run["cal"]], "file": ["--weights", run["raw"], "--calibrator", run["json"]],
                       "undo": ["--weights", run["cal"], "--raw-scores"]}.items():
        code, printed, err = run_cli("predict", run["images"], *args, "--out", tmp_path / name, "--threshold", 0)
        assert code == 0, err
        assert ("scores: calibrated (isotonic, per class" in printed) == (name in ("cal", "file"))
        out[name] = _predicted(tmp_path / name)
    spec = read_calibrator(run["json"])
    reference = ClassCalibrators.from_spec(spec)
    # ONNX with Platt: isotonic steps fitted on 12 images rise up to ~400x faster than the score, so the
    # ~1e-7 float differences of two runtimes' raw scores would show there (drmm export's own check covers it)
    dataset, dets, ids = raw_detections
    c = score_detections(dataset.coco, dets, ids, [int(i) for i in dataset.cat_ids])[1].counted
    platt = fit_calibrators("platt", c.scores, c.correct, c.labels, dict(enumerate(CLASS_NAMES, 1)),
                            min_detections=10).save(tmp_path / "platt.calibrator.json")
    code, printed, err = run_cli("export", "--weights", run["raw"], "--calibrator", platt, "--out",
                                 tmp_path / "cal.onnx")
    assert code == 0 and "scores: calibrated (platt, per class" in printed, err
    detector = OnnxDetector(tmp_path / "cal.onnx")
    assert detector.calibrator == read_calibrator(platt)
    torch_platt = DRMM.from_checkpoint(run["raw"], device="cpu", calibrator=platt)
    torch_cal = DRMM.from_checkpoint(run["cal"], device="cpu")
    torch_raw = DRMM.from_checkpoint(run["raw"], device="cpu")
    for stem, cal in out["cal"].items():  # the JSON files round scores to 4 decimals: full values from DRMM
        file, undo = out["file"][stem], out["undo"][stem]
        assert file == cal and cal["labels"] == undo["labels"] and cal["boxes"] == undo["boxes"]
        mine, plain = torch_cal.predict(cal["image"])[0], torch_raw.predict(cal["image"])[0]
        np.testing.assert_allclose(cal["scores"], mine.scores, atol=5e-5, rtol=0)
        np.testing.assert_allclose(undo["scores"], plain.scores, atol=5e-5, rtol=0)  # --raw-scores: the model's
        np.testing.assert_allclose(mine.scores, reference(plain.scores, plain.category_ids), atol=1.5 * TIE, rtol=0)
        assert not np.allclose(mine.scores, plain.scores, atol=1e-3)
        image = np.asarray(Image.open(cal["image"]).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
        _, scores, labels = detector(image)
        theirs = torch_platt.predict(cal["image"])[0]
        assert labels.tolist() == theirs.category_ids.tolist() == mine.category_ids.tolist()
        np.testing.assert_allclose(scores, theirs.scores, atol=1e-5, rtol=0)
        assert not np.allclose(theirs.scores, plain.scores, atol=1e-3)
    code, _, err = run_cli("predict", run["images"], "--onnx", tmp_path / "cal.onnx", "--raw-scores", "--out",
                           tmp_path / "o")
    assert code == 2 and "export it with drmm export --raw-scores" in err
    code, _, err = run_cli("predict", run["images"], "--onnx", tmp_path / "cal.onnx", "--calibrator", run["json"])
    assert code == 2 and "--calibrator applies to --weights" in err


def test_wrong_calibrator_files_are_refused_by_the_commands(run, tmp_path):
    other = {**read_calibrator(run["json"])}
    other["classes"] = {str(int(k) + 10): v for k, v in other["classes"].items()}
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "broken.json").write_text("{")
    for name, words in [("other.json", "per-class calibrator for category ids [11, 12, 13, 14, 15], but"),
                        ("broken.json", "invalid JSON")]:
        code, _, err = run_cli("predict", run["images"], "--weights", run["raw"], "--calibrator", tmp_path / name,
                               "--out", tmp_path / "o")
        assert code == 2 and str(tmp_path / name) in err and words in err, err


def _coco_metrics(metrics: dict) -> dict:
    """AP / AR; NaN (undefined, e.g. no large objects) as None so that equal means equal."""
    return {k: None if metrics[k] != metrics[k] else metrics[k] for k in METRIC_NAMES}


@pytest.fixture(scope="module")
def raw_detections(run):
    model, _ = detector_from_checkpoint(run["raw"])
    dataset = CocoDetection(run["root"] / "data" / "annotations" / "val.json", run["root"] / "data" / "val",
                            train=False)
    dets, ids, _ = run_inference(model, dataset, batch_size=4, progress=False)
    return dataset, dets, ids


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_ap_is_exactly_unchanged(raw_detections, method, per_class):
    """pycocotools through score_detections: the calibrated detections have the raw ones' AP and AR, to the bit."""
    dataset, dets, ids = raw_detections
    cat_ids = [int(c) for c in dataset.cat_ids]
    raw_metrics, cal, _, _ = score_detections(dataset.coco, dets, ids, cat_ids)
    c = cal.counted
    assert raw_metrics["AP"] > 0 and c.correct.sum() > 0
    fitted = fit_calibrators(method, c.scores, c.correct, c.labels, dict(zip(cat_ids, CLASS_NAMES)) if per_class
                             else None, min_detections=10)
    module = ScoreCalibration(fitted.to_spec(), cat_ids)
    calibrated = [{**d, "scores": module(d["scores"][None], d["labels"][None])[0]} for d in dets]
    metrics = score_detections(dataset.coco, calibrated, ids, cat_ids)[0]
    assert _coco_metrics(metrics) == _coco_metrics(raw_metrics)
    assert summarize(c, cal.options, fitted(c.scores, c.labels)).d_ece.ece < cal.d_ece.ece  # it does calibrate
    if method == "isotonic":  # the fitted steps alone would tie different scores (what the tie-break prevents)
        scores = torch.cat([d["scores"] for d in dets]).double()
        flat = module.score_map(scores[None], torch.cat([d["labels"] for d in dets])[None])[0]
        assert len(torch.unique(flat)) < len(torch.unique(scores))


def test_drmm_object_eval_and_save_follow_the_calibrator(run, tmp_path):
    model = DRMM.from_checkpoint(run["cal"], device="cpu")
    assert not model.raw_scores and model.calibrator == read_calibrator(run["json"])
    raw = DRMM.from_checkpoint(run["raw"], device="cpu")
    assert raw.raw_scores and raw.calibrator is None
    picture = next(iter(sorted(run["images"].glob("*.png"))))
    calibrated, plain = model.predict(picture)[0], raw.predict(picture)[0]
    model.raw_scores = True
    np.testing.assert_array_equal(model.predict(picture)[0].scores, plain.scores)
    model.raw_scores = False
    np.testing.assert_array_equal(model.predict(picture)[0].scores, calibrated.scores)
    np.testing.assert_array_equal(raw.set_calibrator(run["json"]).predict(picture)[0].scores, calibrated.scores)
    with pytest.raises(ValueError, match="has no calibrator"):
        DRMM.from_checkpoint(run["raw"], device="cpu").raw_scores = False
    saved = torch.load(model.save(tmp_path / "again.pt"), map_location="cpu", weights_only=True)
    assert saved["calibrator"] == model.calibrator
    data = run["root"] / "data"
    got = model.evaluate(data=data, num_workers=0, progress=False)  # calibrated (in-sample here)
    code, printed, err = run_cli("eval", "--weights", run["cal"], "--data", data, "--workers", 0, "--raw-scores",
                                 "--out", tmp_path / "eval_raw")
    assert code == 0 and "scores: the model's own" in printed, err
    plain_metrics = {k: float("nan") if v is None else v
                     for k, v in json.loads((tmp_path / "eval_raw" / "metrics.json").read_text()).items()}
    assert _coco_metrics(got) == _coco_metrics(plain_metrics) and got["ECE"] < plain_metrics["ECE"]


def test_calibrate_to_the_iou_target(run):
    """--target iou: fitted on every detection to its IoU (LaECE_0's target). Isotonic regression keeps the sum of
    what it fits (each pooled block's mean), so the calibrated scores of the fit set average the mean IoU target."""
    from drmm.evaluation.cocofiles import detections_from_results, ground_truth_from_coco
    from drmm.evaluation.coco import to_coco_results
    from drmm.evaluation.eccv_calibration import eccv_targets

    out = run["root"] / "iou.pt"
    code, printed, err = run_cli("calibrate", "--weights", run["raw"], "--data", run["root"] / "data", "--method",
                                 "isotonic", "--target", "iou", "--out", out, "--workers", 0)
    assert code == 0, err
    spec = read_calibrator(out.with_suffix(".calibrator.json"))
    assert spec["fit"]["target"] == "iou" and "to their IoU" in printed and "LaECE_0 / LaACE_0: raw" in printed
    model, _ = detector_from_checkpoint(run["raw"])
    model.optimize_for_inference()  # as drmm calibrate runs it: the same raw scores to the bit
    dataset = CocoDetection(run["root"] / "data" / "annotations" / "val.json", run["root"] / "data" / "val",
                            train=False)
    dets, ids, _ = run_inference(model, dataset, batch_size=4, progress=False)
    gt = ground_truth_from_coco(dataset.coco.dataset)
    found = detections_from_results(to_coco_results(dets, ids, [int(c) for c in dataset.cat_ids]), gt)
    t = eccv_targets(gt, found)  # every detection of a class with ground truth, matched at IoU >= 0
    assert spec["n_fit"] == len(t.scores) > 0 and t.iou.max() > 0
    fitted = ClassCalibrators.from_spec(spec)(t.scores)
    assert fitted.mean() == pytest.approx(t.iou.mean(), abs=1e-9)


def test_the_export_check_allows_for_the_calibrators_slope():
    """verify_export's score tolerance grows with the map's slope at the image's raw scores: checked against the
    derivative of a temperature map worked out by hand, d/ds sigmoid(logit(s) / T) = p (1 - p) / (T s (1 - s))."""
    from drmm.export import calibration_slope

    torch.manual_seed(0)
    model = build_detector(tiny_config(num_classes=3)).eval()
    image = torch.rand(3, 120, 90, generator=torch.Generator().manual_seed(0))
    assert calibration_slope(model, image) == 0.0  # no calibrator
    with torch.inference_mode():
        s = model([image])[0]["scores"].double().numpy()
    spec = {"format": "drmm-calibrator", "version": 1, "method": "temperature", "per_class": False,
            "params": {"temperature": 0.25}, "n_fit": 1, "fit": {}}
    set_score_calibration(model, spec, ["a", "b", "c"], [1, 2, 3])
    p = 1 / (1 + np.exp(-(np.log(s) - np.log1p(-s)) / 0.25))
    by_hand = (p * (1 - p) / (0.25 * s * (1 - s))).max()
    assert calibration_slope(model, image) == pytest.approx(by_hand, rel=1e-3)
