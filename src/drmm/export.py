"""ONNX export: one graph from an image to its NMS-free top-N detections.

Graph contract (``drmm export``; checked by ``drmm predict --onnx`` before a run):

* input ``image``: float32 ``[3, H, W]``, RGB in 0..1, any ``H, W >= 8`` (dynamic
  axes; a static export takes only its own size);
* outputs ``boxes`` float32 ``[N, 4]`` (x1, y1, x2, y2 in the input's pixels,
  clipped unless the checkpoint's ``clip_detections`` is off), ``scores`` float32
  ``[N]`` best first, ``labels`` int64 ``[N]`` (the dataset's category ids), N = the
  checkpoint's ``detections_per_image``;
* metadata_props: ``drmm_class_names``, ``drmm_cat_ids`` (JSON lists),
  ``drmm_detections_per_image``, ``drmm_calibrator`` (the score calibrator the graph
  applies, as JSON; ``null``: raw scores).

Inside: the resize of :class:`~drmm.models.transform.ImageTransform` computed on
symbolic sizes (halves round up), normalisation, padding, backbone, proposals,
every decoder stage, the top-k of :class:`~drmm.models.postprocess.TopKPostProcess` and,
when the checkpoint carries one, its score calibrator on the kept scores (computed in
float64 inside, returned as float32).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from .models.backbone import STRIDES, SwinBody
from .models.box_ops import clean_boxes
from .models.detector import Detector
from .models.poolers import TorchvisionRoIAlign, box_levels, released_levels
from .onnx_predict import EXPORT_EXTRA, MIN_SIDE

if TYPE_CHECKING:  # onnx is optional: imported where it is used
    import onnx



def require_modules(*names: str) -> None:
    """A clear error naming the install command when an optional package is missing."""
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        raise RuntimeError(f"ONNX support needs {', '.join(missing)}; install the extra: {EXPORT_EXTRA}")


class LevelRoIAlign(nn.Module):
    """:class:`TorchvisionRoIAlign` in a form ``torch.export`` can trace: each level pools only its own boxes.

    The boxes of a level are found with ``nonzero`` (a data-dependent count, ONNX
    ``NonZero`` + ``Gather``) and pooled with one ONNX ``RoiAlign`` (``half_pixel`` when
    aligned); one gather puts the levels' results back in box order (a scatter per
    level copied the whole output four times: 3% of the R50 graph's time). The same
    values and the same pooling work as the eager module. Strides are the FPN's (the padded
    input is a multiple of ``size_divisible`` >= 32).
    """

    def __init__(self, pooler: TorchvisionRoIAlign) -> None:
        super().__init__()
        self.levels, self.output_size, self.sampling_ratio = pooler.levels, pooler.output_size, pooler.sampling_ratio
        self.aligned = pooler.aligned

    def canvas(self, features: dict[str, Tensor]) -> None:
        return None

    def forward(self, features: dict[str, Tensor], boxes: Tensor, image_size: tuple[int, int],
                canvas: None = None) -> Tensor:
        """``boxes [B, K, 4]`` -> ``[B*K, C, S, S]``."""
        feats = [features[n] for n in self.levels]
        B, K, _ = boxes.shape
        S = self.output_size
        flat = boxes.detach().reshape(B * K, 4).to(feats[0].dtype)
        image = torch.arange(B, device=flat.device, dtype=flat.dtype).repeat_interleave(K)
        rois = torch.cat([image[:, None], flat], dim=1)
        lvl = released_levels(flat, len(feats)) if self.aligned else box_levels(flat)
        pooled, order = [], []
        for level, (f, stride) in enumerate(zip(feats, STRIDES)):
            idx = torch.nonzero(lvl == level).squeeze(1)
            pooled.append(roi_align(f, rois.index_select(0, idx), S, 1.0 / stride, self.sampling_ratio,
                                    aligned=self.aligned))
            order.append(idx)
        order = torch.cat(order)  # a permutation of the B*K boxes, grouped by level
        torch._check(order.shape[0] == B * K)
        return torch.cat(pooled).index_select(0, torch.argsort(order))  # one gather back to box order


def exportable_decoder(decoder: nn.Module) -> nn.Module:
    """The decoder itself, or a shallow copy whose torchvision pooler is the traceable one (weights shared)."""
    if not isinstance(getattr(decoder, "pooler", None), TorchvisionRoIAlign):
        return decoder
    copied = copy.copy(decoder)
    copied._modules = dict(decoder._modules)  # own module table: the original keeps its pooler
    copied.pooler = LevelRoIAlign(decoder.pooler)
    return copied


def check_exportable(model: Detector, dynamic: bool = False) -> None:
    """Raise ``ValueError`` saying why when a detector's graph cannot be exported (``dynamic``: for any size)."""
    if dynamic and isinstance(model.backbone.body, SwinBody):
        raise ValueError("Swin-T builds its shifted-window attention masks for one input size, so its graph "
                         "cannot take any size: export it for the size you will run, e.g. --static 800x1216")
    t = model.transform
    if t.size_divisible % STRIDES[-1]:
        raise ValueError(f"export needs model.size_divisible to be a multiple of {STRIDES[-1]} "
                         f"(the coarsest FPN stride), got {t.size_divisible}")
    if t.min_size <= 0:
        raise ValueError("export needs model.min_size > 0 (a model without resizing is not supported)")


