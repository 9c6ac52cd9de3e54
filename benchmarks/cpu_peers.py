"""CPU inference beside other detectors: drmm R50 through torch, onnxruntime and OpenVINO vs five peers.

One 800 x 1216 image, batch 1, 2 threads, random weights, in one run (interleaved
rounds, median of N after 1 warm-up):

* drmm R50 (``configs/drmm_r50.yaml``, 300 proposals, 6 stages): torch as ``drmm
  eval`` / ``predict`` run it (``optimize_for_inference``: folded BatchNorm +
  channels_last), the same under bf16 autocast, and the ``drmm export`` graph (static
  800 x 1216) as ``drmm predict --onnx`` runs it: onnxruntime's CPU execution
  provider, and OpenVINO in f32 and bf16 (``--runtime openvino``; rows skipped when
  OpenVINO is not installed);
* torchvision Faster R-CNN, FCOS and RetinaNet R50-FPN (``weights=None``), each in
  its faster memory format (contiguous or channels_last, both timed);
* Hugging Face transformers DETR-R50 and RT-DETR-R50 (built from their configs, no
  download: ``use_pretrained_backbone=False``; DETR's backbone is transformers' own
  ResNet-50 instead of timm's, the same layers), each in its faster memory format;
  normalisation and ``post_process_object_detection`` (threshold 0, top-100 for
  RT-DETR) are timed with the model, as drmm's graph contains both.

Every model sees the image at its own size (no resize). Prints ms / image and the
ratio of every drmm backend to every peer, and checks that each drmm backend's
detections equal fp32 torch's (scores within 1e-4, boxes within 0.05 px, labels
equal; the bf16 rows print their deviation instead, which is larger).

``--peers-openvino`` adds a like-for-like view: DETR-R50 and RT-DETR-R50 exported with
torch.onnx (with the same normalisation and post-processing) and run by OpenVINO f32 with
the settings ``drmm predict --onnx --runtime openvino`` uses; the goal line still compares
with the peers in PyTorch, as users run them.

transformers is a benchmark-time dependency only: ``pip install 'drmm[bench]'``.

    python benchmarks/cpu_peers.py [--threads 2] [--runs 5] [--size 800x1216] [--skip-peers NAME,...]
                                   [--peers-openvino]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fcos_resnet50_fpn, retinanet_resnet50_fpn

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import describe, environment, interleaved_latencies, onnx_backends  # noqa: E402

from drmm.config import load_config  # noqa: E402
from drmm.export import count_matched_detections, export_onnx  # noqa: E402
from drmm.models import build_detector  # noqa: E402
from drmm.onnx_predict import _openvino_session  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "drmm_r50.yaml"
SCORE_TOL, BOX_TOL = 1e-4, 0.05
MEAN, STD = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def torchvision_peers(h: int, w: int) -> dict[str, torch.nn.Module]:
    lo, hi = min(h, w), max(h, w)
    kw = dict(weights=None, weights_backbone=None, min_size=lo, max_size=hi)
    return {"Faster R-CNN": fasterrcnn_resnet50_fpn(**kw), "FCOS": fcos_resnet50_fpn(**kw),
            "RetinaNet": retinanet_resnet50_fpn(**kw)}


def hf_peers() -> dict[str, torch.nn.Module]:
    """DETR-R50 and RT-DETR-R50 from their default configs (random weights, nothing downloaded)."""
    try:
        from transformers import (DetrConfig, DetrForObjectDetection, ResNetConfig, RTDetrConfig,
                                  RTDetrForObjectDetection)
    except ImportError:
        print("transformers is not installed: the DETR and RT-DETR rows are skipped "
              "(pip install 'drmm[bench]' adds them)")
        return {}
    detr_backbone = ResNetConfig(depths=[3, 4, 6, 3], layer_type="bottleneck", out_features=["stage4"])
    detr = DetrForObjectDetection(DetrConfig(use_timm_backbone=False, backbone_config=detr_backbone,
                                             use_pretrained_backbone=False))
    rtdetr = RTDetrForObjectDetection(RTDetrConfig())
    return {"DETR-R50": detr, "RT-DETR-R50": rtdetr}


class HFDetector(torch.nn.Module):
    """A transformers detector with normalisation and HF's post-processing to boxes in pixels (threshold 0):
    ``image [3, H, W]`` in 0..1 -> ``(boxes [1, Q, 4], scores [1, Q], labels [1, Q])``. One module, so the
    torch rows and the ``--peers-openvino`` export run the same computation."""

    def __init__(self, name: str, model: torch.nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.name, self.model, self.channels_last = name, model, channels_last

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = ((image - MEAN) / STD)[None]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.model(pixel_values=x)
        logits, boxes = out.logits, out.pred_boxes
        if self.name == "DETR-R50":  # DetrImageProcessor.post_process_object_detection: softmax, drop no-object
            scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        else:  # RTDetrImageProcessor: sigmoid focal scores, top-100 over queries x classes
            prob = logits.sigmoid().flatten(1)
            scores, index = prob.topk(100, dim=1)
            labels = index % logits.shape[-1]
            boxes = boxes.gather(1, (index // logits.shape[-1])[..., None].expand(-1, -1, 4))
        cx, cy, bw, bh = boxes.unbind(-1)
        xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        h, w = image.shape[-2:]
        return xyxy * xyxy.new_tensor([w, h, w, h]), scores, labels


def hf_openvino(detector: HFDetector, image: torch.Tensor, threads: int) -> Callable[[], list[np.ndarray]]:
    """``detector`` exported with torch.onnx (static size) and compiled as ``drmm predict --onnx --runtime openvino``
    compiles drmm's graph (``drmm.onnx_predict._openvino_session``, f32)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "peer.onnx"
        torch.onnx.export(detector, (image,), path, dynamo=True, input_names=["image"],
                          output_names=["boxes", "scores", "labels"], verbose=False)
        run, _, _ = _openvino_session(path, threads, "f32")
    array = image.numpy()
    return lambda: run(array)


