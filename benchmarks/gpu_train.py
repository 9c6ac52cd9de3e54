"""Training throughput and peak memory: D-RMM vs the Hungarian baseline (same architecture, same data).

The paper's R50 model (``configs/drmm_r50.yaml``: 300 proposals, 6 stages, 80
classes); the baseline is the same config with ``objective.name=hungarian`` (Sparse
R-CNN's box head and set loss). Each step is what ``Trainer.train_step`` does:
autocast forward with the objective, the finiteness check (a device sync), GradScaler
(fp16) backward, unscale, gradient clipping, AdamW step. Batches of COCO-sized random
images (``--size``, default 480 x 640, which the model resizes to 800 x 1067 as the
recipe's largest scale does) with a COCO-like number of ground truths (geometric,
mean ~7, at most 50). Per (batch, dtype) both objectives in the same run, one after the
other, each with a fresh model (peak memory is per model: parameters, AdamW state,
activations). Also times the Hungarian matching (the host round trip: cost matrix to
the CPU, one ``linear_sum_assignment`` per image and stage).

    python benchmarks/gpu_train.py [--batches 2,16] [--dtypes fp32,bf16,fp16] [--size 480x640] [--out DIR]
    python benchmarks/gpu_train.py --batches 2 --size 800x1333 --name train_memory_800x1333
    python benchmarks/gpu_train.py --smoke

Prints images/s, peak memory and the ratio D-RMM / Hungarian (goal >= 1.1x; peak
memory at batch 2 goal <= 7 GB, paper Table 11); writes ``train_step.json``.
"""
from __future__ import annotations

import argparse
import gc
import math
import time
from typing import Any

import numpy as np
import torch

import bench_common as bc
import drmm.objectives.hungarian as hungarian_module
from drmm.config import apply_overrides, load_config, packaged_config
from drmm.models import build_detector

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PAPER_MEMORY_GB = 7.0


def make_batch(batch: int, h: int, w: int, classes: int, seed: int) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    counts = np.minimum(np.random.default_rng(seed).geometric(1 / 8, size=batch), 50)  # 1..50, mean ~7
    images, targets = [], []
    for n in counts:
        images.append(torch.rand(3, h, w, generator=g))
        size = torch.tensor([w, h], dtype=torch.float32)
        wh = torch.rand(int(n), 2, generator=g) ** 2 * size * 0.5 + 8
        xy = torch.rand(int(n), 2, generator=g) * (size - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(classes, (int(n),), generator=g)})
    return images, targets


class MatchTimer:
    """Wraps the Hungarian objective's matcher and sums the seconds spent in it."""

    def __init__(self) -> None:
        self.seconds, self.real = 0.0, hungarian_module.hungarian_match

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        out = self.real(*args, **kwargs)
        self.seconds += time.perf_counter() - t
        return out