class ExportableDetector(nn.Module):
    """``image [3, H, W]`` in 0..1 -> ``(boxes [N, 4], scores [N], labels [N])``; shares the detector's modules."""

    def __init__(self, model: Detector, cat_ids: list[int]) -> None:
        super().__init__()
        check_exportable(model)
        t = model.transform
        self.min_size, self.max_size, self.size_divisible = t.min_size, t.max_size, t.size_divisible
        self.register_buffer("mean", t.mean.detach().clone(), persistent=False)
        self.register_buffer("std", t.std.detach().clone(), persistent=False)
        self.register_buffer("cat_ids", torch.tensor(cat_ids, dtype=torch.int64), persistent=False)
        self.backbone, self.proposals = model.backbone, model.proposals
        self.decoder = exportable_decoder(model.decoder)
        self.head, self.postprocess = model.head, model.postprocess

    def resized_size(self, h, w):
        """ImageTransform's resized ``(h, w)`` on (symbolic) ints: halves round up."""
        hf, wf = torch.sym_float(h), torch.sym_float(w)
        scale = torch.sym_min(self.min_size / torch.sym_min(hf, wf), self.max_size / torch.sym_max(hf, wf))
        return torch.sym_max(1, math.floor(hf * scale + 0.5)), torch.sym_max(1, math.floor(wf * scale + 0.5))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, w = image.shape[-2:]
        nh, nw = self.resized_size(h, w)
        x = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        d = self.size_divisible
        # (n + d - 1) // d, not -(-n // d): ONNX's integer Div truncates, so floor-division of negatives is wrong
        x = F.pad(x, (0, (nw + d - 1) // d * d - nw, 0, (nh + d - 1) // d * d - nh))
        one = image.new_ones(())
        whwh = torch.stack([one * nw, one * nh, one * nw, one * nh])[None]  # [1, 4]
        features = self.backbone(x)
        boxes, feats = self.proposals(whwh)
        last = self.decoder(features, boxes, feats, whwh)[-1]
        values, comp, cls = self.postprocess.select(self.head.scores(last))
        values = self.postprocess.calibrate(values, cls).float()  # as the detector: after the top-k
        boxes = last.boxes.float()
        if self.postprocess.clip:
            boxes = clean_boxes(boxes, whwh)
        original = torch.stack([one * w, one * h, one * w, one * h])
        boxes = boxes[0, comp[0]] * (original / whwh[0])
        if self.postprocess.clip:
            boxes = torch.minimum(boxes.clamp(min=0), original)
        return boxes, values[0], self.cat_ids[cls[0]]


def export_onnx(model: Detector, out: str | Path, class_names: list[str], cat_ids: list[int], opset: int = 18,
                static_size: tuple[int, int] | None = None) -> Path:
    """Write ``model`` (eval mode, float32) as one ONNX graph to ``out``; dynamic H, W unless ``static_size``."""
    require_modules("onnx", "onnxscript")
    import onnx

    if opset < 16:
        raise ValueError(f"export needs opset >= 16 (RoiAlign with half_pixel, GridSample), got {opset}")
    check_exportable(model, dynamic=static_size is None)
    wrapper = ExportableDetector(model.eval(), cat_ids).eval()
    example = torch.rand(3, *(static_size or (375, 500)))
    dims = None
    if static_size is None:
        dims = ({1: torch.export.Dim("height", min=MIN_SIDE, max=16384),
                 2: torch.export.Dim("width", min=MIN_SIDE, max=16384)},)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, dynamic_shapes=dims, opset_version=opset,
                                    input_names=["image"], output_names=["boxes", "scores", "labels"],
                                    verbose=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out))
    proto = onnx.load(str(out))
    materialise_empty_initializers(proto)
    meta = {"drmm_class_names": json.dumps(list(class_names)), "drmm_cat_ids": json.dumps([int(c) for c in cat_ids]),
            "drmm_detections_per_image": str(model.postprocess.detections_per_image),
            "drmm_calibrator": json.dumps(getattr(model.postprocess.score_calibration, "spec", None))}
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(out))
    return out


