"""``drmm convert-mmdet``: the authors' released checkpoints (layout and forward pass from
released-checkpoint.md, restated in tests/released_reference.py) converted into drmm checkpoints."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import openvino_usable, run_cli
from PIL import Image
from released_reference import released_detections, released_shapes, released_state

from drmm import detector_from_checkpoint
from drmm.config import Config, packaged_config, save_config
from drmm.convert_mmdet import COCO_CATEGORY_IDS, COCO_CLASSES, LayoutError, convert_state_dict, released_config
from drmm.models import build_detector

SMALL = dict(depth=18, dim=64, proposals=20, stages=2, ffn=128, dynamic=16)


def small_config() -> Config:
    """A drmm config of the SMALL released-layout model (ResNet-18, 64 channels)."""
    cfg = Config()
    m = cfg.model
    m.backbone, m.neck_channels, m.hidden_dim, m.num_proposals, m.num_stages = "resnet18", 64, 64, 20, 2
    m.dim_feedforward, m.dynamic_dim = 128, 16
    return cfg


def meta_tensors(shapes):
    return {k: torch.empty(s, device="meta", dtype=torch.int64 if k.endswith("num_batches_tracked") else None)
            for k, s in shapes.items()}


def meta_target(cfg: Config):
    with torch.device("meta"):
        return build_detector(cfg).state_dict()


def test_coco_classes_and_ids():
    assert len(COCO_CLASSES) == len(COCO_CATEGORY_IDS) == 80 and len(set(COCO_CLASSES)) == 80
    assert COCO_CATEGORY_IDS[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13) and COCO_CATEGORY_IDS[-1] == 90
    assert (COCO_CLASSES[0], COCO_CLASSES[11], COCO_CLASSES[-1]) == ("person", "stop sign", "toothbrush")


@pytest.mark.parametrize("depth,config,entries", [(50, "drmm_r50.yaml", 576), (101, "drmm_r101.yaml", 882)])
def test_released_key_layout_fills_the_drmm_model_exactly(depth, config, entries):
    shapes = released_shapes(depth)
    assert len(shapes) == entries  # the counts released-checkpoint.md gives
    learnable = sum(torch.Size(s).numel() for k, s in shapes.items() if not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked")))
    if depth == 50:
        assert learnable == 106_350_598  # the authors' parameter count
    cfg, _ = released_config(packaged_config(config))
    target = meta_target(cfg)
    state = convert_state_dict(meta_tensors(shapes), target)
    assert sorted(state) == sorted(target) and len(state) == entries
    assert all(state[k].shape == target[k].shape for k in state)


def test_layout_errors_list_missing_extra_and_misshapen_keys():
    shapes = released_shapes(**SMALL)
    target = meta_target(small_config())
    missing = dict(shapes)
    del missing["roi_head.bbox_head.1.ffn_norm.bias"]
    with pytest.raises(LayoutError, match=r"0 unexpected, 1 missing, 0 misshapen(.|\n)*decoder\.stages\.1\.norm3\.bias"):
        convert_state_dict(meta_tensors(missing), target)
    extra = dict(shapes) | {"roi_head.bbox_head.0.extra_fc.weight": (4, 4)}
    with pytest.raises(LayoutError, match=r"1 unexpected, 0 missing(.|\n)*roi_head\.bbox_head\.0\.extra_fc\.weight"):
        convert_state_dict(meta_tensors(extra), target)
    wrong = dict(shapes) | {"roi_head.bbox_head.0.fc_cls.weight": (91, 64)}
    with pytest.raises(LayoutError, match=r"0 missing, 1 misshapen(.|\n)*fc_cls\.weight \[91, 64\] -> "
                                          r"decoder\.stages\.0\.head\.cls_out\.weight \[81, 64\]"):
        convert_state_dict(meta_tensors(wrong), target)
    with pytest.raises(LayoutError, match="1 unexpected, 1 missing, 1 misshapen"):  # all at once, one error
        convert_state_dict(meta_tensors({k: v for k, v in (extra | wrong).items() if k in missing or "extra" in k}),
                           target)


@pytest.fixture(scope="module")
def small_release(tmp_path_factory):
    """A small released-layout checkpoint file and its drmm config file."""
    root = tmp_path_factory.mktemp("small_release")
    sd = released_state(released_shapes(**SMALL), torch.rand(3, 64, 96))
    save_config(small_config(), root / "small.yaml")
    return root, sd


def test_file_formats_and_what_is_ignored(small_release):
    root, sd = small_release
    torch.save({"meta": {"CLASSES": COCO_CLASSES, "mmdet_version": "2.12.0", "epoch": 36}, "state_dict": sd,
                "optimizer": {"state": {}, "param_groups": [{"lr": 5e-6}]}}, root / "full.pth")
    code, out, err = run_cli("convert-mmdet", root / "full.pth", "--config", root / "small.yaml", "--out", root / "a.pt")
    assert code == 0, err
    assert f"converted {len(sd)} tensors" in out and "ignored (not model weights): meta, optimizer" in out
    assert "set model.clip_detections: True -> False" in out
    torch.save({f"module.{k}": v for k, v in sd.items()}, root / "bare.pth")  # bare state dict, DDP prefix
    code, out, err = run_cli("convert-mmdet", root / "bare.pth", "--config", root / "small.yaml", "--out", root / "b.pt")
    assert code == 0 and "ignored" not in out, err
    a, b = torch.load(root / "a.pt", weights_only=True), torch.load(root / "b.pt", weights_only=True)
    assert a["class_names"] == list(COCO_CLASSES) and a["cat_ids"] == list(COCO_CATEGORY_IDS)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    model, ckpt = detector_from_checkpoint(root / "a.pt")  # drmm eval / predict load it like this
    m = model.cfg.model
    assert (m.pooler_aligned, m.clip_stage_boxes, m.clip_detections, m.detections_per_image) == (True, False, False, 100)
    with torch.inference_mode():
        assert len(model([torch.rand(3, 64, 96)])[0]["scores"]) == 100


def test_drmm_eval_and_predict_use_the_converted_checkpoint_with_coco_ids(small_release, tmp_path):
    root, sd = small_release
    torch.save({"state_dict": sd}, tmp_path / "src.pth")
    assert run_cli("convert-mmdet", tmp_path / "src.pth", "--config", root / "small.yaml", "--out",
                   tmp_path / "c.pt")[0] == 0
    (tmp_path / "val").mkdir()
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save(tmp_path / "val/a.png")
    coco = {"images": [{"id": 7, "file_name": "a.png", "width": 96, "height": 64}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 90, "bbox": [10, 10, 30, 20], "area": 600,
                             "iscrowd": 0}],
            "categories": [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]}
    (tmp_path / "val.json").write_text(json.dumps(coco))
    code, out, err = run_cli("eval", "--weights", tmp_path / "c.pt", "--ann", tmp_path / "val.json", "--images",
                             tmp_path / "val", "--out", tmp_path / "eval", "--workers", "0")
    assert code == 0, err
    dets = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert len(dets) == 100 and {d["category_id"] for d in dets} <= set(COCO_CATEGORY_IDS)
    code, out, err = run_cli("predict", "--weights", tmp_path / "c.pt", tmp_path / "val/a.png", "--out",
                             tmp_path / "pred", "--threshold", "0")
    assert code == 0 and (tmp_path / "pred" / "a.json").is_file(), err


def test_converted_checkpoint_exports_to_onnx_with_coco_ids(small_release, tmp_path):
    """drmm export on convert-mmdet's output: the graph gives PyTorch's detections, labelled with COCO ids."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from drmm.export import count_matched_detections
    from drmm.onnx_predict import OnnxDetector

    root, sd = small_release
    torch.save({"state_dict": sd}, tmp_path / "src.pth")
    assert run_cli("convert-mmdet", tmp_path / "src.pth", "--config", root / "small.yaml", "--out",
                   tmp_path / "c.pt")[0] == 0
    code, out, err = run_cli("export", "--weights", tmp_path / "c.pt", "--out", tmp_path / "c.onnx")
    assert code == 0 and "checked" in out, err
    detector = OnnxDetector(tmp_path / "c.onnx")
    assert detector.cat_ids == list(COCO_CATEGORY_IDS) and detector.class_names == list(COCO_CLASSES)
    model, _ = detector_from_checkpoint(tmp_path / "c.pt")
    model.optimize_for_inference()
    image = torch.rand(3, 70, 50, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = model([image])[0]
    ids = np.asarray(COCO_CATEGORY_IDS)
    ref = (ref["boxes"].numpy(), ref["scores"].numpy(), ids[ref["labels"].numpy()])
    got = detector(image.numpy())
    assert len(got[1]) == 100 and count_matched_detections(ref, got) == 100
    assert set(got[2].tolist()) <= set(COCO_CATEGORY_IDS)
    if openvino_usable():  # the same file on OpenVINO (f32)
        got = OnnxDetector(tmp_path / "c.onnx", runtime="openvino")(image.numpy())
        assert count_matched_detections(ref, got) == 100


class NotATensor:
    pass


def test_unsafe_files_and_other_errors_are_clear(small_release, tmp_path):
    root, sd = small_release
    torch.save({"meta": {"obj": NotATensor()}, "state_dict": sd}, tmp_path / "pickled.pth")
    code, _, err = run_cli("convert-mmdet", tmp_path / "pickled.pth", "--config", root / "small.yaml",
                           "--out", tmp_path / "x.pt")
    assert code == 2 and "weights_only=True" in err and "never unpickles" in err
    assert not (tmp_path / "x.pt").exists()
    torch.save({"meta": {"CLASSES": ("cat", "dog")}, "state_dict": sd}, tmp_path / "other.pth")
    code, _, err = run_cli("convert-mmdet", tmp_path / "other.pth", "--config", root / "small.yaml",
                           "--out", tmp_path / "x.pt")
    assert code == 2 and "2 classes from meta.CLASSES" in err and "fc_cls.weight [81, 64]" in err  # not COCO's
    broken = {k: v for k, v in sd.items() if k != "neck.fpn_convs.2.conv.bias"}
    torch.save({"state_dict": broken}, tmp_path / "broken.pth")
    code, _, err = run_cli("convert-mmdet", tmp_path / "broken.pth", "--config", root / "small.yaml",
                           "--out", tmp_path / "x.pt")
    assert code == 2 and "backbone.neck.layer_blocks.2.0.bias" in err and "1 missing" in err
    code, _, err = run_cli("convert-mmdet", tmp_path / "nope.pth", "--config", root / "small.yaml",
                           "--out", tmp_path / "x.pt")
    assert code == 2 and "not found" in err


def test_r101_checkpoint_with_the_r50_config_names_the_backbone(monkeypatch, tmp_path):
    import drmm.convert_mmdet as convert

    monkeypatch.setattr(convert, "load_released", lambda path: (meta_tensors(released_shapes(101)), {}, []))
    with pytest.raises(LayoutError, match=r"looks like resnet101(.|\n)*unexpected in the checkpoint"):
        convert.convert_mmdet(tmp_path / "r101.pth", packaged_config("drmm_r50.yaml"), tmp_path / "x.pt")


def test_r50_forward_matches_the_released_forward_pass(tmp_path):
    """Converted model vs an independent restatement of the released inference, on 800 x 1216 (no resize)."""
    g = torch.Generator().manual_seed(0)
    image = F.interpolate(torch.rand(1, 3, 25, 38, generator=g), size=(800, 1216), mode="bilinear")[0]
    image = (image + 0.05 * torch.rand(3, 800, 1216, generator=g)).clamp(0, 1)
    calibration = F.interpolate(image[None], size=(256, 384), mode="bilinear")[0]
    sd = released_state(released_shapes(50), calibration)
    torch.save({"meta": {"CLASSES": COCO_CLASSES}, "state_dict": sd}, tmp_path / "r50.pth")
    code, out, err = run_cli("convert-mmdet", tmp_path / "r50.pth", "--config", packaged_config("drmm_r50.yaml"),
                             "--out", tmp_path / "r50.pt")
    assert code == 0 and "converted 576 tensors" in out, err
    model, ckpt = detector_from_checkpoint(tmp_path / "r50.pt")
    assert ckpt["cat_ids"] == list(COCO_CATEGORY_IDS)
    with torch.inference_mode():
        (det,), trace = model([image], return_stages=True)
    ref = released_detections(sd, image)
    assert trace.image_sizes == [(800, 1216)]
    # the reference is not degenerate: confident, spread-out detections of several classes
    assert ref["scores"][0] > 0.3 and len(ref["labels"].unique()) > 5 and len(ref["components"].unique()) > 20
    torch.testing.assert_close(det["scores"], ref["scores"], rtol=0, atol=1e-4)  # sorted top-100 scores
    comp = trace.components[0]
    # every drmm detection is the reference's pair (component, class): same score and box
    torch.testing.assert_close(det["scores"], ref["all_scores"][comp, det["labels"]], rtol=0, atol=1e-4)
    torch.testing.assert_close(det["boxes"], ref["mu"][comp], rtol=0, atol=0.1)
    pairs = set(zip(comp.tolist(), det["labels"].tolist()))
    ref_pairs = set(zip(ref["components"].tolist(), ref["labels"].tolist()))
    near_cut = (ref["scores"] - ref["scores"][-1]).abs() < 1e-4  # only a tie at the 100th score may differ
    assert len(pairs ^ ref_pairs) <= 2 * int(near_cut.sum())
