"""Data loading: decoding + the paper's augmentation per worker, the training loader's images/s, the data wait.

On COCO-sized JPEGs (``coco_jpegs.py``, default 480 x 640; ``--sizes`` adds larger):

1. one process, per image: JPEG decoding alone (PIL, as ``CocoDetection`` does, and
   ``torchvision.io.decode_jpeg`` on the CPU), and a whole training sample (decode,
   EXIF, the paper's flip + crop policy, float conversion) as a worker makes it;
2. the training loader exactly as ``Trainer`` builds it (seeded samples, persistent
   workers, pinned memory on CUDA, batches copied to the device), images/s for each
   worker count in ``--workers`` (default 1 and this machine's cores);
3. on CUDA, ``torchvision.io.decode_jpeg(device="cuda")`` on batches of files, to see
   whether decoding on the GPU would pay against N CPU workers;
4. ``--train-iters K``: K iterations of ``drmm train`` (``--config``, default the demo
   recipe on the CPU, the R50 recipe on a GPU) on these images, and the share of each
   step spent waiting for data (``data_time`` / (``data_time`` + ``step_time``) of the log).

    python benchmarks/data_loading.py [--n 64] [--sizes 480x640,800x1333] [--workers 1,2] [--train-iters 20]
    python benchmarks/data_loading.py --smoke

Writes ``data_loading.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

import bench_common as bc
from coco_jpegs import make_coco_jpegs
from drmm.config import DataConfig, load_config, packaged_config
from drmm.data import CocoDetection, build_transforms, collate_fn, load_rgb
from drmm.engine.sampling import EpochBatchSampler, SeededSamples, TaggedBatches, loader_workers


def per_image_rates(root: Path, n: int) -> dict[str, float]:
    """Images/s of one process with one thread (a worker): PIL decode, torchvision decode, a whole training sample."""
    paths = sorted((root / "train").glob("*.jpg"))[:n]
    dataset = CocoDetection(root / "annotations/train.json", root / "train", build_transforms(DataConfig(), True))
    samples = SeededSamples(dataset, seed=0)
    jobs = {
        "decode_pil": lambda i: torch.from_numpy(np.array(load_rgb(paths[i]), dtype=np.uint8)).permute(2, 0, 1),
        "decode_torchvision": lambda i: torchvision.io.decode_jpeg(torchvision.io.read_file(str(paths[i]))),
        "sample_with_augmentation": lambda i: samples[(0, i)],
    }
    rates, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    for name, job in jobs.items():
        job(0)
        t = time.perf_counter()
        for i in range(len(paths)):
            job(i)
        rates[name] = len(paths) / (time.perf_counter() - t)
    torch.set_num_threads(threads)
    return rates


def loader_rate(root: Path, batch: int, workers: int, device: torch.device, batches: int) -> dict[str, float]:
    """The training loader as Trainer builds it: startup seconds and steady images/s (batches moved to ``device``)."""
    dataset = CocoDetection(root / "annotations/train.json", root / "train", build_transforms(DataConfig(), True))
    sampler = EpochBatchSampler(len(dataset), batch, seed=0)
    loader = DataLoader(SeededSamples(dataset, 0), batch_sampler=TaggedBatches(sampler), collate_fn=collate_fn,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    t0 = time.perf_counter()
    got, first, epoch = 0, None, 0
    while got < batches + 1:
        sampler.set_epoch(epoch)
        for images, _ in loader:
            moved = [im.to(device, non_blocking=True) for im in images]
            bc.sync(device)
            got += 1
            if first is None:
                first = time.perf_counter()
            if got == batches + 1:
                break
        epoch += 1
    del moved, loader
    return {"startup_s": first - t0, "images_per_s": batches * batch / (time.perf_counter() - first)}


def gpu_decode_rate(root: Path, n: int, batch: int, device: torch.device) -> dict[str, float]:
    """``torchvision.io.decode_jpeg`` on the GPU, batches of ``batch`` files (file bytes already read)."""
    paths = sorted((root / "train").glob("*.jpg"))[:n]
    data = [torchvision.io.read_file(str(p)) for p in paths]
    chunks = [data[i:i + batch] for i in range(0, len(data), batch)]
    torchvision.io.decode_jpeg(chunks[0], device=device)
    bc.sync(device)
    t = time.perf_counter()
    for chunk in chunks:
        torchvision.io.decode_jpeg(chunk, device=device)
    bc.sync(device)
    return {"images_per_s": len(data) / (time.perf_counter() - t), "batch": batch}


def data_wait_share(root: Path, config: str, overrides: list[str], iters: int, device: torch.device) -> dict[str, Any]:
    """``iters`` trainer iterations on ``root``: mean data_time, step_time, data share (first row left out)."""
    from drmm.engine.train import DataPaths, train

    cfg = load_config(config, [*overrides, f"train.max_iters={iters}", "train.log_interval=1", "train.eval_interval=0",
                               "train.checkpoint_interval=0", "train.interval_unit=iter", "model.pretrained=null"])
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, DataPaths(root / "annotations/train.json", root / "train"), tmp, device=str(device), progress=False)
        rows = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("type") == "train"][1:]
    data, step = sum(r["data_time"] for r in rows), sum(r["step_time"] for r in rows)
    workers = loader_workers(cfg.train.num_workers, device)
    return {"iterations": iters, "workers": workers, "batch": cfg.train.batch_size,
            "data_time_s": data / len(rows), "step_time_s": step / len(rows), "data_share": data / (data + step)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--data", default=None, help="folder for the JPEG datasets (default: a temporary folder)")
    ap.add_argument("--n", type=int, default=64, help="JPEGs per size")
    ap.add_argument("--sizes", default="480x640", help="comma-separated HxW")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=12, help="timed loader batches per worker count")
    ap.add_argument("--workers", default=None, help="worker counts (default: 1 and the core count)")
    ap.add_argument("--train-iters", type=int, default=0, help="also measure the data wait inside drmm train")
    ap.add_argument("--config", default=None, help="config of that training (default: demo on CPU, R50 on GPU)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    device = bc.pick_device(args.device)
    cores = len(os.sched_getaffinity(0))
    if args.smoke:
        args.n, args.sizes, args.batch, args.batches, args.workers = 8, "120x160", 2, 3, "0,1"
        args.train_iters = args.train_iters and 3
    workers = bc.parse_list(args.workers or f"1,{cores}", int)
    out = bc.out_dir(args.out)
    env = bc.environment(device)
    print(bc.describe(env), flush=True)
    tmp = tempfile.TemporaryDirectory()
    base = Path(args.data or tmp.name)
    result: dict[str, Any] = {"environment": env, "augmentation": DataConfig().__dict__, "sizes": {}}
    for size in bc.parse_list(args.sizes):
        h, w = bc.parse_size(size)
        root = make_coco_jpegs(base / f"jpeg_{h}x{w}", args.n, 0, (h, w), classes=80)
        r: dict[str, Any] = {"per_process": per_image_rates(root, args.n), "loader": {}}
        for n_workers in workers:
            r["loader"][n_workers] = loader_rate(root, args.batch, n_workers, device, args.batches)
        if device.type == "cuda":
            try:
                r["gpu_decode"] = gpu_decode_rate(root, args.n, args.batch, device)
            except Exception as e:  # noqa: BLE001 - a torchvision built without nvJPEG
                r["gpu_decode_error"] = f"{type(e).__name__}: {e}"[:300]
        if args.train_iters:
            config = args.config or packaged_config("demo_cpu.yaml" if device.type == "cpu" else "drmm_r50.yaml")
            paper_data = ["data.scale=1.0", "data.flip=true", "data.crop=true"]  # the paper's augmentation
            r["train"] = data_wait_share(root, config, paper_data + args.overrides, args.train_iters, device)
        result["sizes"][size] = r
        bc.write_json(out / "data_loading.json", result)
        print_size(size, r, args.batch)
    tmp.cleanup()


def print_size(size: str, r: dict[str, Any], batch: int) -> None:
    p = r["per_process"]
    print(f"\n{size} JPEGs, one process: decode PIL {p['decode_pil']:.0f} img/s, torchvision "
          f"{p['decode_torchvision']:.0f} img/s; decode + paper augmentation + float "
          f"{p['sample_with_augmentation']:.0f} img/s")
    for n, lr in r["loader"].items():
        print(f"  training loader, batch {batch}, {n} workers: {lr['images_per_s']:.0f} img/s "
              f"(startup {lr['startup_s']:.1f} s)")
    if "gpu_decode" in r:
        d = r["gpu_decode"]
        print(f"  decode_jpeg on the GPU, batches of {d['batch']}: {d['images_per_s']:.0f} img/s")
    if "train" in r:
        t = r["train"]
        print(f"  drmm train, {t['iterations']} iterations, batch {t['batch']}: waits {1000 * t['data_time_s']:.1f} ms "
              f"for data per {1000 * t['step_time_s']:.1f} ms step: data share {100 * t['data_share']:.1f}%")


if __name__ == "__main__":
    main()
