"""Run ``drmm train`` (optionally under ``torchrun --nproc_per_node=1``) and summarise its log.

For the GPU suite's long runs (the loss stays finite for 500+ iterations in fp16 and
bf16 with the paper's recipe) and the NCCL + SyncBatchNorm run. Everything after
``--`` goes to ``drmm train``. The summary (iterations, steps skipped, loss range,
seconds per iteration, share of the step spent waiting for data, peak GPU memory,
what the trainer said about SyncBatchNorm / the process group) is added under
``--name`` to ``runs.json`` (or ``--json``) in ``--out`` / ``$OUT``.

    python benchmarks/train_run.py --name fp16_600 --data DIR -- --config configs/drmm_r50.yaml --set train.amp=fp16
    python benchmarks/train_run.py --name torchrun --torchrun --data DIR -- --config ... --set train.sync_bn=true
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_common as bc


def summarise(run_dir: Path, returncode: int | str, seconds: float, stderr: str) -> dict[str, Any]:
    rows = []
    if (run_dir / "log.jsonl").is_file():
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("type") == "train"]
    losses = [r["loss"] for r in train]
    out: dict[str, Any] = {"returncode": returncode, "wall_s": round(seconds, 1), "logged_steps": len(train)}
    if train:
        later = train[1:] or train  # the first row holds the workers' start-up
        data = sum(r.get("data_time", 0) for r in later)
        step = sum(r.get("step_time", 0) for r in later)
        out.update(
            last_step=train[-1]["step"], all_finite=all(math.isfinite(x) for x in losses),
            loss_first=losses[0], loss_last=losses[-1], loss_min=min(losses), loss_max=max(losses),
            seconds_per_iter=(train[-1]["time"] - train[0]["time"]) / max(1, train[-1]["step"] - train[0]["step"]),
            data_share=data / (data + step) if data + step else None,
            peak_memory_gib=max((r.get("max_memory_gib") or 0) for r in train) or None,
        )
    keys = ("SyncBatchNorm", "sync_bn", "process group", "non-finite", "rror", "NCCL")
    out["trainer_said"] = [line for line in stderr.splitlines() if any(k in line for k in keys)][-20:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True, help="COCO-format folder (coco_jpegs.py)")
    ap.add_argument("--run-dir", default=None, help="drmm train --out (default: a folder under the temp dir)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default="runs", help="JSON file name (without .json) the summary is added to")
    ap.add_argument("--torchrun", action="store_true", help="launch under torchrun --nproc_per_node=1")
    ap.add_argument("--timeout", type=float, default=None, help="seconds before the run is stopped")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then drmm train arguments")
    args = ap.parse_args()
    rest = [a for a in args.train_args if a != "--"]
    run_dir = Path(args.run_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "drmm_runs" / args.name)
    launcher = [sys.executable, "-m", "drmm"]
    if args.torchrun:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29541",
                    "-m", "drmm"]
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: its log alone
    cmd = [*launcher, "train", "--data", args.data, "--out", str(run_dir), "--no-progress", *rest]
    print(" ".join(cmd), flush=True)
    t = time.perf_counter()
    # its own process group, so a timeout ends torchrun's worker too
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        code = "timeout"
    summary = summarise(run_dir, code, time.perf_counter() - t, stderr)
    summary["command"] = cmd
    out = bc.out_dir(args.out)
    path = out / f"{args.json}.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    runs[args.name] = summary
    bc.write_json(path, runs)
    print(stdout[-1500:] + stderr[-2500:] if code != 0 else stdout[-800:])
    print(json.dumps({k: v for k, v in summary.items() if k != "command"}, indent=1))


if __name__ == "__main__":
    main()
