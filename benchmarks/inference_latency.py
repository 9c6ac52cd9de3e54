"""CPU inference latency: D-RMM R50 (300 proposals) vs torchvision Faster R-CNN and FCOS R50-FPN.

Batch 1, one 800 x 1216 image, random weights, eval mode under torch.inference_mode,
all three models in the same run (interleaved), median of N runs after 1 warm-up;
every model is set to see the input unresized (short side = min_size, long side =
max_size). The in-model resize / normalise / pad and post-processing are included.
Prints ms/image and the ratio drmm / Faster R-CNN (target <= 1.0), plus each model's
FLOPs (torch.utils.flop_counter, one forward: 2 x multiply-adds of matmul / conv /
attention; RoIAlign, NMS and elementwise ops are not counted) and the achieved FLOP/s
against the machine's measured fp32 matrix-multiply FLOP/s (2048^3 torch.mm).

Caveat: with random weights the baselines' scores sit below their score thresholds,
so their NMS / post-processing is lighter than with trained weights; torchvision's
ResNets use nn.BatchNorm2d here (weights_backbone=None), drmm FrozenBatchNorm2d.

    python benchmarks/inference_latency.py [--threads 2] [--runs 5] [--size 800x1216]
        [--config configs/drmm_r50.yaml] [--set model.pooler=grid] [--profile]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fcos_resnet50_fpn

from drmm.config import load_config
from drmm.models import build_detector

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "drmm_r50.yaml"


def matmul_flops(n: int = 2048, runs: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", default="800x1216", help="input HxW (default 800x1216)")
    ap.add_argument("--config", default=str(CONFIG), help="drmm config (default configs/drmm_r50.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a drmm config value, e.g. --set model.pooler=grid (repeatable)")
    ap.add_argument("--profile", action="store_true", help="print drmm's top 15 ops by self CPU time")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    lo, hi = min(h, w), max(h, w)
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads; "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}")

    cfg = load_config(args.config, args.overrides + [f"model.min_size={lo}", f"model.max_size={hi}",
                                                     "model.pretrained=null"])
    builders = {
        f"drmm ({cfg.model.backbone}, {cfg.model.num_proposals} proposals)": lambda: build_detector(cfg),
        "Faster R-CNN R50-FPN": lambda: fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=lo, max_size=hi),
        "FCOS R50-FPN": lambda: fcos_resnet50_fpn(weights=None, weights_backbone=None, min_size=lo, max_size=hi),
    }
    models = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        models[name] = build().eval().requires_grad_(False)
    images = [torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))]

    peak = matmul_flops()
    print(f"fp32 matmul (2048^3 torch.mm): {peak / 1e9:.1f} GFLOP/s; input 1 x 3 x {h} x {w}")
    flops = {}
    for name, model in models.items():  # no_grad + frozen params: FlopCounterMode's hooks fail otherwise
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images)
        flops[name] = counter.get_total_flops()
    with torch.inference_mode():
        times = {name: [] for name in models}
        for i in range(1 + args.runs):  # 1 warm-up; interleaved so load drift hits all models alike
            for name, model in models.items():
                t = time.perf_counter()
                model(images)
                if i:
                    times[name].append(time.perf_counter() - t)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        for name in models:
            achieved = flops[name] / med[name]
            print(f"{name:<34} {med[name] * 1e3:8.1f} ms/image  {flops[name] / 1e9:6.1f} GFLOP  "
                  f"{achieved / 1e9:6.1f} GFLOP/s ({100 * achieved / peak:.0f}% of matmul)")
        drmm, frcnn, fcos = med.values()
        print(f"ratio drmm / Faster R-CNN: {drmm / frcnn:.2f}, drmm / FCOS: {drmm / fcos:.2f} "
              f"(median of {args.runs} runs)")

        if args.profile:
            drmm_model = next(iter(models.values()))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                drmm_model(images)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
