"""Does fine-tuning pay? A detector trained on some classes, fine-tuned onto a dataset of other classes (issue 24).

On the built-in data (``drmm synth``: five shapes), entirely on the CPU:

1. **source**: the ``make demo`` model (``configs/demo.yaml``) trained on images 1-1400
   of the training split with three classes annotated: circle, square, triangle
   (crosses and rings are in the pictures, unannotated);
2. **target** ("your data"): 400 other training images (1401-1800) annotated with four
   classes in another order and with other ids: ring, square, cross, triangle; square
   and triangle are shared by name, ring and cross are new. Validation: the 200
   validation images with the target's classes;
3. **fine-tuned**: ``--init-from`` the source's ``last.pt`` with the fine-tuning recipe's
   choices (``configs/finetune.yaml``: lower lr, backbone at 0.1 x lr, EMA), scaled to
   the CPU (the demo's lr / 2, EMA warm-up 100 steps) for ``--iters`` iterations;
4. **scratch**: the demo recipe on the target for the same number of iterations.

Prints (and writes to ``--out``/finetune.json) AP of both on the target's validation
set, their ratio, and the AP of the shared and of the new classes after 0 iterations
of fine-tuning (the source's weights placed by class name, before any step: the shared
classes must already be detected, the new ones not). The machine line names the CPU,
instruction set and torch.

    python benchmarks/finetune.py --out /tmp/finetune          # about 10-15 min on 2 cores
    python benchmarks/finetune.py --source-iters 40 --iters 20 --out /tmp/ft_smoke   # a dry run
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from drmm.checkpoints import detector_from_checkpoint
from drmm.checkpoints.init_from import init_model
from drmm.config import load_config, packaged_config
from drmm.data import build_dataset, generate_synthetic
from drmm.engine.train import DataPaths, train
from drmm.evaluation.coco import to_coco_results
from drmm.evaluation.inference import run_inference
from drmm.hardware import describe_machine, native_bf16
from drmm.models import build_detector

SOURCE = ["circle", "square", "triangle"]
TARGET = ["ring", "square", "cross", "triangle"]  # another order, other ids: names decide
SHARED, NEW = ["square", "triangle"], ["ring", "cross"]


def subset(ann: dict, names: list[str], first: int, last: int) -> dict:
    """Images ``first..last`` (1-based ids) of a synth split, only the boxes of ``names``, ids 1..len(names)."""
    old = {c["id"]: c["name"] for c in ann["categories"]}
    new = {n: i + 1 for i, n in enumerate(names)}
    images = [im for im in ann["images"] if first <= im["id"] <= last]
    anns = [{**a, "category_id": new[old[a["category_id"]]]} for a in ann["annotations"]
            if first <= a["image_id"] <= last and old[a["category_id"]] in new]
    return {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": n, "supercategory": "shape"} for n, i in new.items()]}


def make_tasks(data: Path, work: Path) -> tuple[DataPaths, DataPaths]:
    train_ann = json.loads((data / "annotations" / "train.json").read_text())
    val_ann = json.loads((data / "annotations" / "val.json").read_text())
    (work / "ann").mkdir(parents=True, exist_ok=True)
    files = {"source_train": subset(train_ann, SOURCE, 1, 1400), "source_val": subset(val_ann, SOURCE, 1, 200),
             "target_train": subset(train_ann, TARGET, 1401, 1800), "target_val": subset(val_ann, TARGET, 1, 200)}
    for name, d in files.items():
        (work / "ann" / f"{name}.json").write_text(json.dumps(d))
    ann = work / "ann"
    return (DataPaths(ann / "source_train.json", data / "train", ann / "source_val.json", data / "val"),
            DataPaths(ann / "target_train.json", data / "train", ann / "target_val.json", data / "val"))


def class_ap(model: torch.nn.Module, paths: DataPaths, names: list[str], cfg) -> dict[str, float]:
    """COCO AP and AP50 of ``model`` on the validation set, all classes and the ``names`` classes only."""
    val = build_dataset(cfg.data, paths.val_ann, paths.val_images, train=False, progress=False)
    dets, ids, _ = run_inference(model.eval(), val, batch_size=16, device="cpu", progress=False)
    results = to_coco_results(dets, ids, val.cat_ids)
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(paths.val_ann))
        dt = gt.loadRes(results) if results else None
        by_name = {c["name"]: c["id"] for c in gt.dataset["categories"]}
        for key, cats in (("all", list(by_name.values())), ("subset", [by_name[n] for n in names])):
            if dt is None:
                out[f"AP_{key}"] = out[f"AP50_{key}"] = 0.0
                continue
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.params.imgIds, ev.params.catIds = list(ids), cats
            ev.evaluate(), ev.accumulate(), ev.summarize()
            out[f"AP_{key}"], out[f"AP50_{key}"] = float(ev.stats[0]), float(ev.stats[1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="a drmm synth folder (default: generated into --out)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--source-iters", type=int, default=1200, help="source training iterations (default 1200)")
    ap.add_argument("--iters", type=int, default=400, help="fine-tuning = scratch iterations (default 400)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's 2)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "data"
    if not (data / "annotations" / "val.json").is_file():
        generate_synthetic(data, 2000, 200, seed=0, image_size=128)
    source, target = make_tasks(data, out)
    amp = "bf16" if native_bf16() else "none"
    common = [f"train.amp={amp}", "train.eval_interval=0", "train.log_interval=20", "data.cache_images=true"]
    if args.threads:
        common.append(f"train.threads={args.threads}")
    demo = packaged_config("demo.yaml")
    steps = lambda n: [f"train.max_iters={n}", f"train.lr_steps=[{int(n * 0.86)}]"]  # noqa: E731 (demo: 1550/1800)
    print(describe_machine())
    timings = {}

    t0 = time.time()
    src_cfg = load_config(demo, common + steps(args.source_iters))
    train(src_cfg, source, out / "source", progress=True)
    timings["source"] = time.time() - t0
    src_ckpt = out / "source" / "last.pt"

    # 0 iterations: the target model with the source's weights placed by class name, before any step
    tgt_cfg = load_config(demo, common)
    tgt_cfg.model.num_classes, tgt_cfg.class_names = len(TARGET), list(TARGET)
    torch.manual_seed(0)
    zero = build_detector(tgt_cfg)
    with contextlib.redirect_stdout(io.StringIO()):
        init_model(zero, TARGET, src_ckpt, None, tgt_cfg)
    at_zero = {"shared": class_ap(zero, target, SHARED, tgt_cfg), "new": class_ap(zero, target, NEW, tgt_cfg)}

    finetune = ["train.lr=5.0e-4", "train.backbone_lr_factor=0.1", "train.ema=true", "train.ema_warmup=100",
                "train.warmup_iters=50", f"train.init_from={src_ckpt}"]
    runs = {}
    for name, extra in (("fine-tuned", finetune), ("scratch", [])):
        t0 = time.time()
        cfg = load_config(demo, common + steps(args.iters) + extra)
        shutil.rmtree(out / name, ignore_errors=True)
        train(cfg, target, out / name, progress=True)
        timings[name] = time.time() - t0
        model, _ = detector_from_checkpoint(out / name / "last.pt")
        runs[name] = {"shared": class_ap(model, target, SHARED, model.cfg), "new": class_ap(model, target, NEW, model.cfg)}

    result = {"machine": describe_machine(), "date": time.strftime("%Y-%m-%d"), "source_iters": args.source_iters,
              "iters": args.iters, "amp": amp, "at_zero_iterations": at_zero, "runs": runs,
              "seconds": {k: round(v, 1) for k, v in timings.items()}}
    (out / "finetune.json").write_text(json.dumps(result, indent=2))
    ft, sc = runs["fine-tuned"]["shared"]["AP_all"], runs["scratch"]["shared"]["AP_all"]
    print(f"\n{describe_machine()}; source {args.source_iters} iterations, target {args.iters}, amp {amp}")
    print(f"{'model on the target (4 classes)':<40} {'AP':>6} {'AP50':>6} {'AP shared':>10} {'AP new':>7}")
    rows = [("after 0 iterations (source weights)", at_zero)] + [(f"{k}, {args.iters} iterations", v)
                                                                 for k, v in runs.items()]
    for name, r in rows:
        print(f"{name:<40} {100 * r['shared']['AP_all']:6.1f} {100 * r['shared']['AP50_all']:6.1f} "
              f"{100 * r['shared']['AP_subset']:10.1f} {100 * r['new']['AP_subset']:7.1f}")
    print(f"fine-tuned / scratch AP: {ft / sc:.2f}x" if sc > 0 else "scratch AP is 0")
    print(f"wrote {out / 'finetune.json'}")


if __name__ == "__main__":
    main()
