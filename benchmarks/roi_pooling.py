"""RoI pooling: GridRoIAlign (one grid_sample) vs torchvision's roi_align (per level; both aligned by default).

Forward + backward over all FPN levels for a batch of proposals, median of N runs,
both measured in the same run. Prints the ratio torchvision / grid (> 1: grid faster).

    python benchmarks/roi_pooling.py [--threads 2] [--runs 10]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import OrderedDict

import torch
import torchvision

from drmm.models.poolers import GridRoIAlign, TorchvisionRoIAlign

CASES = {  # name: (batch, proposals, channels, H, W, sampling_ratio)
    "demo (8 x 100 RoIs, 64 ch, 128 px, sr 1)": (8, 100, 64, 128, 128, 1),
    "COCO-like (2 x 300 RoIs, 256 ch, 800 x 1216, sr 2)": (2, 300, 256, 800, 1216, 2),
}


def time_it(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads; "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    g = torch.Generator().manual_seed(0)
    for name, (B, K, C, H, W, sr) in CASES.items():
        feats = OrderedDict((f"p{l}", torch.randn(B, C, H // 2**l, W // 2**l, generator=g).requires_grad_())
                            for l in range(2, 6))
        xy = torch.rand(B, K, 2, generator=g) * torch.tensor([W, H]) * 0.8
        wh = torch.rand(B, K, 2, generator=g) ** 2 * torch.tensor([W, H]) * 0.5 + 4
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([W, H]))], -1)
        result = {}
        for label, pooler in (("torchvision", TorchvisionRoIAlign(list(feats), 7, sr)),
                              ("grid", GridRoIAlign(list(feats), 7, sr))):
            def step():
                out = pooler(feats, boxes, (H, W))
                out.sum().backward()
            result[label] = time_it(step, args.runs)
        print(f"{name}: torchvision {result['torchvision'] * 1e3:.1f} ms, grid {result['grid'] * 1e3:.1f} ms, "
              f"ratio {result['torchvision'] / result['grid']:.2f}x")


if __name__ == "__main__":
    main()
