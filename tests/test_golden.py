"""REGRESSION PINS: the redesign (issue 11) changed no loss, detection, parameter count or checkpoint key.

The expected values in tests/data were written once by the code before the
redesign (tests/data/make_golden_v0.py, commit cf0f0aa) and are never regenerated.
"""
import json
from pathlib import Path

import pytest
import torch
from helpers_golden import CASES, golden_batch, golden_config

from drmm import build_detector, detector_from_checkpoint

DATA = Path(__file__).parent / "data"
GOLDEN = json.loads((DATA / "golden_v0.json").read_text())


def _check_detections(dets, expected):
    for det, exp in zip(dets, expected, strict=True):
        torch.testing.assert_close(det["scores"], torch.tensor(exp["scores"]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(det["boxes"], torch.tensor(exp["boxes"]), rtol=1e-4, atol=1e-3)
        # a near-tie may swap two pairs; everything else must keep its label
        same = (det["labels"] == torch.tensor(exp["labels"])).float().mean()
        assert same >= 0.98, f"only {same:.2%} of the labels agree"


@pytest.mark.parametrize("name", CASES)
def test_same_losses_detections_and_parameter_count_as_before_the_redesign(name):
    torch.manual_seed(0)
    model = build_detector(golden_config(name))
    images, targets = golden_batch()
    exp = GOLDEN[name]
    assert sum(p.numel() for p in model.parameters()) == exp["num_parameters"]
    torch.manual_seed(1)
    losses = model.train()(images, targets)
    assert sorted(losses) == sorted(exp["losses"])
    for k, v in exp["losses"].items():
        assert float(losses[k].detach()) == pytest.approx(v, rel=1e-5, abs=1e-5), k
    with torch.no_grad():
        _check_detections(model.eval()(images), exp["detections"])


@pytest.mark.parametrize("name", ["sparse_rcnn_drmm", "adamixer_drmm"])
def test_checkpoint_saved_by_the_old_layout_still_loads(name):
    model, _ = detector_from_checkpoint(DATA / f"old_layout_{name}.pt")
    images, _ = golden_batch()
    with torch.no_grad():
        _check_detections(model(images), GOLDEN[name]["detections"])
