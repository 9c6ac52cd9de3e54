"""``drmm predict --onnx``: run an exported graph with onnxruntime or OpenVINO only (numpy, PIL; no torch).

Writes the same outputs as :func:`drmm.predict.predict`: ``OUT/<stem>.png`` with the
detections scoring >= ``threshold`` drawn (with PIL) and ``OUT/<stem>.json``. The
graph contract is in :mod:`drmm.export`; :func:`check_graph_input` enforces it first.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .image_files import collect_images, out_stem, readable_images, write_record

EXPORT_EXTRA = "pip install 'drmm[export]'"
"""The install command of the ONNX extra (onnx, onnxscript, onnxruntime), named in errors."""
MIN_SIDE = 8
"""The smallest image side an exported graph accepts (its symbolic height and width start here)."""
HIGH, LOW = (40, 200, 60), (230, 40, 40)  # scores >= 0.5 / below, as drmm.plotting


def check_graph_input(image: np.ndarray, static: tuple[int, int] | None = None) -> None:
    """Raise ``ValueError`` unless ``image`` is float32-able ``[3, H, W]`` in 0..1 with sides >= 8 (and = ``static``)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(f"expected an image array [3, H, W], got rank {getattr(image, 'ndim', type(image).__name__)}")
    if image.shape[0] != 3:
        raise ValueError(f"expected 3 channels first ([3, H, W] RGB), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected floats in 0..1, got dtype {image.dtype} (divide uint8 by 255)")
    if image.size == 0 or min(image.shape[1:]) < MIN_SIDE:
        raise ValueError(f"image of shape {image.shape} is empty or smaller than {MIN_SIDE} px a side")
    if static is not None and tuple(image.shape[1:]) != static:
        raise ValueError(f"this model was exported for {static[0]}x{static[1]} images, got {image.shape[1:]}")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or inf")


RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("f32", "bf16")
OPENVINO_EXTRA = "pip install 'drmm[openvino]'"


def _onnxruntime_session(path: Path, threads: int | None, precision: str):
    """``(run, metadata, input shape)`` of an onnxruntime CPU session; fp32 only."""
    if precision != "f32":
        raise ValueError(f"onnxruntime runs the graph in fp32 on CPUs; --precision {precision} needs "
                         "--runtime openvino")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RuntimeError(f"drmm predict --onnx needs onnxruntime: {EXPORT_EXTRA}") from e
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RuntimeError(f"cannot load ONNX model {path}: {e}") from e

    def run(image: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {"image": image})
    return run, session.get_modelmeta().custom_metadata_map, session.get_inputs()[0].shape


def _openvino_session(path: Path, threads: int | None, precision: str):
    """``(run, metadata, input shape)`` of an OpenVINO CPU model compiled for ``precision`` (f32 or bf16).

    OpenVINO reads the ONNX file itself (no conversion step). ``bf16`` runs the
    convolutions and matrix products in bfloat16 (AMX / AVX-512 BF16): about 4x
    faster than fp32 on CPUs that have them; scores move by up to ~0.04 for 99% of
    detections, AP by ~0.2 points on the demo models (``benchmarks/onnx_precision.py``).
    """
    try:
        import openvino as ov
    except ImportError as e:
        raise RuntimeError(f"--runtime openvino needs OpenVINO: {OPENVINO_EXTRA}") from e
    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise RuntimeError("this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX): use --precision f32")
    try:
        model = core.read_model(str(path))
    except Exception as e:
        raise RuntimeError(f"OpenVINO cannot read {path} (re-export it with this drmm version): "
                           f"{str(e).strip().splitlines()[-1]}") from e
    meta = {}
    if model.has_rt_info(["framework"]):
        meta = {k: model.get_rt_info(["framework", k]).astype(str) for k in model.get_rt_info()["framework"]}
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = core.compile_model(model, "CPU", config).create_infer_request()

    def run(image: np.ndarray) -> list[np.ndarray]:
        request.infer({"image": image})
        return [request.get_tensor(name).data.copy() for name in ("boxes", "scores", "labels")]
    shape = model.inputs[0].get_partial_shape()
    return run, meta, [d.get_length() if d.is_static else None for d in shape]


