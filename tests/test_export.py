"""ONNX export: onnxruntime (CPU) gives drmm predict's detections at input sizes the export never saw.

Tiny models, one export per decoder / pooler combination; the reference is the
PyTorch detector itself as ``drmm predict`` runs it (optimised for inference).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import OPENVINO_SKIP, openvino_usable, run_cli, tiny_config
from PIL import Image

pytest.importorskip("onnxruntime", reason="pip install 'drmm[export]'")
pytest.importorskip("onnxscript", reason="pip install 'drmm[export]'")

from drmm import build_detector, detector_from_checkpoint  # noqa: E402
from drmm.config import Config, load_config  # noqa: E402
from drmm.checkpoints import atomic_save, make_checkpoint  # noqa: E402
from drmm.onnx_predict import OnnxDetector, check_graph_input  # noqa: E402

CAT_IDS = [3, 7, 11]
SIZES = [(90, 131), (203, 61), (140, 150)]  # export example is 375 x 500: other sizes, landscape and portrait
VARIANTS = {"sparse_rcnn-torchvision": {}, "sparse_rcnn-grid-unaligned": {"pooler": "grid", "pooler_aligned": False},
            "adamixer": {"architecture": "adamixer"}}
ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(folder: Path, **model) -> Path:
    torch.manual_seed(0)
    cfg = tiny_config(**model)
    cfg.model.detections_per_image = 20
    path = folder / "model.pt"
    atomic_save(make_checkpoint(build_detector(cfg), cfg.to_dict(), ["cat", "dog", "owl"], CAT_IDS), path)
    return path


CLI_OUTPUT: dict[str, list[str]] = {}  # what `drmm export` printed, run as a user runs it (first variant)


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp(request.param)
    ckpt = _checkpoint(folder, **VARIANTS[request.param])
    if request.param == next(iter(VARIANTS)):  # one export in a fresh interpreter, logging as a user sees it
        done = subprocess.run([sys.executable, "-m", "drmm", "export", "--weights", str(ckpt), "--out",
                               str(folder / "model.onnx")], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        CLI_OUTPUT[request.param] = (done.stdout + done.stderr).splitlines()
    else:
        assert run_cli("export", "--weights", ckpt, "--out", folder / "model.onnx")[0] == 0
    return ckpt, folder / "model.onnx"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_matches_pytorch(exported, runtime):
    """onnxruntime, and OpenVINO reading the same file in f32, give drmm predict's detections."""
    if runtime == "openvino":
        _openvino()
    ckpt, onnx_path = exported
    model, _ = detector_from_checkpoint(ckpt)
    model.optimize_for_inference()
    detector = OnnxDetector(onnx_path, runtime=runtime)
    assert detector.cat_ids == CAT_IDS and detector.class_names == ["cat", "dog", "owl"] and detector.static is None
    gen = torch.Generator().manual_seed(1)
    for size in SIZES:
        image = torch.rand(3, *size, generator=gen)
        with torch.inference_mode():
            ref = model([image])[0]
        boxes, scores, labels = detector(image.numpy())
        assert boxes.shape == (20, 4) and scores.shape == labels.shape == (20,)
        np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(boxes, ref["boxes"].numpy(), atol=0.05, rtol=0)
        assert labels.tolist() == [CAT_IDS[i] for i in ref["labels"].tolist()]
        assert boxes[:, 0::2].max() <= size[1] and boxes[:, 1::2].max() <= size[0] and boxes.min() >= 0


def test_predict_onnx_writes_what_predict_writes(exported, tmp_path):
    ckpt, onnx_path = exported
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES[:2]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    rc_pt, _, err_pt = run_cli("predict", folder, "--weights", ckpt, "--out", tmp_path / "pt", "--threshold", 0)
    rc_ox, _, err_ox = run_cli("predict", folder, "--onnx", onnx_path, "--out", tmp_path / "ox", "--threshold", 0)
    assert rc_pt == rc_ox == 0
    assert "predict: 100%" in err_pt and "predict: 100%" in err_ox and "2/2" in err_ox  # both show progress
    for i in range(2):
        pt = json.loads((tmp_path / "pt" / f"im{i}.json").read_text())
        ox = json.loads((tmp_path / "ox" / f"im{i}.json").read_text())
        assert ox.keys() == pt.keys() and ox["labels"] == pt["labels"] and ox["names"] == pt["names"]
        assert (ox["width"], ox["height"]) == (pt["width"], pt["height"])
        np.testing.assert_allclose(ox["scores"], pt["scores"], atol=2e-4)
        np.testing.assert_allclose(ox["boxes"], pt["boxes"], atol=0.06)
        assert Image.open(tmp_path / "ox" / f"im{i}.png").size == Image.open(tmp_path / "pt" / f"im{i}.png").size