def compare(ref: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...]) -> tuple[int, float, float]:
    """Detections matched one-to-one (``drmm.export.count_matched_detections``: same label, score within 1e-4, box
    within 0.05 px), and the largest score and box deviation over equal ranks (boxes: ranks with equal labels)."""
    same = ref[2] == got[2]
    db = float(np.abs(ref[0] - got[0])[same].max()) if same.any() else float("nan")
    return count_matched_detections(ref, got), float(np.abs(ref[1] - got[1]).max()), db


def gflops(run: Callable[[], object]) -> float:
    """GFLOP of one call (torch.utils.flop_counter: 2 x multiply-adds of matmul / conv / attention)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", default="800x1216", help="input HxW (default 800x1216)")
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--skip-peers", default="", help="comma-separated peer names to leave out (quick checks)")
    ap.add_argument("--peers-openvino", action="store_true",
                    help="also run DETR-R50 and RT-DETR-R50 through OpenVINO f32 (like-for-like with drmm's graph)")
    args = ap.parse_args()
    if args.peers_openvino:
        try:
            import openvino  # noqa: F401
        except ImportError:
            sys.exit("--peers-openvino needs OpenVINO: pip install 'drmm[openvino]'")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    h, w = (int(v) for v in args.size.lower().split("x"))
    print(describe(environment(torch.device("cpu"))))
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))

    cfg = load_config(args.config, args.overrides + [f"model.min_size={min(h, w)}", f"model.max_size={max(h, w)}",
                                                     "model.pretrained=null"])
    torch.manual_seed(0)
    base = build_detector(cfg).eval().requires_grad_(False)
    drmm = copy.deepcopy(base).optimize_for_inference()
    runners: dict[str, Callable[[], object]] = {
        "drmm torch fp32": lambda: drmm([image]),
    }

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        names = [str(i) for i in range(cfg.model.num_classes)]
        path = export_onnx(base, Path(tmp) / "drmm.onnx", names, list(range(len(names))),  # labels as torch gives them
                           static_size=(h, w))
        print(f"drmm export (static {h}x{w}): {time.perf_counter() - t:.0f} s")
        backends = {f"drmm {row}": detector for row, detector in onnx_backends(path, args.threads).items()}
    array = image.numpy()
    for row, detector in backends.items():
        runners[row] = (lambda d: lambda: d.run(array))(detector)

    def drmm_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return drmm([image])
    runners["drmm torch bf16"] = drmm_bf16

    skip = {s.strip() for s in args.skip_peers.split(",") if s.strip()}
    peers: dict[str, list[str]] = {}
    ov_peers: dict[str, str] = {}  # peer -> its OpenVINO f32 row (--peers-openvino)
    for name, model in torchvision_peers(h, w).items():
        if name in skip:
            continue
        model.eval().requires_grad_(False)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        runners[f"{name} contiguous"] = (lambda m: lambda: m([image]))(model)
        runners[f"{name} channels_last"] = (lambda m: lambda: m([image]))(cl)
        peers[name] = [f"{name} contiguous", f"{name} channels_last"]
    for name, model in hf_peers().items():
        if name in skip:
            continue
        model.eval().requires_grad_(False)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        torch_rows = {"contiguous": HFDetector(name, model, False).eval(),
                      "channels_last": HFDetector(name, cl, True).eval()}
        for layout, detector in torch_rows.items():
            runners[f"{name} {layout}"] = (lambda d: lambda: d(image))(detector)
        peers[name] = [f"{name} {layout}" for layout in torch_rows]
        if args.peers_openvino:
            t = time.perf_counter()
            runners[f"{name} openvino f32"] = hf_openvino(torch_rows["contiguous"], image, args.threads)
            print(f"{name} export + OpenVINO compile: {time.perf_counter() - t:.0f} s")
            ov_peers[name] = f"{name} openvino f32"

    with torch.inference_mode():
        ref = drmm([image])[0]
        ref = (ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy())
        checks = {row: detector.run(array) for row, detector in backends.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            d = drmm([image])[0]
        checks["drmm torch bf16"] = (d["boxes"].float().numpy(), d["scores"].float().numpy(), d["labels"].numpy())
        peer_checks = {name: (runners[peers[name][0]](), runners[row]()) for name, row in ov_peers.items()}
        flops = {"drmm": gflops(lambda: base([image]))}
        flops.update({name: gflops(runners[rows[0]]) for name, rows in peers.items()})
        med = interleaved_latencies(runners, args.runs)

    print(f"\n{'model / backend':<34} {'ms / image':>10}")
    for name, t in med.items():
        print(f"{name:<34} {t * 1e3:10.1f}")
    best_peer = {name: min(med[r] for r in rows) for name, rows in peers.items()}
    print("\nGFLOP per image (one forward): " + ", ".join(f"{k} {v:.0f}" for k, v in flops.items()))
    drmm_rows = ["drmm torch fp32", *backends, "drmm torch bf16"]
    print("\nparity with drmm torch fp32 (each detection matched: same label, score within 1e-4, box within "
          "0.05 px):")
    exact = {"drmm torch fp32": True}
    for row, got in checks.items():
        matched, ds, db = compare(ref, got)
        exact[row] = matched == len(ref[1]) == len(got[1])
        loose = count_matched_detections(ref, got, score_tol=1e-2, box_tol=2.0)
        print(f"  {row:<24} {matched}/{len(ref[1])} matched; by rank: max |score| {ds:.2e}, "
              f"max |box| {db:.3f} px (same-label ranks) -> {'equal' if exact[row] else 'NOT equal'} "
              f"({loose}/{len(ref[1])} within 1e-2 / 2 px)")
    if best_peer:
        print(f"\nratio drmm / peer (each peer in its faster memory format), one run, median of {args.runs}:")
        print(f"{'':<24}" + "".join(f"{p:>14}" for p in best_peer))
        for row in drmm_rows:
            print(f"{row:<24}" + "".join(f"{med[row] / t:14.2f}" for t in best_peer.values()))
        fastest = min(best_peer, key=best_peer.get)
        exact_rows = [r for r in drmm_rows if exact[r]]
        best = min(exact_rows, key=med.get)
        print(f"fastest peer: {fastest} ({best_peer[fastest] * 1e3:.0f} ms); drmm's fastest backend with equal "
              f"detections: {best} -> {med[best] / best_peer[fastest]:.2f}x (goal <= 0.8)")
    if ov_peers:
        print("\nlike-for-like, every model through OpenVINO f32 (peer graph vs its torch run: max |score|, "
              "labels equal):")
        for name, (want, got) in peer_checks.items():
            want = [t.numpy() for t in want]
            print(f"  {name:<14} {med[ov_peers[name]] * 1e3:7.1f} ms (torch {best_peer[name] * 1e3:.0f}); "
                  f"max |score| {np.abs(want[1] - got[1]).max():.1e}, labels equal {(want[2] == got[2]).mean():.0%}")
        ov_drmm = "drmm openvino f32"
        if ov_drmm in med:
            print(f"{ov_drmm} / peer openvino f32: " + ", ".join(
                f"{name} {med[ov_drmm] / med[row]:.2f}" for name, row in ov_peers.items()))


if __name__ == "__main__":
    main()
