"""``DRMM``: one object to predict, train, evaluate, save and export a detector from Python.

::

    from drmm import DRMM
    model = DRMM.from_checkpoint("runs/r50/best.pt")   # or DRMM.from_config("drmm_r50.yaml", class_names=[...])
    model.to("cuda")                                    # once; every method then runs there
    dets = model.predict("photo.jpg")                   # [Detections]: boxes, scores, category_ids, class_names
    model.train(data="data/shapes", out="runs/mine", max_iters=1000)
    model.evaluate(data="data/shapes")                  # the metrics of `drmm eval`
    model.export("model.onnx")                          # as `drmm export`

Each method runs the code of its command: :func:`drmm.engine.train.train`,
:func:`drmm.evaluation.evaluate`, :func:`drmm.export.export_checkpoint`, and the
model as ``drmm predict`` runs it (``optimize_for_inference``, eval mode,
``torch.inference_mode``). The object holds the plain :class:`~drmm.models.detector.Detector`
(``model.module``, whose state dict is a checkpoint's) and, for inference, an optimised copy
made on first use and made again whenever the module's weights change.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .checkpoints import atomic_save, check_class_mapping, checkpoint_classes, detector_from_checkpoint, make_checkpoint
from .config import Config, apply_overrides, load_config, packaged_config
from .image_files import as_rgb, load_rgb
from .models import build_detector
from .models.score_calibration import read_calibrator, set_score_calibration

ACCEPTED = ("an image file path (str or pathlib.Path), a PIL.Image.Image, a numpy uint8 array [H, W, 3] (RGB), "
            "a torch float tensor [3, H, W] in 0..1, or a list of these")


@dataclass
class Detections:
    """The detections of one image, in the model's order (best first); numpy arrays.

    ``boxes`` [N, 4] float32 xyxy in the pixels of the image as given; ``scores`` [N]
    float32; ``labels`` [N] int64 contiguous 0..C-1; ``category_ids`` [N] int64 the
    dataset's category ids; ``class_names`` N strings.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    category_ids: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.scores)


def _device(name: str | torch.device | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name}: CUDA is not available on this machine")
    return dev


def _config_file(path: str | os.PathLike) -> Path:
    """``path`` itself, else a config shipped with the package of that name (``drmm_r50`` or ``drmm_r50.yaml``)."""
    p = Path(path)
    if p.is_file() or p.parent != Path("."):
        return p
    for name in (p.name, f"{p.name}.yaml"):
        if Path(packaged_config(name)).is_file():
            return Path(packaged_config(name))
    return p  # load_config names the missing file


def _data_paths(data: Any, split: str | None = None):
    """A dataset argument as paths: the one place a dataset layout is recognised.

    ``split=None`` (training): :class:`~drmm.engine.train.DataPaths` of a COCO, YOLO or VOC folder
    (validation optional). ``split`` (evaluation): ``(annotation source, image folder)`` of that split, as
    ``drmm eval --data DIR --split SPLIT``.
    """
    from .engine.train import DataPaths

    if isinstance(data, DataPaths):
        if split is None:
            return data
        if split not in ("train", "val") or (split == "val" and data.val_ann is None):
            raise ValueError(f"these DataPaths have no {split!r} split (train and, when given, val)")
        return (data.train_ann, data.train_images) if split == "train" else (data.val_ann, data.val_images)
    from .data.formats import dataset_split

    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if split is None:
        return DataPaths.from_dir(root)
    ann, images = dataset_split(root, split)  # COCO, YOLO or VOC, as drmm eval --data DIR --split SPLIT
    if not Path(ann).is_file():
        raise FileNotFoundError(f"annotation file not found: {ann}")
    if not Path(images).is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    return ann, images


def _as_tensor(x: Any, where: str) -> torch.Tensor:
    """One input as ``Tensor[3, H, W]`` float32 in 0..1, with an error naming what was given and what is accepted."""
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image file not found: {path}")
        try:
            x = np.asarray(load_rgb(path))  # upright (EXIF rotation), any mode -> RGB, as drmm predict reads it
        except Exception as e:  # PIL raises many types
            raise ValueError(f"{where}: cannot read image {path}: {e}") from e
    elif isinstance(x, Image.Image):
        x = np.asarray(as_rgb(x))  # used as given (no EXIF rotation): boxes are in its pixels
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3 or 0 in x.shape:
            raise ValueError(f"{where}: numpy array of shape {x.shape} and dtype {x.dtype}; expected uint8 "
                             "[H, W, 3] (RGB; a float tensor [3, H, W] in 0..1 for other value ranges)")
        return torch.from_numpy(x.copy()).permute(2, 0, 1).float() / 255  # as drmm predict (copy: writable, contiguous)
    if isinstance(x, torch.Tensor):
        if x.ndim != 3 or x.shape[0] != 3 or 0 in x.shape:
            hint = " (a batch: pass list(tensor))" if x.ndim == 4 else ""
            raise ValueError(f"{where}: tensor of shape {tuple(x.shape)}; expected [3, H, W] (RGB, channels "
                             f"first){hint}")
        if not x.is_floating_point():
            raise ValueError(f"{where}: tensor of dtype {x.dtype}; expected floats in 0..1 (divide uint8 by 255)")
        lo, hi = float(x.min()), float(x.max())
        if not (0 <= lo and hi <= 1):
            raise ValueError(f"{where}: tensor values in {lo:g}..{hi:g}; expected 0..1 (divide 0..255 by 255)")
        return x.float()
    raise TypeError(f"{where}: got {type(x).__module__}.{type(x).__qualname__}; expected {ACCEPTED}")


