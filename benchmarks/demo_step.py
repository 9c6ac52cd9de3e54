"""Per-step profile of the `make demo` recipe on this CPU: where a training step's time goes.

One step = the trainer's step on a batch of the built-in data (128 x 128 scenes, the
recipe's batch size, flip as in training): forward + objective under the recipe's
autocast, backward, clipping, fused AdamW. Prints the machine line (CPU, instruction
set torch uses, bf16 support, torch), the median step in fp32 and, where the CPU has
bf16 instructions, in bf16, and the top operators by self time (torch.profiler).
Run it once as is and once with the AVX2 variables to profile both kinds of CPU:

    python benchmarks/demo_step.py [--set model.sampling_points=4] [--runs 20]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/demo_step.py
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from drmm.config import load_config, packaged_config
from drmm.data import build_dataset, build_transforms, collate_fn, generate_synthetic
from drmm.hardware import describe_machine, native_bf16
from drmm.models import build_detector


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=None, help="recipe (default: the packaged demo.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=15, help="operators listed in the profile")
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone and the decoder (inductor)")
    ap.add_argument("--channels-last", action="store_true", help="backbone weights in channels_last")
    ap.add_argument("--amps", default=None, help="comma-separated of none, bf16 (default: none, + bf16 if native)")
    args = ap.parse_args()
    cfg = load_config(args.config or packaged_config("demo.yaml"), args.overrides)
    torch.set_num_threads(cfg.train.threads or 2)
    print(f"machine: {describe_machine()}")
    t = cfg.train
    print(f"recipe: {args.config or 'demo.yaml'} {' '.join(args.overrides)}; batch {t.batch_size}")

    with tempfile.TemporaryDirectory() as tmp:
        generate_synthetic(tmp, t.batch_size * 4, 1, seed=0, image_size=128, progress=False)
        data = build_dataset(cfg.data, f"{tmp}/annotations/train.json", f"{tmp}/train",
                             build_transforms(cfg.data, True), progress=False)
        batches = [collate_fn([data[i + j] for j in range(t.batch_size)])
                   for i in range(0, 4 * t.batch_size, t.batch_size)]

    amps = args.amps.split(",") if args.amps else ["none"] + (["bf16"] if native_bf16() else [])
    for amp in amps:
        torch.manual_seed(0)
        model = build_detector(cfg).train()
        if args.channels_last:
            model.backbone.to(memory_format=torch.channels_last)
        if args.compile:
            model.backbone = torch.compile(model.backbone)
            model.decoder = torch.compile(model.decoder)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
        dtype = torch.bfloat16 if amp == "bf16" else None

        def step(i: int) -> None:
            images, targets = batches[i % len(batches)]
            ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
            with ctx:
                loss = sum(model(list(images), list(targets)).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.clip_norm)
            opt.step()

        times = []
        t_start = time.perf_counter()
        for i in range(args.warmup + args.runs):
            if i == args.warmup:
                print(f"warm-up ({args.warmup} steps, compilation included): {time.perf_counter() - t_start:.1f} s")
            t0 = time.perf_counter()
            step(i)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"\n== amp {amp}: step {med * 1e3:.0f} ms median of {args.runs} "
              f"({min(times) * 1e3:.0f}-{max(times) * 1e3:.0f}); {t.max_iters} iterations = "
              f"{med * t.max_iters / 60:.1f} min of training")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(3):
                step(i)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