def materialise_empty_initializers(proto: "onnx.ModelProto") -> int:
    """Replace every zero-size initializer by a ``Slice`` of a one-element-thick constant (same name, dtype, shape).

    A static export folds the first stage's constant proposals, so an FPN level
    without boxes becomes an empty ``[0, 4]`` constant. onnxruntime takes it;
    OpenVINO reads an empty initializer as a scalar and refuses the graph. Returns
    how many were replaced.
    """
    from onnx import helper, numpy_helper

    graph, count = proto.graph, 0
    for init in list(graph.initializer):
        if 0 not in init.dims:
            continue
        empty = numpy_helper.to_array(init)
        axes = [i for i, d in enumerate(empty.shape) if d == 0]
        graph.initializer.remove(init)
        names = [f"{init.name}__{k}" for k in ("full", "zeros", "axes")]
        graph.initializer.extend([
            numpy_helper.from_array(np.zeros([d or 1 for d in empty.shape], empty.dtype), names[0]),
            numpy_helper.from_array(np.zeros(len(axes), np.int64), names[1]),
            numpy_helper.from_array(np.asarray(axes, np.int64), names[2])])
        graph.node.insert(0, helper.make_node("Slice", [names[0], names[1], names[1], names[2]], [init.name],
                                              name=f"{init.name}__empty"))
        count += 1
    return count


def count_matched_detections(ref: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...], score_tol: float = 1e-4,
                             box_tol: float = 0.05) -> int:
    """How many of ``ref``'s ``(boxes [N, 4], scores [N], labels [N])`` have a partner in ``got``.

    Partners are one-to-one, with the same label, a score within ``score_tol`` and every
    box coordinate within ``box_tol`` pixels; greedy in ``ref``'s order, so near-ties
    that swap ranks still match.
    """
    boxes, scores, labels = ref
    used = np.zeros(len(got[1]), dtype=bool)
    matched = 0
    for b, s, lab in zip(boxes, scores, labels):
        ok = ~used & (got[2] == lab) & (np.abs(got[1] - s) <= score_tol) & (np.abs(got[0] - b).max(axis=1) <= box_tol)
        if ok.any():
            used[np.argmax(ok)] = True
            matched += 1
    return matched