def run_cell(cfg, objective: str, images, targets, dtype: str, device: torch.device, runs: int, warmup: int,
             timer: MatchTimer, profile: bool = False) -> dict[str, Any]:
    """Median step of one fresh model; peak memory over its warm-up and timed steps."""
    torch.manual_seed(0)
    c = apply_overrides(cfg, [f"objective.name={objective}"])
    model = build_detector(c).to(device).eval()
    with torch.autocast(device.type, enabled=False):
        bc.trained_like(model, lambda: model([im.to(device) for im in images[:1]]))  # stable activations
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c.train.lr, weight_decay=c.train.weight_decay)
    amp = DTYPES[dtype]
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    imgs = [im.to(device) for im in images]
    tgts = [{k: v.to(device) for k, v in t.items()} for t in targets]
    bc.peak_memory_reset(device)

    def step() -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = sum(model(imgs, tgts).values())
        opt.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss.detach()))  # the trainer's sync point
        t1 = time.perf_counter()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = float(torch.nn.utils.clip_grad_norm_(params, c.train.clip_norm))
        scaler.step(opt)
        scaler.update()
        value = float(loss.detach())  # the trainer reads every loss: syncs after the AdamW step
        return t1 - t0, time.perf_counter() - t0, value if finite else math.nan, norm

    warm = [step() for _ in range(warmup)]
    timer.seconds = 0.0
    steps = [step() for _ in range(runs)]
    losses = [s[2] for s in warm + steps]  # every step, warm-up included: the loss must stay finite throughout
    row = {
        "step_ms": 1000 * bc.median([s[1] for s in steps]), "forward_ms": 1000 * bc.median([s[0] for s in steps]),
        "step_ms_min": 1000 * min(s[1] for s in steps), "step_ms_max": 1000 * max(s[1] for s in steps),
        "matching_ms": 1000 * timer.seconds / runs if objective == "hungarian" else 0.0,
        "last_loss": steps[-1][2], "finite": all(math.isfinite(x) for x in losses),
        "nonfinite_steps": sum(not math.isfinite(x) for x in losses), "steps": len(losses),
        "peak_allocated_gib": None if device.type != "cuda" else torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gib": None if device.type != "cuda" else torch.cuda.max_memory_reserved(device) / 2**30,
    }
    row["images_per_s"] = len(images) / (row["step_ms"] / 1000)
    if profile:
        acts = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(3):
                step()
        sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        row["profile"] = prof.key_averages().table(sort_by=sort, row_limit=25)
    del model, opt, params
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="train_step")
    ap.add_argument("--config", default=packaged_config("drmm_r50.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batches", default="2,16")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16")
    ap.add_argument("--size", default="480x640", help="image HxW before the model's resize (COCO median 480x640)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="profile 3 steps of each objective at the first cell")
    ap.add_argument("--budget-s", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = bc.pick_device(args.device)
    torch.backends.cudnn.benchmark = True
    overrides = ["model.pretrained=null", "model.train_min_sizes=null", *args.overrides]
    if args.smoke:
        args.batches, args.size, args.runs, args.warmup = "2", "64x96", 1, 1
        overrides += ["model.min_size=64", "model.max_size=96", "model.num_proposals=20", "model.num_stages=2",
                      "model.backbone=resnet18", "model.dim_feedforward=256"]
    cfg = load_config(args.config, overrides)
    out, budget = bc.out_dir(args.out), bc.Budget(args.budget_s)
    env = bc.environment(device)
    print(bc.describe(env), flush=True)
    h, w = bc.parse_size(args.size)
    hungarian_module.hungarian_match = timer = MatchTimer()
    rows: list[dict[str, Any]] = []
    payload = {"environment": env, "config": args.config, "overrides": overrides, "size": [h, w], "rows": rows}
    profiles = []
    for batch in bc.parse_list(args.batches, int):
        images, targets = make_batch(batch, h, w, cfg.model.num_classes, seed=batch)
        for dtype in bc.parse_list(args.dtypes):
            for objective in ("drmm", "hungarian"):
                row = {"objective": objective, "batch": batch, "dtype": dtype,
                       "gt_per_image": sum(len(t["labels"]) for t in targets) / batch}
                if budget.expired():
                    rows.append({**row, "skipped": "time budget"})
                    continue
                try:
                    row.update(run_cell(cfg, objective, images, targets, dtype, device, args.runs, args.warmup,
                                        timer, profile=args.profile and len(profiles) < 2))
                except torch.cuda.OutOfMemoryError:
                    row["error"] = "out of memory"
                except Exception as e:  # noqa: BLE001 - one failing cell must not end the run
                    row["error"] = f"{type(e).__name__}: {e}"[:500]
                if "profile" in row:
                    profiles.append(f"== {objective}, batch {batch}, {dtype}\n{row.pop('profile')}")
                rows.append(row)
                print(f"{objective:<9} b{batch:<3} {dtype}: " + (row.get("error") or (
                    f"{row['images_per_s']:7.2f} img/s, step {row['step_ms']:7.1f} ms "
                    f"(forward {row['forward_ms']:.1f}, "
                    f"matching {row['matching_ms']:.1f}), peak {row['peak_allocated_gib'] or 0:.2f} GiB, "
                    f"loss {row['last_loss']:.4g}")), flush=True)
                bc.write_json(out / f"{args.name}.json", payload)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if profiles:
        (out / f"profile_{args.name}.txt").write_text("\n\n".join(profiles))
    print_summary(rows, env, (h, w))


def print_summary(rows: list[dict[str, Any]], env: dict[str, Any], size: tuple[int, int]) -> None:
    done = [r for r in rows if "images_per_s" in r]
    print(f"\n{bc.describe(env)}; images {size[0]}x{size[1]}")
    print(bc.table(done, [("objective", "objective", ""), ("batch", "batch", ""), ("dtype", "dtype", ""),
                          ("images_per_s", "img/s", ".2f"), ("step_ms", "step ms", ".1f"),
                          ("forward_ms", "fwd+loss ms", ".1f"), ("matching_ms", "matching ms", ".1f"),
                          ("peak_allocated_gib", "peak GiB", ".2f"), ("peak_reserved_gib", "reserved GiB", ".2f"),
                          ("finite", "finite", "")]))
    for r in rows:
        if "error" in r or "skipped" in r:
            print(f"not measured: {r['objective']} b{r['batch']} {r['dtype']}: {r.get('error') or r['skipped']}")
    by = {(r["objective"], r["batch"], r["dtype"]): r for r in done}
    for (obj, batch, dtype), r in sorted(by.items()):
        o = by.get(("hungarian", batch, dtype))
        if obj != "drmm" or o is None:
            continue
        ratio = r["images_per_s"] / o["images_per_s"]
        mem = "" if r["peak_allocated_gib"] is None else (
            f"; peak {r['peak_allocated_gib']:.2f} vs {o['peak_allocated_gib']:.2f} GiB")
        goal = f" (paper: 7 GB at batch 2: {'met' if r['peak_allocated_gib'] <= PAPER_MEMORY_GB else 'missed'})" \
            if batch == 2 and r["peak_allocated_gib"] is not None else ""
        print(f"D-RMM / Hungarian b{batch} {dtype}: {ratio:.2f}x images/s (goal >= 1.1x: "
              f"{'met' if ratio >= 1.1 else 'missed'}){mem}{goal}")


if __name__ == "__main__":
    main()