class DRMM:
    """A detector with its classes; see the module doc. ``device``: None = CUDA when available, else CPU."""

    def __init__(self, module: torch.nn.Module, class_names: Sequence[str] | None = None,
                 category_ids: Sequence[int] | None = None, device: str | torch.device | None = None,
                 source: str = "DRMM") -> None:
        self.device = _device(device)
        self.source = source  # where the weights came from (a checkpoint's name in messages and figure titles)
        self._set(module, class_names, category_ids)

    def _set(self, module: torch.nn.Module, class_names, category_ids) -> None:
        n = module.cfg.model.num_classes
        names, ids = checkpoint_classes(module, {"class_names": class_names, "cat_ids": category_ids})
        if (class_names is not None and len(class_names) != n) or (category_ids is not None and len(category_ids) != n):
            raise ValueError(f"the model predicts {n} classes but got {len(class_names or [])} class names and "
                             f"{len(category_ids or [])} category ids")
        if len(set(ids)) != len(ids):
            raise ValueError(f"category ids must be distinct, got {ids}")
        self._module = module.eval().to(self.device)
        self.class_names, self.category_ids = names, ids
        self._inference: torch.nn.Module | None = None
        self._inference_of: tuple | None = None
        self.calibrator: dict | None = getattr(module.postprocess.score_calibration, "spec", None)

    # -- construction
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        raw_scores: bool = False, calibrator: str | os.PathLike | None = None) -> "DRMM":
        """A checkpoint of ``drmm train``, ``drmm convert-mmdet``, ``drmm calibrate`` or :meth:`save` (config and
        classes inside). Scores are calibrated by the checkpoint's calibrator, or by the JSON file ``calibrator``
        (``drmm calibration --save``); ``raw_scores``: the model's own (:attr:`raw_scores` switches later)."""
        module, ckpt = detector_from_checkpoint(path, map_location="cpu", calibrator=calibrator, raw_scores=raw_scores)
        model = cls(module, *checkpoint_classes(module, ckpt), device=device, source=Path(path).name)
        if raw_scores:  # kept unapplied (checked when raw_scores is turned off): a raw model opens whatever it holds
            model.calibrator = read_calibrator(calibrator) if calibrator is not None else ckpt.get("calibrator")
        return model

    @classmethod
    def from_config(cls, config: str | os.PathLike | Config, class_names: Sequence[str],
                    category_ids: Sequence[int] | None = None, overrides: Sequence[str] = (),
                    device: str | torch.device | None = None) -> "DRMM":
        """An untrained model (to train from scratch) of a YAML config (or a name among the packaged ones).

        ``class_names``: one per class (sets ``model.num_classes``); ``category_ids``: their dataset ids
        (default 1..N); ``overrides``: ``"section.key=value"`` strings, as ``--set``.
        """
        if isinstance(config, Config):
            cfg = apply_overrides(config, list(overrides))
        else:
            cfg = load_config(_config_file(config), list(overrides))
        names = [str(c) for c in class_names]
        if not names:
            raise ValueError("class_names: give at least one class")
        ids = list(range(1, len(names) + 1)) if category_ids is None else [int(c) for c in category_ids]
        cfg.model.num_classes, cfg.class_names = len(names), names
        return cls(build_detector(cfg), names, ids, device=device)

    # -- what it holds
    @property
    def raw_scores(self) -> bool:
        """True: the model's own scores; False: calibrated by :attr:`calibrator` (the checkpoint's, or
        :meth:`set_calibrator`'s). Settable; predict, evaluate and export follow it."""
        return self._module.postprocess.score_calibration is None

    @raw_scores.setter
    def raw_scores(self, raw: bool) -> None:
        if not raw and self.calibrator is None:
            raise ValueError(f"{self.source} has no calibrator: fit one with drmm calibrate, or set_calibrator(FILE)")
        set_score_calibration(self._module, None if raw else self.calibrator, self.class_names, self.category_ids)

    def set_calibrator(self, calibrator: dict | str | os.PathLike | None) -> "DRMM":
        """Calibrate the scores with a calibrator JSON file (``drmm calibration --save``, ``drmm calibrate``) or its
        dict; None: none (raw scores). :meth:`save` and :meth:`export` carry it. Returns ``self``."""
        spec = read_calibrator(calibrator) if isinstance(calibrator, (str, os.PathLike)) else calibrator
        set_score_calibration(self._module, spec, self.class_names, self.category_ids,
                              calibrator if isinstance(calibrator, (str, os.PathLike)) else "calibrator", self.source)
        self.calibrator = getattr(self._module.postprocess.score_calibration, "spec", None)
        return self

    @property
    def module(self) -> torch.nn.Module:
        """The :class:`~drmm.models.detector.Detector` (torchvision-style nn.Module; not optimised for inference)."""
        return self._module

    @property
    def config(self) -> Config:
        return self._module.cfg

    def __repr__(self) -> str:
        m = self.config.model
        return (f"DRMM({m.architecture}, {m.backbone}, {len(self.class_names)} classes, head "
                f"{'mixture' if self._module.is_mixture else 'box'}, device {self.device}, from {self.source})")

    def to(self, device: str | torch.device) -> "DRMM":
        """Put the model on ``device`` once (``model.to("cuda")``): the module, the inference copy and every later
        :meth:`predict`, :meth:`evaluate` and :meth:`train` use it. Returns ``self``."""
        dev = _device(device)
        fresh = self._inference is not None and self._weights_state() == self._inference_of
        self._module.to(dev)
        self.device = dev
        if fresh:  # moved with the module, not made again
            self._inference = self._inference.to(dev)
            self._inference_of = self._weights_state()
        else:
            self._inference = self._inference_of = None
        return self

    def _weights_state(self) -> tuple:
        """Where the module's tensors are and their in-place versions: tells when the inference copy is stale."""
        tensors = chain(self._module.parameters(), self._module.buffers())
        return tuple((t.data_ptr(), t._version) for t in tensors)  # in-place updates bump _version

    def _inference_model(self) -> torch.nn.Module:
        """The optimised copy (folded BatchNorms, channels_last), made again when the module's weights change."""
        state = self._weights_state()
        if self._inference is None or state != self._inference_of:
            self._inference = copy.deepcopy(self._module).optimize_for_inference().to(self.device)
            self._inference_of = state
        return self._inference

    # -- inference
    def predict(self, inputs: Any, threshold: float = 0.0, batch_size: int = 1) -> list[Detections]:
        """Detections of each input image (a list, also for one image); see :data:`ACCEPTED` for the inputs.

        ``threshold``: keep scores >= it (0: all top-k). ``batch_size`` > 1 runs images together; images of
        different sizes are then padded to one size, which moves detections slightly (``drmm predict`` runs
        one at a time, as the default).
        """
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if not items:
            raise ValueError(f"predict: no inputs given; expected {ACCEPTED}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        many = isinstance(inputs, (list, tuple))
        model = self._inference_model()
        ids = np.asarray(self.category_ids, dtype=np.int64)
        results = []
        for start in range(0, len(items), batch_size):
            images = [_as_tensor(x, f"inputs[{i}]" if many else "input").to(self.device)
                      for i, x in enumerate(items[start:start + batch_size], start)]
            with torch.inference_mode():
                dets = model(images)
            for det in dets:
                keep = det["scores"] >= threshold
                labels = det["labels"][keep].cpu().numpy().astype(np.int64)
                results.append(Detections(det["boxes"][keep].float().cpu().numpy(),
                                          det["scores"][keep].float().cpu().numpy(), labels, ids[labels],
                                          [self.class_names[i] for i in labels]))
        return results

    # -- training
    def _train_config(self, overrides: dict[str, Any], sets: Sequence[str]) -> Config:
        """This model's config with ``key=value`` keywords (``lr`` = ``train.lr``; dotted keys as they are)
        and ``set`` strings applied."""
        d = self.config.to_dict()
        for key, value in overrides.items():
            section, name = key.split(".", 1) if "." in key else ("train", key)
            if not isinstance(d.get(section), dict) or name not in d[section]:
                raise ValueError(f"train(): unknown option {key!r}; keywords are train.* keys "
                                 f"({', '.join(sorted(d['train']))}); other keys go in set=['section.key=value']")
            d[section][name] = value
        return apply_overrides(Config.from_dict(d, "train() options"), list(sets))

    def train(self, data: Any, out: str | os.PathLike, init_from: str | os.PathLike | None = None,
              device: str | torch.device | None = None, progress: bool = True, set: Sequence[str] = (),
              **overrides: Any) -> dict[str, Any]:
        """Train this model's config on ``data`` into the run folder ``out``, as ``drmm train``.

        ``data``: a dataset folder, COCO (``DIR/annotations/{train,val}.json``), YOLO or VOC, as ``drmm train --data``.
        The run starts from the config's initialisation, as ``drmm train --config``, or from ``init_from``
        (a drmm, convert-mmdet or MMDetection checkpoint; = ``train.init_from``; to fine-tune this
        object's weights, :meth:`save` them and pass that file). ``overrides``: ``lr=1e-4`` sets
        ``train.lr``; ``set=["model.num_proposals=100"]`` any key, as ``--set``. Afterwards the object
        holds the trained weights and the dataset's classes (``OUT/best.pt`` when this run wrote one,
        else ``OUT/last.pt``). Returns the engine's result (step, metrics, nonfinite_steps, seconds)
        and ``checkpoint``, the file loaded.
        """
        from .engine.train import train as run_training

        cfg = self._train_config(overrides, set)
        if init_from is not None:
            cfg.train.init_from = str(init_from)
        force_amp = "amp" in overrides or "train.amp" in overrides or any(
            s.split("=", 1)[0].strip() == "train.amp" for s in set)  # bf16 named: kept on any CPU, as --set
        started = time.time()
        result = run_training(cfg, _data_paths(data), out, device=str(_device(device) if device else self.device),
                              progress=progress, force_amp=force_amp)
        best, last = Path(out) / "best.pt", Path(out) / "last.pt"
        ckpt = best if best.is_file() and best.stat().st_mtime >= started - 1 else last  # not an older run's
        module, saved = detector_from_checkpoint(ckpt, map_location="cpu")
        self._set(module, *checkpoint_classes(module, saved))
        self.source = str(ckpt)
        return {**result, "checkpoint": ckpt}

    # -- evaluation
    def evaluate(self, data: Any, split: str = "val", out: str | os.PathLike | None = None, *,
                 batch_size: int = 4, num_workers: int = 2, min_score: float = 0.05, bins: int = 10,
                 diagnostics: bool = False, nms_sweep: bool = False, progress: bool = True,
                 set: Sequence[str] = ()) -> dict[str, Any]:
        """The metrics of ``drmm eval --data DIR --split SPLIT`` (a COCO, YOLO or VOC folder).

        Returns ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ECE, LaECE`` (NaN where undefined;
        ``diagnostics`` and ``nms_sweep`` add their row lists). ``out``: also write metrics.json,
        detections.json, calibration.json and the figures there (None: nothing written).
        ``set``: ``data.*`` options, as ``drmm eval --set``. The dataset's category ids must be the model's.
        """
        from .data import build_dataset
        from .evaluation import evaluate

        other = [s for s in set if not s.strip().startswith("data.")]
        if other:
            raise ValueError(f"set={other[0]!r}: only data.* keys can be set here (the model carries the rest)")
        ann, images = _data_paths(data, split)
        dataset = build_dataset(apply_overrides(Config(), list(set)).data, ann, images, train=False,
                                progress=progress)
        check_class_mapping(dataset, {"cat_ids": self.category_ids}, len(self.class_names), self.source)
        return evaluate(self._inference_model(), dataset, out, batch_size=batch_size, device=self.device,
                        num_workers=num_workers, min_score=min_score, n_bins=bins, diagnostics=diagnostics,
                        nms_sweep=nms_sweep, progress=progress, title=self.source)

    # -- files
    def save(self, path: str | os.PathLike) -> Path:
        """A drmm checkpoint of the current weights (config, class names, category ids, :attr:`calibrator`):
        every command loads it. The calibrator is saved whatever :attr:`raw_scores` says (it belongs to the
        model; reloaded, the scores are calibrated, and ``raw_scores=True`` gives the model's own)."""
        ckpt = make_checkpoint(self._module, self.config.to_dict(), self.class_names, self.category_ids,
                               **({"calibrator": self.calibrator} if self.calibrator else {}))
        ckpt["model"] = {k: v.detach().cpu() for k, v in ckpt["model"].items()}
        atomic_save(ckpt, path)
        return Path(path)

    def export(self, path: str | os.PathLike, static: tuple[int, int] | None = None, opset: int = 18,
               verify: bool = True) -> Path:
        """One ONNX graph of the current weights at ``path``, as ``drmm export`` (``static``: (H, W) only).

        ``verify``: onnxruntime is checked against PyTorch on a random image (a graph that disagrees is
        deleted and an error raised). Needs ``pip install 'drmm[export]'`` (onnx, onnxscript, onnxruntime).
        """
        from .export import export_checkpoint

        with tempfile.TemporaryDirectory(prefix="drmm-export-") as tmp:
            weights = self.save(Path(tmp) / "model.pt")
            return export_checkpoint(weights, path, opset, tuple(static) if static else None, verify=verify,
                                     raw_scores=self.raw_scores)