def verify_export(model: Detector, path: str | Path, cat_ids: list[int],
                  static_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Run the graph with onnxruntime on one random image and compare with ``model`` (unchanged).

    A dynamic graph is checked at a portrait size unlike the export's landscape example,
    so a size fixed during tracing shows up here instead of in a user's results.
    Returns the size checked; raises ``RuntimeError`` when detections differ.
    """
    from .onnx_predict import OnnxDetector

    size = static_size or (421, 299)
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(model).optimize_for_inference()
    with torch.inference_mode():
        ref = reference([image])[0]
    tol = 1e-4 + RAW_SCORE_TOL * calibration_slope(reference, image)
    ids = np.asarray(cat_ids)
    ref = (ref["boxes"].numpy(), ref["scores"].numpy(), ids[ref["labels"].numpy()])
    got = OnnxDetector(path, threads=torch.get_num_threads())(image.numpy())
    matched = count_matched_detections(ref, got, score_tol=tol)
    if matched != len(ref[1]) or len(got[1]) != len(ref[1]):
        why = ("the graph probably kept a size from tracing: export for the size you will run with --static HxW"
               if static_size is None else "please report this with the checkpoint's config.yaml")
        raise RuntimeError(f"{path}: onnxruntime's detections on a {size[0]}x{size[1]} image differ from "
                           f"PyTorch's ({matched} of {len(ref[1])} equal within {tol:.2g} / 0.05 px); {why}")
    return size


RAW_SCORE_TOL = 1e-5
"""How far two runtimes' raw scores may drift (measured: about 1e-7); a calibrator multiplies it by its slope."""


@torch.inference_mode()
def calibration_slope(model: Detector, image: Tensor) -> float:
    """The steepest slope of ``model``'s score calibrator at its raw detections on ``image`` (0 without one).

    An isotonic map fitted on few detections can rise steeply between two fitted points; there a
    runtime's tiny raw-score difference becomes a larger calibrated one, so the check allows it.
    """
    cal = model.postprocess.score_calibration
    if cal is None:
        return 0.0
    raw = copy.deepcopy(model)
    raw.postprocess.score_calibration = None
    det = raw([image])[0]
    s, labels, h = det["scores"].double()[None], det["labels"][None], 1e-6
    if not s.numel():
        return 0.0
    return float(((cal(s + h, labels) - cal((s - h).clamp(min=0), labels)) / (2 * h)).abs().max())


def export_checkpoint(weights: str | Path, out: str | Path, opset: int = 18,
                      static_size: tuple[int, int] | None = None, half: bool = False, verify: bool = True,
                      calibrator: str | Path | None = None, raw_scores: bool = False) -> Path:
    """``drmm export``: a checkpoint (``drmm train``, ``convert-mmdet`` or ``calibrate``) to one ONNX graph at ``out``.

    The graph's scores are calibrated by the checkpoint's calibrator, or by the JSON file
    ``calibrator``; ``raw_scores``: the model's own. ``verify``: run the written graph once
    with onnxruntime against PyTorch (the same calibrator; :func:`verify_export`); a graph
    that disagrees is deleted and an error raised.
    """
    from .checkpoints import checkpoint_classes, detector_from_checkpoint

    if half:
        raise ValueError("--half is not supported: export float32 and choose the precision when running it "
                         "(drmm predict --onnx MODEL --runtime openvino --precision bf16 on CPUs with bfloat16)")
    require_modules("onnx", "onnxscript")
    model, ckpt = detector_from_checkpoint(weights, map_location="cpu", calibrator=calibrator, raw_scores=raw_scores)
    names, cat_ids = checkpoint_classes(model, ckpt)
    path = export_onnx(model, out, names, cat_ids, opset, static_size)
    if verify:
        require_modules("onnxruntime")
        try:
            verify_export(model, path, cat_ids, static_size)
        except RuntimeError:
            path.unlink()  # never leave a graph behind that gives wrong detections
            raise
    return path
