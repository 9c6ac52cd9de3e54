"""Shared test helpers: a tiny model config, a tiny batch and the ``drmm`` command run in-process.

Imported by the test modules (``from helpers import ...``); fixtures live in ``conftest.py``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os

import torch

from drmm.cli import main
from drmm.config import Config


OPENVINO_SKIP = ("OpenVINO's CPU plugin crashes (SIGSEGV) under ONEDNN_MAX_CPU_ISA, the variable of the AVX2 "
                 "simulation; run these tests without it (real AVX2 CPUs run them)")


def openvino_usable() -> bool:
    """OpenVINO is installed and can run in this process (not under the AVX2 simulation: OPENVINO_SKIP)."""
    return importlib.util.find_spec("openvino") is not None and "ONEDNN_MAX_CPU_ISA" not in os.environ


def tiny_config(num_classes: int = 3, **model) -> Config:
    """A model small enough for unit tests on a CPU (about 0.1 s a step); ``model`` sets model fields."""
    cfg = Config()
    m = cfg.model
    m.backbone, m.tiny_widths = "tiny", [8, 16, 16, 32]
    m.neck_channels = m.hidden_dim = 32
    m.num_heads, m.dim_feedforward, m.dynamic_dim = 4, 64, 8
    m.num_proposals, m.num_stages, m.num_classes = 12, 2, num_classes
    m.min_size, m.max_size = 96, 160
    m.sampling_ratio = 1
    for k, v in model.items():
        setattr(m, k, v)
    return cfg


def small_train_config(**train) -> Config:
    """:func:`tiny_config` at 64 px with a 4-iteration CPU recipe (batch 2, no workers, a row every step, no
    validation or checkpoint in between); ``train`` sets train fields."""
    cfg = tiny_config(num_classes=5, min_size=64, max_size=64)
    t = cfg.train
    t.lr, t.batch_size, t.max_iters, t.warmup_iters = 1e-3, 2, 4, 2
    t.lr_steps, t.lr_steps_unit, t.num_workers, t.log_interval = [3], "iter", 0, 1
    t.eval_interval, t.checkpoint_interval, t.interval_unit = 0, 0, "iter"
    cfg.data.scale = 0.1
    for k, v in train.items():
        setattr(t, k, v)
    return cfg


def tiny_batch(sizes=((3, 100, 120), (3, 90, 70))):
    """Two random images; the first with two boxes (labels 1, 2), the second without ground truth."""
    images = [torch.rand(*s) for s in sizes]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [30.0, 5.0, 90.0, 40.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets


def run_cli(*args) -> tuple[int, str, str]:
    """``drmm ARGS`` in this process: (exit code, stdout, stderr). Arguments may be paths or numbers.

    ``--help`` and argparse usage errors end in ``SystemExit``; its code is returned like ``main``'s.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return code, out.getvalue(), err.getvalue()
