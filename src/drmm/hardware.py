"""What this machine can do: bf16 instructions, the CPU, the versions a bug report needs.

bf16 autocast on a CPU without AVX512-BF16 or AMX is emulated by oneDNN and about
12x slower than fp32 (measured: 6.5 s against 0.56 s a demo step on an AVX2-only AMD
EPYC), so every command that would run bf16 on such a CPU asks :func:`resolve_amp`,
which warns in one line and falls back to fp32 unless the user insisted.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import sys
from typing import Any

import torch

logger = logging.getLogger("drmm")


def native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); False when torch cannot tell.

    oneDNN's own probe, so ``ONEDNN_MAX_CPU_ISA=AVX2`` (the AVX2 simulation) makes it False too.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(amp: str, device: torch.device | str, *, forced: bool = False, what: str = "train.amp",
                insist: str | None = None) -> str:
    """The AMP mode to run: ``amp``, or ``"none"`` for bf16 on a CPU without bf16 instructions.

    ``forced`` (the user named bf16 on the command line) keeps bf16 there, with the warning;
    ``insist`` is how the user would force it (default ``--set WHAT=bf16``).
    """
    if amp != "bf16" or torch.device(device).type != "cpu" or native_bf16():
        return amp
    if forced:
        logger.warning("%s=bf16 on a CPU without bf16 instructions: oneDNN emulates them, about 12x slower "
                       "than fp32 (kept because you asked for it)", what)
        return amp
    logger.warning("this CPU has no bf16 instructions (AVX512-BF16 / AMX): %s=bf16 would be emulated, about 12x "
                   "slower; running fp32 instead (%s on the command line insists)", what, insist or f"--set {what}=bf16")
    return "none"


def named_on_command_line(overrides: list[str], key: str) -> bool:
    """Whether ``--set KEY=...`` is among ``overrides``."""
    return any(o.split("=", 1)[0].strip() == key for o in overrides)


def _cpuinfo(prefixes: tuple[str, ...]) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line starting with one of ``prefixes`` (None without one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(prefixes) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else the platform's word for it)."""
    return _cpuinfo(("model name", "Model")) or platform.processor() or platform.machine() or "unknown"


_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "asimd", "sve", "bf16")


def cpu_flags() -> list[str]:
    """The instruction-set flags that matter for speed (``/proc/cpuinfo``; empty where it has none)."""
    have = set((_cpuinfo(("flags", "Features")) or "").split())
    return [flag for flag in _FLAGS if flag in have]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def system_info() -> dict[str, Any]:
    """Everything a bug report or a quoted time needs, as plain values."""
    from . import __version__

    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return {
        "drmm": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": native_bf16(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda,
        "cuda_devices": cuda,
        "isa_env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
                    if k in os.environ},
    }


def describe_machine() -> str:
    """One line naming the machine for a quoted time: CPU, instruction set, bf16, threads, torch."""
    i = system_info()
    bf16 = "bf16 native" if i["bf16_native"] else "no bf16"
    return f"{i['cpu']}, {i['cpu_capability']} ({bf16}), {i['threads']} threads, torch {i['torch']}"
