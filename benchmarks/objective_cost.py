"""Objective cost: D-RMM loss vs the Hungarian baseline (matching + losses), forward + backward.

COCO-like scale: batch 16, 300 proposals, 80 classes, 6 stages, 800 x 1216 images,
ground truths per image from a clipped geometric draw (0..50, mean about 7, fixed
seed). Stage outputs are random leaf tensors (mixture head for D-RMM: boxes,
class_logits, objectness_logit, raw_scale; box head for Hungarian: boxes,
class_logits); only the objective is timed, both in the same run, interleaved,
median of N runs after warm-up. Prints the ratio Hungarian / D-RMM (target on the
CPU: >= 5x).

    python benchmarks/objective_cost.py [--threads 2] [--runs 20] [--warmup 3] [--device cpu|cuda]
                                        [--batch 16] [--proposals 300] [--stages 6]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import scipy
import torch
import torchvision

from drmm.objectives import DRMMObjective, HungarianObjective
from drmm.structures import StageOutput

H, W = 800, 1216


def random_boxes(n: int, g: torch.Generator, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Valid xyxy boxes inside the image, sides 4 px .. half the image."""
    size = torch.tensor([W, H], dtype=torch.float32)
    wh = torch.rand(*shape, n, 2, generator=g) ** 2 * size * 0.5 + 4
    xy = torch.rand(*shape, n, 2, generator=g) * (size - wh)
    return torch.cat([xy, xy + wh], -1)


def make_stages(B: int, K: int, C: int, S: int, mixture: bool, device: torch.device, seed: int) -> list[StageOutput]:
    g = torch.Generator().manual_seed(seed)
    leaf = lambda t: t.to(device).requires_grad_()  # noqa: E731
    stages = []
    for _ in range(S):
        boxes = random_boxes(K, g, (B,))
        stages.append(StageOutput(
            proposals=boxes.clone().to(device), boxes=leaf(boxes), class_logits=leaf(torch.randn(B, K, C, generator=g)),
            objectness_logit=leaf(torch.randn(B, K, generator=g)) if mixture else None,
            raw_scale=leaf(torch.randn(B, K, 4, generator=g) + 3) if mixture else None,
        ))
    return stages


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, cuda (default cpu)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--proposals", type=int, default=300)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--stages", type=int, default=6)
    ap.add_argument("--max-gt", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    print(f"machine: {platform.processor() or platform.machine()}, {where}; torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, scipy {scipy.__version__}")

    B, K, C = args.batch, args.proposals, args.classes
    counts = np.minimum(np.random.default_rng(1).geometric(1 / 8, size=B) - 1, args.max_gt)  # mean 7, clipped
    g = torch.Generator().manual_seed(1)
    targets = [{"boxes": random_boxes(int(n), g).to(device),
                "labels": torch.randint(C, (int(n),), generator=g).to(device)} for n in counts]
    print(f"batch {B}, {K} proposals, {C} classes, {args.stages} stages, {H} x {W}; "
          f"ground truths per image: mean {counts.mean():.1f}, max {counts.max()}, total {counts.sum()}")

    sizes = [(H, W)] * B
    cases = {
        "D-RMM": (DRMMObjective(), make_stages(B, K, C, args.stages, True, device, 2)),
        "Hungarian": (HungarianObjective(), make_stages(B, K, C, args.stages, False, device, 2)),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(objective, stages, backward: bool) -> None:
        for s in stages:
            for t in (s.boxes, s.class_logits, s.objectness_logit, s.raw_scale):
                if t is not None:
                    t.grad = None
        loss = sum(objective(stages, targets, sizes).values())
        if backward:
            loss.backward()

    times = {(name, bw): [] for name in cases for bw in (False, True)}
    for i in range(args.warmup + args.runs):  # interleaved: drift on a busy machine hits both alike
        for (name, bw), ts in times.items():
            sync()
            t0 = time.perf_counter()
            step(*cases[name], bw)
            sync()
            if i >= args.warmup:
                ts.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    for name in cases:
        print(f"{name:<9}: forward {med[name, False]:7.1f} ms, forward + backward {med[name, True]:7.1f} ms")
    print(f"ratio Hungarian / D-RMM: forward {med['Hungarian', False] / med['D-RMM', False]:.2f}x, "
          f"forward + backward {med['Hungarian', True] / med['D-RMM', True]:.2f}x "
          f"(median of {args.runs} runs, {device.type})")


if __name__ == "__main__":
    main()
