"""`drmm.DRMM` (issue 25): predict on every input kind, train, evaluate, save, export, against the commands."""
import json
import math
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, tiny_config
from PIL import Image

from drmm import DRMM, Detections, build_detector, detector_from_checkpoint
from drmm.config import save_config
from drmm.data import generate_synthetic
from drmm.data.synthetic import CLASS_NAMES
from drmm.checkpoints import atomic_save, load_checkpoint, make_checkpoint

CAT_IDS = [5, 11, 42, 60, 99]  # non-contiguous dataset ids for the 5 synthetic classes
NAMES = ["c5", "c11", "c42", "c60", "c99"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=5)
    path = tmp_path_factory.mktemp("run") / "model.pt"
    atomic_save(make_checkpoint(build_detector(cfg), cfg.to_dict(), NAMES, CAT_IDS), path)
    return path


@pytest.fixture(scope="module")
def model(ckpt) -> DRMM:
    return DRMM.from_checkpoint(ckpt, device="cpu")


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 70x90 RGB picture (not the model's 96-pixel input size) saved as PNG, and its pixels."""
    pixels = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_synthetic(root, 4, 3, seed=0, image_size=64, progress=False)
    return root


def _same(a: Detections, b: Detections, atol: float = 0.0) -> None:
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.boxes, b.boxes, atol=atol, rtol=0)
    np.testing.assert_allclose(a.scores, b.scores, atol=atol, rtol=0)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.category_ids, b.category_ids)
    assert a.class_names == b.class_names


def test_every_input_kind_gives_drmm_predicts_detections(model, picture, ckpt, tmp_path):
    path, pixels = picture
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    by_path, = model.predict(path)
    for other in (str(path), Image.fromarray(pixels), pixels, tensor):
        _same(by_path, model.predict(other)[0])
    assert by_path.boxes.dtype == np.float32 and by_path.boxes.shape == (len(by_path), 4)

    code, _, err = run_cli("predict", path, "--weights", ckpt, "--out", tmp_path, "--threshold", 0)
    assert code == 0, err
    record = json.loads((tmp_path / "photo.json").read_text())  # the command writes what the object finds
    np.testing.assert_allclose(by_path.boxes, record["boxes"], atol=0.006)  # the JSON rounds to 0.01 px
    np.testing.assert_allclose(by_path.scores, record["scores"], atol=6e-5)
    assert by_path.category_ids.tolist() == record["labels"] and by_path.class_names == record["names"]


def test_boxes_are_input_pixels_and_classes_come_from_the_checkpoint(model, picture, ckpt):
    _, pixels = picture
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    module, _ = detector_from_checkpoint(ckpt)  # not optimised for inference: an independent forward
    with torch.no_grad():
        ref = module([tensor])[0]
    det, = model.predict(tensor)
    np.testing.assert_allclose(det.boxes, ref["boxes"].numpy(), atol=1e-3)
    np.testing.assert_allclose(det.scores, ref["scores"].numpy(), atol=1e-5)
    assert det.labels.tolist() == ref["labels"].tolist()
    assert (det.boxes[:, [0, 2]] <= 90).all() and (det.boxes[:, [1, 3]] <= 70).all()  # clipped to 90x70
    assert det.boxes[:, 2].max() > 48  # beyond the 64-px square of a model-sized image
    assert det.category_ids.tolist() == [CAT_IDS[i] for i in det.labels]
    assert det.class_names == [NAMES[i] for i in det.labels]
    assert model.class_names == NAMES and model.category_ids == CAT_IDS and model.config.model.num_classes == 5
    strong = model.predict(tensor, threshold=float(np.median(det.scores)))[0]
    assert 0 < len(strong) < len(det) and (strong.scores >= np.median(det.scores)).all()


def test_a_list_gives_one_result_per_image(model, picture):
    _, pixels = picture
    flipped = np.ascontiguousarray(pixels[:, ::-1])
    singles = [model.predict(pixels)[0], model.predict(flipped)[0]]
    for batch_size in (1, 2):  # same-size images: batching pads nothing
        both = model.predict([pixels, flipped], batch_size=batch_size)
        assert len(both) == 2
        for one, got in zip(singles, both):
            _same(one, got, atol=1e-4)


