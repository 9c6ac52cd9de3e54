"""Inference speed of a detector: network time per image on pre-made tensors.

Times ``model(images)`` in eval mode under ``torch.inference_mode`` (the in-model
resize / normalise / pad and the top-k post-processing included, data loading and
decoding excluded), after ``warmup`` untimed calls; reports the median of ``runs``
calls. bf16 / fp16 use ``torch.autocast``; on CUDA every call is synchronised and
the peak of ``torch.cuda.max_memory_allocated`` is reported.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import torch
from torch import nn

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def benchmark(
    model: nn.Module,
    size: tuple[int, int] = (800, 1216),
    batch: int = 1,
    device: str | torch.device = "cpu",
    runs: int = 10,
    warmup: int = 3,
    dtypes: tuple[str, ...] | list[str] = ("fp32", "bf16"),
    print_table: bool = True,
) -> list[dict[str, Any]]:
    """One row per dtype: median ms per batch and per image, images/s, CUDA peak memory (MiB)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    bad = [d for d in dtypes if d not in AUTOCAST_DTYPES]
    if bad:
        raise ValueError(f"unknown dtype(s) {bad}; choose from {list(AUTOCAST_DTYPES)}")
    if runs < 1 or warmup < 0 or batch < 1:
        raise ValueError("runs and batch must be >= 1, warmup >= 0")
    h, w = size
    model = model.to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=gen).to(dev) for _ in range(batch)]
    cuda = dev.type == "cuda"
    rows = []
    for name in dtypes:
        amp = AUTOCAST_DTYPES[name]
        ctx = torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        if cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        with torch.inference_mode(), ctx:
            for i in range(warmup + runs):
                if cuda:
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                model(images)
                if cuda:
                    torch.cuda.synchronize(dev)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append({
            "dtype": name, "device": str(dev), "batch": batch, "height": h, "width": w, "runs": runs,
            "ms_per_batch": 1000 * med, "ms_per_image": 1000 * med / batch, "images_per_s": batch / med,
            "max_memory_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None,
        })
    if print_table:
        print(format_bench_table(rows))
    return rows


def format_bench_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'dtype':<5}  {'device':<8}  {'batch':>5}  {'size':>9}  {'ms/img':>8}  {'img/s':>7}  {'peak MiB':>8}",
             "-" * 62]
    for r in rows:
        mem = "-" if r["max_memory_mib"] is None else f"{r['max_memory_mib']:.0f}"
        lines.append(f"{r['dtype']:<5}  {r['device']:<8}  {r['batch']:>5}  {str(r['height']) + 'x' + str(r['width']):>9}"
                     f"  {r['ms_per_image']:>8.1f}  {r['images_per_s']:>7.2f}  {mem:>8}")
    return "\n".join(lines)