class OnnxDetector:
    """An exported drmm graph on a CPU runtime: ``detector(image [3, H, W]) -> (boxes, scores, labels)``.

    ``runtime``: ``onnxruntime`` (the default; fp32) or ``openvino`` (the same file;
    ``precision`` ``f32`` or ``bf16``). ``threads``: the runtime's default when None.
    """

    def __init__(self, path: str | Path, threads: int | None = None, runtime: str = "onnxruntime",
                 precision: str = "f32") -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        session = _onnxruntime_session if runtime == "onnxruntime" else _openvino_session
        self.run, meta, shape = session(Path(path), threads, precision)
        if "drmm_cat_ids" not in meta:
            raise RuntimeError(f"{path} is not a drmm export (no drmm_cat_ids metadata); make one with drmm export")
        self.cat_ids = json.loads(meta["drmm_cat_ids"])
        self.class_names = json.loads(meta.get("drmm_class_names", "[]")) or [str(c) for c in self.cat_ids]
        self.name_of = dict(zip(self.cat_ids, self.class_names))
        self.calibrator = json.loads(meta.get("drmm_calibrator") or "null")  # the calibrator inside; None: raw
        self.static = tuple(shape[1:]) if all(isinstance(s, int) for s in shape[1:]) else None

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``image [3, H, W]`` floats in 0..1 -> ``boxes [N, 4]``, ``scores [N]``, ``labels [N]`` (category ids)."""
        check_graph_input(image, self.static)
        boxes, scores, labels = self.run(np.ascontiguousarray(image, dtype=np.float32))
        return boxes, scores, labels


def draw(image: Image.Image, boxes: np.ndarray, scores: np.ndarray, names: list[str], min_side: int) -> Image.Image:
    """``image`` with labelled boxes; small images enlarged by an integer factor (nearest) first."""
    factor = max(1, -(-min_side // max(image.size)))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    image = image.copy()
    pen = ImageDraw.Draw(image)
    width = max(1, max(image.size) // 300)
    for box, score, name in zip(boxes * factor, scores, names):
        color = HIGH if score >= 0.5 else LOW
        pen.rectangle([float(v) for v in box], outline=color, width=width)
        pen.text((float(box[0]) + 2, float(box[1]) + 1), f"{name} {score:.2f}", fill=color)
    return image


def predict_onnx(model: str | Path, inputs: list[str | Path], out_dir: str | Path, threshold: float = 0.3,
                 recursive: bool = False, min_side: int = 512, threads: int | None = None,
                 runtime: str = "onnxruntime", precision: str = "f32", progress: bool = True,
                 raw_scores: bool = False) -> dict:
    """Like :func:`drmm.predict.predict` with an exported graph on ``runtime``; returns the same summary dict.

    The scores are the graph's: calibrated when it was exported with a calibrator
    (``summary["calibrator"]``: it, or None); ``raw_scores`` refuses such a graph.
    """
    files = collect_images(inputs, recursive)
    if not files:
        raise FileNotFoundError("no input images given")
    detector = OnnxDetector(model, threads, runtime, precision)
    if raw_scores and detector.calibrator:
        raise ValueError(f"{model} gives {detector.calibrator['method']}-calibrated scores: for the model's own, "
                         "export it with drmm export --raw-scores (or run the checkpoint: --weights CKPT --raw-scores)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used, skipped, outputs, total = set(), [], [], 0  # output stems, unreadable files, PNGs, detections
    for path, pil in readable_images(files, skipped, progress):
        image = np.asarray(pil, dtype=np.float32).transpose(2, 0, 1) / 255
        boxes, scores, labels = detector(image)
        keep = scores >= threshold
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep].tolist()
        names = [detector.name_of.get(int(lab), str(lab)) for lab in labels]
        stem = out_stem(path, used)
        draw(pil, boxes, scores, names, min_side).save(out_dir / f"{stem}.png")
        write_record(out_dir, stem, path, image.shape[1:], threshold, boxes.tolist(), scores.tolist(), labels, names)
        outputs.append(out_dir / f"{stem}.png")
        total += len(labels)
    if not outputs:
        raise RuntimeError(f"none of the {len(files)} images could be read (e.g. {skipped[0]})")
    return {"images": len(outputs), "skipped": skipped, "detections": total, "outputs": outputs,
            "calibrator": detector.calibrator}