@pytest.mark.parametrize("bad, error, words", [
    ("missing/photo.jpg", FileNotFoundError, ["missing/photo.jpg"]),
    (np.zeros((8, 8, 3), np.float32), ValueError, ["float32", "(8, 8, 3)", "uint8 [H, W, 3]"]),
    (np.zeros((8, 8, 4), np.uint8), ValueError, ["(8, 8, 4)", "uint8 [H, W, 3]"]),
    (torch.zeros(8, 8, 3), ValueError, ["(8, 8, 3)", "[3, H, W]"]),
    (torch.zeros(2, 3, 8, 8), ValueError, ["(2, 3, 8, 8)", "list(tensor)"]),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), ValueError, ["torch.uint8", "0..1"]),
    (torch.full((3, 8, 8), 255.0), ValueError, ["255", "0..1"]),
    (42, TypeError, ["int", "PIL.Image.Image", "numpy uint8", "a list of these"]),
    ([], ValueError, ["no inputs"]),
    ([np.zeros((8, 8, 3), np.uint8), "nope.png"], FileNotFoundError, ["inputs[1]", "nope.png"]),
])
def test_unsupported_inputs_are_clear_errors(model, bad, error, words):
    with pytest.raises(error) as e:
        model.predict(bad)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_from_config_trains_and_holds_the_trained_weights(synth, tmp_path):
    cfg = tiny_config(num_classes=5, min_size=64, max_size=64)
    save_config(cfg, tmp_path / "tiny.yaml")
    model = DRMM.from_config(tmp_path / "tiny.yaml", class_names=list("abcde"), device="cpu")
    assert model.category_ids == [1, 2, 3, 4, 5] and model.class_names == list("abcde")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        model.train(data=synth, out=tmp_path / "never", bogus=1)
    out = tmp_path / "run"
    result = model.train(data=synth, out=out, progress=False, max_iters=2, batch_size=2, lr=1e-3, warmup_iters=1,
                         num_workers=0, eval_interval=0, checkpoint_interval=0, set=["data.scale=0.1"])
    assert result["step"] == 2 and "AP" in result["metrics"]
    for name in ("config.yaml", "log.jsonl", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    last = load_checkpoint(out / "last.pt")
    assert last["config"]["train"]["lr"] == 1e-3 and last["config"]["data"]["scale"] == 0.1
    state = model.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in last["model"].items()) and state.keys() == last["model"].keys()
    assert any(not torch.equal(before[k], state[k]) for k in state)
    assert model.class_names == CLASS_NAMES and model.category_ids == [1, 2, 3, 4, 5]
    assert DRMM.from_config("demo_cpu", class_names=["x"]).config.model.backbone == "tiny"  # a packaged config


def test_evaluate_gives_drmm_evals_metrics(synth, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=5)
    ckpt = tmp_path / "model.pt"
    atomic_save(make_checkpoint(build_detector(cfg), cfg.to_dict(), CLASS_NAMES, [1, 2, 3, 4, 5]), ckpt)
    code, _, err = run_cli("eval", "--weights", ckpt, "--data", synth, "--out", tmp_path / "eval", "--workers", 0)
    assert code == 0, err
    expected = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    got = DRMM.from_checkpoint(ckpt, device="cpu").evaluate(data=synth, num_workers=0, progress=False)
    assert list(got) == list(expected)
    for k, v in expected.items():
        if isinstance(v, dict):  # lrp_thresholds, per class
            assert got[k] == v, k
        else:
            assert (math.isnan(got[k]) if v is None else got[k] == pytest.approx(v, abs=1e-9)), k
    with pytest.raises(FileNotFoundError, match="test.json"):
        DRMM.from_checkpoint(ckpt).evaluate(data=synth, split="test")


def test_save_round_trip_and_export_use_the_current_weights(model, picture, tmp_path, monkeypatch):
    _, pixels = picture
    saved = model.save(tmp_path / "copy.pt")
    again = DRMM.from_checkpoint(saved, device="cpu")
    _same(model.predict(pixels)[0], again.predict(pixels)[0])
    assert again.class_names == NAMES and again.category_ids == CAT_IDS

    with torch.no_grad():  # weights changed in place: predict sees them (the inference copy is made again)
        next(again.module.parameters()).mul_(0.5)
    assert not np.array_equal(model.predict(pixels)[0].scores, again.predict(pixels)[0].scores)

    import drmm.export

    seen = {}

    def fake_export(weights, out, opset, static_size, verify=True, raw_scores=False):
        seen["state"] = load_checkpoint(weights)["model"]
        seen["args"] = (out, opset, static_size, verify, raw_scores)
        return Path(out)

    monkeypatch.setattr(drmm.export, "export_checkpoint", fake_export)
    assert again.export(tmp_path / "m.onnx", static=[64, 96]) == tmp_path / "m.onnx"
    assert seen["args"] == (tmp_path / "m.onnx", 18, (64, 96), True, True)  # no calibrator: raw scores
    assert all(torch.equal(v, again.module.state_dict()[k]) for k, v in seen["state"].items())


def test_to_moves_the_module_and_the_inference_copy(ckpt, picture):
    model = DRMM.from_checkpoint(ckpt, device="cpu")
    before, = model.predict(picture[1])
    copy_before = model._inference
    assert model.to("cpu") is model and model.device == torch.device("cpu")
    assert model._inference is copy_before  # already there: kept, not made again
    assert all(p.device.type == "cpu" for p in chain(model.module.parameters(), model._inference.parameters()))
    _same(before, model.predict(picture[1])[0])
    with torch.no_grad():  # weights changed, then moved: the copy is made again from the new weights
        next(model.module.parameters()).add_(1)
    model.to(torch.device("cpu"))
    assert model._inference is None and model.predict(picture[1])[0] is not None
    assert model._inference is not copy_before
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            model.to("cuda")
        assert model.device == torch.device("cpu")
