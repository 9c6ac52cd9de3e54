"""Inference throughput on a GPU: D-RMM (R50, R101, Swin-T, AdaMixer R50) vs Sparse R-CNN and Faster R-CNN.

Every model at 800 x 1333 (the input is made that size and the model keeps it), batch
1 and 8, fp32 / bf16 / fp16 (autocast), random weights made trained-like (small residual
branches, BatchNorm statistics from one image: ``bench_common.trained_like``), eval mode under ``torch.inference_mode``, cuDNN benchmark on. Variants: ``plain`` (as built),
``optimized`` (what ``drmm eval`` / ``predict`` run: ``optimize_for_inference``,
frozen BatchNorms folded + channels_last; torchvision's Faster R-CNN: channels_last),
and for the models in ``--compile-models`` the decoder under ``torch.compile``:
``compiled`` (inductor), ``cudagraphs`` (mode ``reduce-overhead``: inductor + CUDA
graphs) and ``cudagraphs_all`` (backbone too). Each cell's last-stage boxes and class
scores are compared with the plain fp32 model's (relative error ||a - b|| / ||b||);
fp32 uses TF32 convolutions as cuDNN does by default. All models in one run, so the
ratios printed at the end (D-RMM R50 / Faster R-CNN, / Sparse R-CNN, against the
paper's 22.8 FPS on a TITAN RTX and the 70 images/s goal) compare like with like.

    python benchmarks/gpu_inference.py [--out DIR] [--models drmm_r50,faster_rcnn] [--no-compile]
    python benchmarks/gpu_inference.py --only-compile          # the torch.compile cells alone
    python benchmarks/gpu_inference.py --smoke                  # tiny dry run on any device

Writes ``inference.json`` (or ``--name``) under ``--out`` / ``$OUT`` after every cell,
and the profile of D-RMM R50 (``--profile``) to ``profile_inference.txt``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import time
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn

import bench_common as bc
from drmm.config import load_config, packaged_config
from drmm.models import build_detector

MODELS = {  # key: (label, packaged config; None = torchvision); the references first, in case the budget ends
    "drmm_r50": ("D-RMM R50", "drmm_r50.yaml"),
    "faster_rcnn": ("Faster R-CNN R50-FPN", None),
    "sparse_rcnn_r50": ("Sparse R-CNN R50", "sparse_rcnn_r50.yaml"),
    "drmm_r101": ("D-RMM R101", "drmm_r101.yaml"),
    "drmm_swin_t": ("D-RMM Swin-T", "drmm_swin_t.yaml"),
    "drmm_adamixer_r50": ("D-RMM AdaMixer R50", "drmm_adamixer_r50.yaml"),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_VARIANTS = ("compiled", "cudagraphs", "cudagraphs_all")
PAPER_FPS, GOAL_FPS = 22.8, 70.0  # D-RMM R50, batch 1: paper Table 11 (TITAN RTX); issue 13's goal


def build(key: str, h: int, w: int, smoke: bool) -> nn.Module:
    torch.manual_seed(0)
    cfg_name = MODELS[key][1]
    if cfg_name is None:
        return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=min(h, w), max_size=max(h, w))
    over = [f"model.min_size={min(h, w)}", f"model.max_size={max(h, w)}", "model.pretrained=null"]
    if smoke:
        over += ["model.num_proposals=20", "model.num_stages=2"]
    return build_detector(load_config(packaged_config(cfg_name), over))


def prepare(base: nn.Module, key: str, variant: str, device: torch.device) -> nn.Module:
    """A copy of ``base`` on ``device`` in the form ``variant`` times."""
    model = copy.deepcopy(base).to(device).eval().requires_grad_(False)
    if variant == "plain":
        return model
    if MODELS[key][1] is None:
        return model.to(memory_format=torch.channels_last)
    model.optimize_for_inference()
    if variant == "compiled":
        model.decoder = torch.compile(model.decoder)
    elif variant in ("cudagraphs", "cudagraphs_all"):
        model.decoder = torch.compile(model.decoder, mode="reduce-overhead")
        if variant == "cudagraphs_all":
            model.backbone = torch.compile(model.backbone, mode="reduce-overhead")
    return model


def outputs(model: nn.Module, images: list[torch.Tensor], key: str) -> dict[str, torch.Tensor] | None:
    """Last-stage boxes and class scores of a drmm model (None for torchvision's)."""
    if MODELS[key][1] is None:
        model(images)
        return None
    _, trace = model(images, return_stages=True)
    s = trace.stages[-1]
    return {"boxes": s.boxes.float().cpu(), "scores": model.head.scores(s).float().cpu()}


def autocast(device: torch.device, dtype: str):
    amp = DTYPES[dtype]
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def measure(model: nn.Module, images: list[torch.Tensor], key: str, dtype: str, device: torch.device,
            runs: int, warmup: int, ref: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    bc.peak_memory_reset(device)
    with torch.inference_mode(), autocast(device, dtype):
        t = time.perf_counter()
        out = outputs(model, images, key)  # first call: cuDNN autotuning, compilation
        bc.sync(device)
        first = time.perf_counter() - t
        times = bc.time_calls(lambda: model(images), device, runs, warmup)
    med, batch = bc.median(times), len(images)
    row = {"ms_per_image": 1000 * med / batch, "images_per_s": batch / med, "first_call_s": first,
           "peak_mib": bc.peak_memory_mib(device), "runs": runs}
    if ref is not None and out is not None:
        for k in ("boxes", "scores"):
            row[f"{k}_rel_err"] = float((out[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-12))
    return row


def profile(model: nn.Module, images: list[torch.Tensor], device: torch.device, dtype: str, calls: int = 5) -> str:
    """Top ops by device (or CPU) time over ``calls`` calls, and the share of wall time the GPU was busy."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.inference_mode(), autocast(device, dtype):
        model(images)
        bc.sync(device)
        with torch.profiler.profile(activities=acts) as prof:
            t = time.perf_counter()
            for _ in range(calls):
                model(images)
            bc.sync(device)
            wall = time.perf_counter() - t
    events = prof.key_averages()
    busy = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e6
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    head = f"{calls} calls, {1000 * wall / calls:.2f} ms each"
    if device.type == "cuda":
        head += f"; GPU busy {100 * busy / wall:.0f}% of the wall time (kernels summed; far under 100%: launch bound)"
    head += "\n"
    return head + events.table(sort_by=sort, row_limit=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--out", default=None, help="result folder (default $OUT, else bench_out)")
    ap.add_argument("--name", default="inference", help="JSON file name (without .json)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated of {', '.join(MODELS)}")
    ap.add_argument("--variants", default="plain,optimized", help="plain, optimized")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16")
    ap.add_argument("--size", default="800x1333", help="input HxW; the models keep it (min/max size set to it)")
    ap.add_argument("--runs", type=int, default=20, help="timed calls at batch 1 (half, at least 5, above)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile-models", default="drmm_r50")
    ap.add_argument("--compile-variants", default=",".join(COMPILE_VARIANTS))
    ap.add_argument("--compile-cells", default="bf16:1,fp16:1,fp32:1,bf16:8",
                    help="dtype:batch cells timed for the compiled variants (each compiles anew)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--only-compile", action="store_true", help="only the torch.compile variants")
    ap.add_argument("--tolerance", default="fp32:0.02,fp16:0.03,bf16:0.1",
                    help="relative error of boxes / scores vs plain fp32 accepted per dtype")
    ap.add_argument("--profile", action="store_true", help="profile D-RMM R50 optimized, batch 1, bf16")
    ap.add_argument("--raw-weights", action="store_true",
                    help="random weights as built (default: bench_common.trained_like: stable activations)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no new cell after this many seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and runs: checks the script runs")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.size, args.batches, args.runs, args.warmup = "64x96", "2", 1, 0
        args.compile_cells = "bf16:2"
    device = bc.pick_device(args.device)
    torch.backends.cudnn.benchmark = True
    torch._dynamo.config.automatic_dynamic_shapes = False  # each batch size compiles its own static graph
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, 64)
    out, budget = bc.out_dir(args.out), bc.Budget(args.budget_s)
    env = bc.environment(device)
    print(bc.describe(env), flush=True)
    h, w = bc.parse_size(args.size)
    tol = {k: float(v) for k, v in (c.split(":") for c in bc.parse_list(args.tolerance))}
    compile_cells = {(d, int(b)) for d, b in (c.split(":") for c in bc.parse_list(args.compile_cells))}
    compile_models = set(bc.parse_list(args.compile_models)) if not args.no_compile else set()
    batches, dtypes = bc.parse_list(args.batches, int), bc.parse_list(args.dtypes)
    g = torch.Generator().manual_seed(0)
    all_images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(max(batches))]
    rows: list[dict[str, Any]] = []
    payload = {"environment": env, "size": [h, w], "rows": rows}

    for key in bc.parse_list(args.models):
        label = MODELS[key][0]
        base = build(key, h, w, args.smoke).eval().to(device)
        if not args.raw_weights:  # fp16 overflows a random R101 otherwise; see bench_common.trained_like
            bc.trained_like(base, lambda: base(all_images[:1]))
        variants = [] if args.only_compile else bc.parse_list(args.variants)
        if key in compile_models:
            variants += bc.parse_list(args.compile_variants)
        if not variants:
            continue
        refs = {}
        for batch in batches:  # the reference: plain fp32
            model = prepare(base, key, "plain", device)
            with torch.inference_mode():
                refs[batch] = outputs(model, all_images[:batch], key)
            del model
        for variant in variants:
            compiled = variant in COMPILE_VARIANTS
            model = None if compiled else prepare(base, key, variant, device)
            for batch in batches:
                for dtype in dtypes:
                    if compiled and (dtype, batch) not in compile_cells:
                        continue
                    row = {"model": label, "key": key, "variant": variant, "dtype": dtype, "batch": batch}
                    if budget.expired():
                        rows.append({**row, "skipped": "time budget"})
                        continue
                    cell_model = prepare(base, key, variant, device) if compiled else model
                    runs = args.runs if batch == 1 else max(5, args.runs // 2)
                    try:
                        row.update(measure(cell_model, all_images[:batch], key, dtype, device, runs, args.warmup,
                                           refs[batch]))
                        errs = [row.get("boxes_rel_err"), row.get("scores_rel_err")]
                        row["within_tolerance"] = None if errs[0] is None else max(errs) <= tol[dtype]
                    except Exception as e:  # noqa: BLE001 - one failing cell must not end the run
                        row["error"] = f"{type(e).__name__}: {e}"[:500]
                    rows.append(row)
                    print(f"{label:<22} {variant:<14} {dtype:<5} b{batch}: " + (row.get("error") or (
                        f"{row['images_per_s']:8.2f} img/s, {row['ms_per_image']:7.2f} ms/img, "
                        f"first call {row['first_call_s']:.1f} s, errors vs fp32 (boxes / scores) "
                        + " / ".join(f"{row[k]:.1e}" if k in row else "-" for k in ("boxes_rel_err", "scores_rel_err")))),
                        flush=True)
                    bc.write_json(out / f"{args.name}.json", payload)
                    if compiled:
                        del cell_model
                        torch._dynamo.reset()
            if args.profile and key == "drmm_r50" and variant == "optimized" and not budget.expired():
                text = profile(model, all_images[:1], device, "bf16" if "bf16" in dtypes else dtypes[0])
                (out / "profile_inference.txt").write_text(text)
                print(text.split("\n")[0])
            del model
            gc.collect()  # the next variant starts from a clean allocator
            if device.type == "cuda":
                torch.cuda.empty_cache()
    bc.write_json(out / f"{args.name}.json", payload)
    print_summary(rows, env)


def print_summary(rows: list[dict[str, Any]], env: dict[str, Any]) -> None:
    done = [r for r in rows if "images_per_s" in r]
    print("\n" + bc.describe(env))
    print(bc.table(done, [("model", "model", ""), ("variant", "variant", ""), ("dtype", "dtype", ""),
                          ("batch", "batch", ""), ("images_per_s", "img/s", ".2f"), ("ms_per_image", "ms/img", ".2f"),
                          ("peak_mib", "peak MiB", ".0f"), ("boxes_rel_err", "box err", ".1e"),
                          ("scores_rel_err", "score err", ".1e"), ("within_tolerance", "ok", "")]))
    for r in rows:
        if "error" in r or "skipped" in r:
            print(f"not measured: {r['model']} {r['variant']} {r['dtype']} b{r['batch']}: "
                  f"{r.get('error') or r['skipped']}")
    best = {}
    for r in done:
        k = (r["key"], r["batch"], r["dtype"])
        if r["images_per_s"] > best.get(k, {}).get("images_per_s", 0):
            best[k] = r
    print("\nratios of the best variant of each model (same run):")
    for (key, batch, dtype), r in sorted(best.items()):
        if key != "drmm_r50":
            continue
        parts = [f"D-RMM R50 b{batch} {dtype}: {r['images_per_s']:.1f} img/s ({r['variant']})"]
        for other in ("faster_rcnn", "sparse_rcnn_r50"):
            o = best.get((other, batch, dtype))
            if o:
                parts.append(f"/ {MODELS[other][0]} {r['images_per_s'] / o['images_per_s']:.2f}x")
        if batch == 1:
            parts.append(f"/ paper {PAPER_FPS} FPS {r['images_per_s'] / PAPER_FPS:.2f}x; "
                         f"goal {GOAL_FPS:.0f}: {'met' if r['images_per_s'] >= GOAL_FPS else 'missed'}")
        print("  " + " ".join(parts))


if __name__ == "__main__":
    main()
