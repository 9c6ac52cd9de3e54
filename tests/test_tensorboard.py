"""train.tensorboard (issue 24 item 5): event files written through the callback seam and read back with
TensorBoard's own reader; a resumed run's events once per step; the missing package is one clear error."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from helpers import small_train_config

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from drmm.config import load_config  # noqa: E402
from drmm.engine.callbacks import TensorBoard, build_callbacks  # noqa: E402
from drmm.engine.train import DataPaths, train  # noqa: E402


@pytest.fixture()
def synth(synth16):
    return synth16


def small_cfg(**train):
    return small_train_config(tensorboard=True, **train)


def _events(run):
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_every_number_of_the_log_and_the_reliability_diagram(synth, tmp_path):
    run = tmp_path / "run"
    train(small_cfg(max_iters=4, eval_interval=2), DataPaths.from_dir(synth), run, progress=False)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    acc = _events(run)
    tags = set(acc.Tags()["scalars"])
    checked = 0
    for row in rows:  # every finite number of every row, at its step, with its value
        for key, value in row.items():
            if key in ("type", "step") or not isinstance(value, (int, float)) or value != value:
                continue
            tag = f"{row['type']}/{key}"
            assert tag in tags, tag
            got = {e.step: e.value for e in acc.Scalars(tag)}
            assert got[row["step"]] == pytest.approx(value, rel=1e-6, abs=1e-6), tag
            checked += 1
    assert checked > 40
    assert {"train/loss", "train/lr", "train/grad_norm", "train/data_time", "train/step_time", "val/AP", "val/ECE",
            "val/LaECE"} <= tags
    assert any(t.startswith("train/nll.") for t in tags) and any(t.startswith("train/mcm.") for t in tags)
    val_steps = {r["step"] for r in rows if r["type"] == "val"}
    images = acc.Images("val/reliability")
    assert [im.step for im in images] == sorted(val_steps) == [2, 4] and images[0].width > 100


def test_the_final_validation_draws_the_diagram_too(synth, tmp_path):
    run = tmp_path / "run"
    train(small_cfg(max_iters=3, eval_interval=0), DataPaths.from_dir(synth), run, progress=False)  # final only
    assert [im.step for im in _events(run).Images("val/reliability")] == [3]


def test_resume_writes_each_step_once(synth, tmp_path):
    """Killed after the step-3 checkpoint with events of steps 4-6 written: the resumed run's events replace them."""
    straight = tmp_path / "a"
    train(small_cfg(max_iters=6, checkpoint_interval=3), DataPaths.from_dir(synth), straight, progress=False)
    run = tmp_path / "b"
    train(small_cfg(max_iters=3, checkpoint_interval=3), DataPaths.from_dir(synth), run, progress=False)
    shutil.copy(run / "last.pt", tmp_path / "step3.pt")
    cfg6 = load_config(run / "config.yaml", ["train.max_iters=6"])
    train(cfg6, DataPaths.from_dir(synth), run, resume=True, progress=False)  # events of steps 4-6
    shutil.copy(tmp_path / "step3.pt", run / "last.pt")  # as if killed before the later checkpoints
    train(cfg6, DataPaths.from_dir(synth), run, resume=True, progress=False)
    want = {e.step: e.value for e in _events(straight).Scalars("train/loss")}
    got = _events(run).Scalars("train/loss")
    assert [e.step for e in got] == sorted(want) == [1, 2, 3, 4, 5, 6]  # each step once
    assert {e.step: e.value for e in got} == pytest.approx(want, rel=1e-6)


def test_missing_tensorboard_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'drmm\[tensorboard\]'"):
        TensorBoard(tmp_path)
    with pytest.raises(ImportError, match="train.tensorboard"):
        build_callbacks(small_cfg(), None, tmp_path)
