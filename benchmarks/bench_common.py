"""Helpers shared by the benchmark scripts: output folder, environment record, timing, tables, a time budget.

Not a benchmark itself (``run_all.py`` skips it). Scripts import it as ``bench_common``
(their own folder is on ``sys.path`` when run as ``python benchmarks/NAME.py``).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision


def pick_device(name: str | None) -> torch.device:
    """``name``, or CUDA when present, else the CPU; CUDA asked for but absent is an error."""
    dev = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} requested but CUDA is not available")
    return dev


def out_dir(path: str | None) -> Path:
    """``path``, else ``$OUT`` (the GPU machine's result folder), else ``bench_out/``; created."""
    out = Path(path or os.environ.get("OUT") or "bench_out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def environment(device: torch.device) -> dict[str, Any]:
    """What a figure needs next to it: device, library versions, date, cores and load."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_avg": [round(x, 2) for x in os.getloadavg()],
        "device": str(device), "argv": sys.argv,
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), sm_count=p.multi_processor_count)
    return env


def describe(env: dict[str, Any]) -> str:
    where = env.get("gpu") or f"{env['cpu']} ({env['torch_threads']} threads)"
    return (f"{where}; torch {env['torch']}, torchvision {env['torchvision']}, cuda {env.get('cuda', '-')}; "
            f"{env['cpu_count']} CPU cores, load {env['load_avg']}; {env['date']}")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=1, default=str))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, runs: int, warmup: int) -> list[float]:
    """Seconds of each of ``runs`` calls after ``warmup`` untimed ones (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def interleaved_latencies(runners: dict[Any, Callable[[], Any]], runs: int) -> dict[Any, float]:
    """Median seconds per call of each CPU runner: 1 warm-up, then ``runs`` rounds interleaved across runners.

    Interleaving makes load drift hit every model alike, so ratios within one call compare.
    """
    times: dict[Any, list[float]] = {name: [] for name in runners}
    for i in range(1 + runs):
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            if i:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table: ``columns`` are (key, header, format spec); missing values print as ``-``."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append(["-" if r.get(k) is None else format(r[k], f) if f else str(r[k]) for k, _, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


class Budget:
    """Wall-clock allowance of a script: ``expired()`` once ``seconds`` have passed (None: never)."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = time.monotonic() + seconds if seconds else None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


@torch.no_grad()
def trained_like(model: torch.nn.Module, run: Callable[[], Any], residual_scale: float = 0.1) -> int:
    """Random weights with trained-like activations: small residual branches, BatchNorm statistics measured.

    With BatchNorm statistics of 0 / 1 a random ResNet normalises nothing and its
    activations grow layer after layer (fp16 overflows a random ResNet-101); with
    statistics measured but full residual branches it is chaotic (bf16 rounding
    changes its outputs by ~40%), unlike a trained network. So the last BatchNorm of
    every torchvision residual block is scaled by ``residual_scale`` (as Fixup /
    SkipInit start), then every BatchNorm takes the mean / variance of its input in
    one call of ``run`` (each after the earlier ones were set, in the same pass).
    The amount of work is unchanged. Returns how many BatchNorms were set.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for block in model.modules():
        if isinstance(block, (Bottleneck, BasicBlock)):
            (block.bn3 if isinstance(block, Bottleneck) else block.bn2).weight.mul_(residual_scale)

    def set_stats(module: torch.nn.Module, inputs: tuple) -> None:
        x = inputs[0].float()
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))

    norms = [m for m in model.modules() if isinstance(getattr(m, "running_var", None), torch.Tensor)]
    hooks = [m.register_forward_pre_hook(set_stats) for m in norms]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return len(norms)


def parse_list(text: str, kind: type = str) -> list:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def onnx_backends(path: Path, threads: int) -> dict[str, Any]:
    """``drmm predict --onnx``'s backends for one exported graph: onnxruntime f32, OpenVINO f32 and bf16.

    The OpenVINO rows are left out, with the reason printed, when OpenVINO is not
    installed or (bf16) the CPU has no bfloat16 instructions.
    """
    from drmm.onnx_predict import OnnxDetector

    found = {"onnxruntime f32": OnnxDetector(path, threads)}
    for precision in ("f32", "bf16"):
        try:
            found[f"openvino {precision}"] = OnnxDetector(path, threads, "openvino", precision)
        except RuntimeError as e:
            print(f"openvino {precision} skipped: {e}")
    return found
