"""Training step time: D-RMM vs the Hungarian baseline, same architecture, same batch.

One step = forward with the objective + backward + gradient clipping + AdamW step, as
in the trainer. Default: the CPU demo recipe (drmm/configs/demo_cpu.yaml), batch 8 of
128 x 128 random images with 4 random boxes each. The baseline is the same config with
objective.name=hungarian (box head instead of the mixture head). Both models are
built from the same seed and stepped alternately on the same fixed batch; the model
sees the input unresized (min_size / max_size set to it, no multi-scale). Median of N
steps after warm-up; prints the ratio D-RMM / Hungarian (target <= 1.0).

    python benchmarks/train_step.py [--threads 2] [--runs 30] [--warmup 3]
    python benchmarks/train_step.py --config configs/drmm_r50.yaml --batch 2 --size 512x512 --runs 5
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torchvision

from drmm.config import apply_overrides, load_config, packaged_config
from drmm.models import build_detector


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--config", default=None, help="YAML config (default: the packaged demo_cpu.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (repeatable)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", default="128x128", help="input HxW (default 128x128)")
    ap.add_argument("--boxes", type=int, default=4, help="ground-truth boxes per image")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads; "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}")

    cfg = load_config(args.config or packaged_config("demo_cpu.yaml"), args.overrides + [
        f"model.min_size={min(h, w)}", f"model.max_size={max(h, w)}", "model.train_min_sizes=null",
        "model.pretrained=null"])
    m = cfg.model
    print(f"config {args.config or 'demo_cpu.yaml'}: {m.backbone}, {m.num_proposals} proposals, {m.num_stages} stages, "
          f"{m.num_classes} classes; batch {args.batch} x 3 x {h} x {w}, {args.boxes} boxes per image")

    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=g) for _ in range(args.batch)]
    targets = []
    for _ in range(args.batch):
        wh = torch.rand(args.boxes, 2, generator=g) * torch.tensor([w, h]) * 0.4 + 8
        xy = torch.rand(args.boxes, 2, generator=g) * (torch.tensor([w, h]) - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                        "labels": torch.randint(m.num_classes, (args.boxes,), generator=g)})

    runs = {}
    for name in ("drmm", "hungarian"):
        c = apply_overrides(cfg, [f"objective.name={name}"])
        torch.manual_seed(0)
        model = build_detector(c).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=c.train.lr, weight_decay=c.train.weight_decay)
        runs["D-RMM" if name == "drmm" else "Hungarian"] = (model, params, opt, c.train.clip_norm)

    def step(model, params, opt, clip) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        loss = sum(model(images, targets).values())
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        return t1 - t0, time.perf_counter() - t0, float(loss.detach())

    times = {name: [] for name in runs}
    for i in range(args.warmup + args.runs):  # alternate so load drift hits both alike
        for name, r in runs.items():
            t = step(*r)
            if i >= args.warmup:
                times[name].append(t)
    med = {}
    for name, ts in times.items():
        fwd, total = (statistics.median(t[j] for t in ts) for j in (0, 1))
        med[name] = total
        print(f"{name:<9}: step {total * 1e3:7.1f} ms (forward + loss {fwd * 1e3:6.1f} ms, "
              f"backward + clip + AdamW {(total - fwd) * 1e3:6.1f} ms); last loss {ts[-1][2]:.3g}")
    print(f"ratio D-RMM / Hungarian: {med['D-RMM'] / med['Hungarian']:.2f} (median of {args.runs} steps)")


if __name__ == "__main__":
    main()