@pytest.mark.parametrize("image, message", [
    (np.zeros((1, 3, 32, 32), np.float32), "rank 4"), (np.zeros((32, 32, 3), np.float32), "3 channels"),
    (np.zeros((3, 32, 32), np.uint8), "dtype uint8"), (np.zeros((3, 0, 32), np.float32), "empty"),
    (np.full((3, 32, 32), np.nan, np.float32), "NaN")])
def test_bad_images_are_refused_before_the_session(image, message):
    with pytest.raises(ValueError, match=message):
        check_graph_input(image)


def test_predict_onnx_cli_errors(tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    _, onnx_path = _static_export(tmp_path)
    rc, _, err = run_cli("predict", tiny, "--onnx", onnx_path, "--out", tmp_path / "o")
    assert rc == 2 and "smaller than 8" in err
    big = tmp_path / "big.png"
    Image.new("RGB", (90, 70)).save(big)
    rc, _, err = run_cli("predict", big, "--onnx", onnx_path, "--out", tmp_path / "o")
    assert rc == 2 and "exported for 64x80" in err
    rc, _, err = run_cli("predict", big, "--onnx", onnx_path, "--weights", "x.pt")
    assert rc == 2 and "exactly one of" in err
    rc, _, err = run_cli("predict", big, "--onnx", tmp_path / "missing.onnx")
    assert rc == 2 and "not found" in err
    rc, _, err = run_cli("export", "--weights", tmp_path / "model.pt", "--out", tmp_path / "h.onnx", "--half")
    assert rc == 2 and "--half" in err and "--precision bf16" in err


@pytest.mark.parametrize("exported", [next(iter(VARIANTS))], indirect=True)
def test_export_cli_prints_its_result_not_the_exporters_log(exported):
    """``drmm export`` as a user runs it: torch.onnx's optimiser logs ~700 INFO lines unless silenced."""
    lines = CLI_OUTPUT[next(iter(VARIANTS))]
    assert lines[0].startswith("exporting ") and lines[1].startswith("wrote ") and len(lines) == 3, lines[:10]


def _static_export(folder: Path) -> tuple[Path, Path]:
    ckpt = _checkpoint(folder)
    assert run_cli("export", "--weights", ckpt, "--out", folder / "s.onnx", "--static", "64x80")[0] == 0
    return ckpt, folder / "s.onnx"


def test_readme_snippet_runs_without_torch(exported, tmp_path):
    """The README's snippet, pasted as is, and drmm.onnx_predict, both with torch made unimportable."""
    _, onnx_path = exported
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"<!-- onnx-snippet -->\n```python\n(.*?)```", readme, re.S).group(1)
    Image.fromarray(np.full((70, 90, 3), 128, np.uint8)).save(tmp_path / "photo.jpg")
    (tmp_path / "model.onnx").write_bytes(onnx_path.read_bytes())
    block = "import sys; sys.modules['torch'] = None\n"
    check = block + ("from drmm.onnx_predict import predict_onnx\n"
                     "print(predict_onnx('model.onnx', ['photo.jpg'], 'out', threshold=0.0)['detections'])\n")
    for code in (block + snippet, check):
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}, timeout=120)
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "20"


# --- every backbone, and a graph that kept a size from tracing ------------------------------

def _small(config: str, **model) -> Config:
    cfg = load_config(ROOT / "configs" / config, ["model.pretrained=null", "model.num_proposals=8", "model.num_stages=1",
                                                 "model.min_size=96", "model.max_size=160",
                                                 "model.detections_per_image=10"])
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


@pytest.mark.parametrize("config,static", [
    ("drmm_r50.yaml", None), ("drmm_swin_t.yaml", (90, 131)),
    pytest.param("drmm_adamixer_swin_t.yaml", (131, 90), marks=pytest.mark.slow)])  # Swin-T again (~25 s)
