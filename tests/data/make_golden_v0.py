"""Writes golden_v0.json and old_layout_*.pt: REGRESSION PINS from drmm before the redesign.

Run once, with the code of commit cf0f0aa (before issue 11's redesign), from the
repository root: ``python tests/data/make_golden_v0.py``. It uses only the public
API (build_detector, model(images, targets), state_dict), so the test that reads
the files (tests/test_golden.py) checks that the redesign changed no loss, no
detection and no checkpoint key. Do not regenerate them with newer code: that
would turn the pin into a test of the code against itself.
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_golden import CASES, golden_batch, golden_config  # noqa: E402

from drmm import build_detector  # noqa: E402

HERE = Path(__file__).parent


def main() -> None:
    out = {}
    for name in CASES:
        torch.manual_seed(0)
        cfg = golden_config(name)
        model = build_detector(cfg)
        images, targets = golden_batch()
        model.train()
        torch.manual_seed(1)
        losses = {k: float(v) for k, v in model(images, targets).items()}
        model.eval()
        with torch.no_grad():
            dets = model(images)
        out[name] = {
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "losses": losses,
            "detections": [{k: v.tolist() for k, v in d.items()} for d in dets],
        }
        if name in ("sparse_rcnn_drmm", "adamixer_drmm"):
            torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": None,
                        "cat_ids": None, "version": "0.1.0"}, HERE / f"old_layout_{name}.pt")
    (HERE / "golden_v0.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
