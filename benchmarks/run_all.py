"""``make bench``: the benchmarks of the device present, one after the other (never in parallel).

On a CPU: objective cost, inference latency, RoI pooling, training step (D-RMM vs
Hungarian) and data loading. With CUDA: the objective cost on the GPU, the inference
sweep (no torch.compile), training steps + memory and data loading; the whole GPU set
(compile, long runs, torchrun, CUDA tests) is ``make bench-gpu`` (benchmarks/gpu_suite.sh).
Every script prints ratios measured in its own run.

    python benchmarks/run_all.py [--device cpu|cuda] [--smoke]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
CPU = [["objective_cost.py"], ["inference_latency.py"], ["roi_pooling.py"], ["train_step.py"],
       ["data_loading.py", "--n", "32", "--workers", "1,2", "--train-iters", "20"]]
CUDA = [["objective_cost.py", "--device", "cuda"], ["gpu_inference.py", "--no-compile"],
        ["gpu_train.py"], ["data_loading.py", "--train-iters", "30"]]
SMOKE_ABLE = {"gpu_inference.py", "gpu_train.py", "data_loading.py"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="only the scripts with --smoke, tiny (checks they run)")
    args = ap.parse_args()
    for script, *rest in CUDA if args.device == "cuda" else CPU:
        if args.smoke:
            if script not in SMOKE_ABLE:
                continue
            rest = [*rest, "--smoke", "--device", args.device]
        print(f"== {script} {' '.join(rest)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *rest], check=True)


if __name__ == "__main__":
    main()
