"""CPU inference latency: D-RMM R50 (300 proposals) vs torchvision Faster R-CNN and FCOS R50-FPN.

Batch 1, one 800 x 1216 image, random weights, eval mode under torch.inference_mode,
all three models in the same run (interleaved), median of N runs after 1 warm-up,
each in fp32 with the default (contiguous) memory format and with channels_last,
drmm also as ``drmm eval`` / ``predict`` run it (``Detector.optimize_for_inference``:
BatchNorms folded into the convs + channels_last), then drmm (optimised) and
Faster R-CNN (channels_last) under bf16 autocast;
every model is set to see the input unresized (short side = min_size, long side =
max_size). The in-model resize / normalise / pad and post-processing are included.
Prints ms/image and the ratio drmm / Faster R-CNN (target <= 1.0), plus each model's
FLOPs (torch.utils.flop_counter, one forward: 2 x multiply-adds of matmul / conv /
attention; RoIAlign, NMS and elementwise ops are not counted) and the achieved FLOP/s
against the machine's measured fp32 matrix-multiply FLOP/s (2048^3 torch.mm).

Caveat: with random weights the baselines' scores sit below their score thresholds,
so their NMS / post-processing is lighter than with trained weights; all ResNets use
nn.BatchNorm2d in eval mode here (torchvision's with weights_backbone=None, drmm's
released-recipe norms).

    python benchmarks/inference_latency.py [--threads 2] [--runs 5] [--size 800x1216]
        [--config configs/drmm_r50.yaml] [--set model.pooler=grid] [--profile]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fcos_resnet50_fpn

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import interleaved_latencies  # noqa: E402

from drmm.config import load_config  # noqa: E402
from drmm.models import build_detector  # noqa: E402

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
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16-autocast rows")
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
        "drmm": lambda: build_detector(cfg),
        "Faster R-CNN": lambda: fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=lo, max_size=hi),
        "FCOS": lambda: fcos_resnet50_fpn(weights=None, weights_backbone=None, min_size=lo, max_size=hi),
    }
    models = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        models[name] = build().eval().requires_grad_(False)
    images = [torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))]
    print(f"drmm: {cfg.model.architecture}, {cfg.model.backbone}, {cfg.model.num_proposals} proposals, "
          f"{cfg.model.num_stages} stages; baselines: torchvision R50-FPN, weights=None")

    peak = matmul_flops()
    print(f"fp32 matmul (2048^3 torch.mm): {peak / 1e9:.1f} GFLOP/s; input 1 x 3 x {h} x {w}")
    flops = {}
    for name, model in models.items():  # no_grad + frozen params: FlopCounterMode's hooks fail otherwise
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images)
        flops[name] = counter.get_total_flops()

    channels_last = {name: copy.deepcopy(m).to(memory_format=torch.channels_last) for name, m in models.items()}
    optimized = copy.deepcopy(models["drmm"]).optimize_for_inference()  # folded BN + channels_last (eval/predict)

    def runner(model: torch.nn.Module, bf16: bool = False) -> Callable[[], object]:
        def run() -> object:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(images)
        return run

    with torch.inference_mode():
        # fp32, default (contiguous) memory format and channels_last, every model in the same rounds
        runners = {}
        for name, model in models.items():
            runners[(name, "fp32")] = runner(model)
            runners[(name, "fp32 channels_last")] = runner(channels_last[name])
            if name == "drmm":
                runners[(name, "fp32 optimized")] = runner(optimized)
        med = interleaved_latencies(runners, args.runs)
        print(f"{'model':<14} {'mode':<20} {'ms/image':>9} {'GFLOP':>7} {'GFLOP/s':>8}")
        for (name, mode), t in med.items():
            achieved = flops[name] / t
            print(f"{name:<14} {mode:<20} {t * 1e3:9.1f} {flops[name] / 1e9:7.1f} {achieved / 1e9:8.1f} "
                  f"({100 * achieved / peak:.0f}% of matmul)")
        for mode in ("fp32", "fp32 channels_last"):
            print(f"ratio drmm / Faster R-CNN, both {mode}: {med[('drmm', mode)] / med[('Faster R-CNN', mode)]:.2f}; "
                  f"drmm / FCOS: {med[('drmm', mode)] / med[('FCOS', mode)]:.2f}")
        frcnn_best = min(med[("Faster R-CNN", "fp32")], med[("Faster R-CNN", "fp32 channels_last")])
        print(f"ratio drmm optimized (what drmm eval / predict run) / Faster R-CNN in its faster fp32 format: "
              f"{med[('drmm', 'fp32 optimized')] / frcnn_best:.2f} (median of {args.runs} runs)")

        if not args.no_bf16:
            runners = {("drmm", "bf16 optimized"): runner(optimized, bf16=True),
                       ("Faster R-CNN", "bf16 channels_last"): runner(channels_last["Faster R-CNN"], bf16=True)}
            med16 = interleaved_latencies(runners, args.runs)
            for (name, mode), t in med16.items():
                print(f"{name:<14} {mode:<20} {t * 1e3:9.1f} ms/image (autocast)")
            d, f = med16[("drmm", "bf16 optimized")], med16[("Faster R-CNN", "bf16 channels_last")]
            print(f"ratio drmm / Faster R-CNN under bf16 autocast: {d / f:.2f}")

        if args.profile:
            drmm_model = optimized
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                drmm_model(images)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