def test_paper_backbones_export_and_match(config, static, tmp_path):
    """ResNet-50 (any size) and Swin-T (one size): export_checkpoint's own check against PyTorch passes, and
    onnxruntime and OpenVINO both give PyTorch's detections."""
    from drmm.export import count_matched_detections, export_checkpoint

    torch.manual_seed(0)
    cfg = _small(config)
    path = tmp_path / "model.pt"
    atomic_save(make_checkpoint(build_detector(cfg), cfg.to_dict(), [str(i) for i in range(80)], list(range(80))), path)
    onnx_path = export_checkpoint(path, tmp_path / "model.onnx", static_size=static)
    model, _ = detector_from_checkpoint(path)
    model.optimize_for_inference()
    image = torch.rand(3, *(static or (77, 120)), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = model([image])[0]
    got = OnnxDetector(onnx_path)(image.numpy())
    ref = tuple(ref[k].numpy() for k in ("boxes", "scores", "labels"))
    assert count_matched_detections(ref, got) == 10
    if openvino_usable():  # the same file on OpenVINO (f32)
        got = OnnxDetector(onnx_path, runtime="openvino")(image.numpy())
        assert count_matched_detections(ref, got) == 10


def test_swin_needs_a_static_size(tmp_path):
    torch.manual_seed(0)
    cfg = _small("drmm_swin_t.yaml")
    path = tmp_path / "model.pt"
    atomic_save(make_checkpoint(build_detector(cfg), cfg.to_dict(), [str(i) for i in range(80)], list(range(80))), path)
    code, out, err = run_cli("export", "--weights", path, "--out", tmp_path / "m.onnx")
    assert code != 0 and "--static" in err and "Swin-T" in err and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("exported", [next(iter(VARIANTS))], indirect=True)
def test_export_check_refuses_and_deletes_a_graph_that_disagrees(exported, tmp_path, monkeypatch):
    """onnxruntime 0.06 px off PyTorch on one box: export_checkpoint raises, names the remedy, leaves no file.
    (The tracing step hands over the module's export of the same checkpoint instead of tracing again.)"""
    import shutil

    import drmm.export as export
    from drmm.onnx_predict import OnnxDetector as Real

    class OffByAHair(Real):
        def __call__(self, image):
            boxes, scores, labels = super().__call__(image)
            boxes[0, 2] += 0.06
            return boxes, scores, labels

    ckpt, onnx_path = exported
    monkeypatch.setattr("drmm.onnx_predict.OnnxDetector", OffByAHair)
    monkeypatch.setattr(export, "export_onnx", lambda model, out, *a, **k: Path(shutil.copy(onnx_path, out)))
    with pytest.raises(RuntimeError, match="19 of 20 equal.*--static"):
        export.export_checkpoint(ckpt, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_a_graph_that_kept_its_tracing_size_is_refused_and_deleted(tmp_path, monkeypatch):
    """The size-specialisation the check exists for: Swin-T traced for any size without the guard (~70 s)."""
    import drmm.export as export

    torch.manual_seed(0)
    cfg = _small("drmm_swin_t.yaml")
    path = tmp_path / "model.pt"
    atomic_save(make_checkpoint(build_detector(cfg), cfg.to_dict(), [str(i) for i in range(80)], list(range(80))), path)
    monkeypatch.setattr(export, "check_exportable", lambda model, dynamic=False: None)
    with pytest.raises(RuntimeError, match="kept a size from tracing.*--static"):
        export.export_checkpoint(path, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_count_matched_detections_against_hand_cases():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]], dtype=np.float32)
    ref = (boxes, np.array([0.9, 0.5, 0.5], dtype=np.float32), np.array([1, 2, 3]))
    from drmm.export import count_matched_detections

    swapped = (boxes[[0, 2, 1]], ref[1][[0, 2, 1]], ref[2][[0, 2, 1]])  # a tie swapped: still equal
    assert count_matched_detections(ref, swapped) == 3
    moved = (boxes + np.array([[0, 0, 0.06, 0]] + [[0, 0, 0, 0]] * 2, dtype=np.float32), ref[1], ref[2])
    assert count_matched_detections(ref, moved) == 2  # 0.06 px > 0.05
    relabelled = (boxes, ref[1], np.array([1, 3, 3]))
    assert count_matched_detections(ref, relabelled) == 2
    rescored = (boxes, ref[1] + np.float32(2e-4), ref[2])
    assert count_matched_detections(ref, rescored) == 0


# --- OpenVINO: the same file on a second runtime --------------------------------------------

def _openvino():
    if "ONEDNN_MAX_CPU_ISA" in os.environ:
        pytest.skip(OPENVINO_SKIP)
    return pytest.importorskip("openvino", reason="pip install 'drmm[openvino]'")


def test_openvino_reads_a_static_export(tmp_path, monkeypatch):
    """A static export folds empty per-level constants; they are rewritten so OpenVINO takes the graph
    (without the rewrite OpenVINO refuses it, and the error says what to do)."""
    _openvino()
    import drmm.export as export

    ckpt, onnx_path = _static_export(tmp_path)
    image = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(4))
    model, _ = detector_from_checkpoint(ckpt)
    model.optimize_for_inference()
    with torch.inference_mode():
        ref = model([image])[0]
    boxes, scores, labels = OnnxDetector(onnx_path, runtime="openvino")(image.numpy())
    np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(boxes, ref["boxes"].numpy(), atol=0.05, rtol=0)

    monkeypatch.setattr(export, "materialise_empty_initializers", lambda proto: 0)
    assert run_cli("export", "--weights", ckpt, "--out", tmp_path / "raw.onnx", "--static", "64x80")[0] == 0
    with pytest.raises(RuntimeError, match="OpenVINO cannot read .*raw.onnx.*re-export"):
        OnnxDetector(tmp_path / "raw.onnx", runtime="openvino")


def test_openvino_bf16_runs_in_bfloat16_close_to_f32(exported, tmp_path):
    """bf16 is what it says (scores differ from f32) and close: same top detection, scores within 3e-2."""
    ov = _openvino()
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bfloat16 instructions")
    _, onnx_path = exported
    image = np.random.default_rng(5).random((3, 140, 150), dtype=np.float32)
    f32 = OnnxDetector(onnx_path, runtime="openvino")(image)
    bf16 = OnnxDetector(onnx_path, runtime="openvino", precision="bf16")(image)
    deviation = np.abs(np.sort(f32[1]) - np.sort(bf16[1])).max()
    assert 0 < deviation < 3e-2
    Image.fromarray((image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / "im.png")
    args = ("predict", tmp_path / "im.png", "--onnx", onnx_path, "--out", tmp_path / "o", "--threshold", 0)
    assert run_cli(*args, "--runtime", "openvino", "--precision", "bf16")[0] == 0
    assert len(json.loads((tmp_path / "o" / "im.json").read_text())["scores"]) == 20


def test_readme_openvino_snippet_gives_onnxruntimes_detections(exported, tmp_path):
    """The README's OpenVINO lines, after its onnxruntime snippet, in one interpreter without torch."""
    _openvino()
    _, onnx_path = exported
    readme = (ROOT / "README.md").read_text()
    first, second = (re.search(rf"<!-- {name}-snippet -->\n```python\n(.*?)```", readme, re.S).group(1)
                     for name in ("onnx", "openvino"))
    Image.fromarray(np.random.default_rng(6).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    (tmp_path / "model.onnx").write_bytes(onnx_path.read_bytes())
    code = ("import sys; sys.modules['torch'] = None\n" + first + "reference = (boxes, scores, labels, names)\n"
            + second + "assert names == reference[3] and (labels == reference[2]).all()\n"
            "assert np.abs(scores - reference[1]).max() <= 1e-4 and np.abs(boxes - reference[0]).max() <= 0.05\n"
            "print(len(scores))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "20"


def test_runtime_and_precision_errors(tmp_path, monkeypatch):
    ckpt, onnx_path = _static_export(tmp_path)
    Image.new("RGB", (80, 64)).save(tmp_path / "im.png")
    rc, _, err = run_cli("predict", tmp_path / "im.png", "--onnx", onnx_path, "--precision", "bf16")
    assert rc == 2 and "needs --runtime openvino" in err
    rc, _, err = run_cli("predict", tmp_path / "im.png", "--weights", ckpt, "--runtime", "openvino")
    assert rc == 2 and "--onnx MODEL" in err
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    rc, _, err = run_cli("predict", tmp_path / "im.png", "--onnx", onnx_path, "--runtime", "openvino")
    assert rc == 2 and "pip install 'drmm[openvino]'" in err
