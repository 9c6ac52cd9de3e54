"""Checkpoint files: written atomically, read with ``weights_only=True``, old layouts remapped, classes.

The one place a checkpoint file becomes a dict and a dict becomes a model
(``drmm eval``, ``predict``, ``export``, the ``DRMM`` object, ``reproduce``, the
trainer); the layout is in :mod:`drmm.checkpoints`.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import Config, with_legacy_values
from ..models.build import build_detector
from ..models.detector import Detector
from ..models.score_calibration import read_calibrator, set_score_calibration


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_checkpoint(model: torch.nn.Module | dict[str, torch.Tensor], config: dict, class_names: list[str] | None,
                    cat_ids: list[int] | None, **extra: Any) -> dict[str, Any]:
    """The dict saved for a model (a module, DDP-wrapped or not, or its state dict); ``extra`` adds
    training state (optimizer, step, ...) or provenance (``converted_from``)."""
    if isinstance(model, torch.nn.Module):
        model = getattr(model, "module", model).state_dict()  # unwrap DDP
    return {
        "model": model,
        "config": config,
        "class_names": list(class_names) if class_names else None,
        "cat_ids": list(cat_ids) if cat_ids else None,
        "version": __version__,
        **extra,
    }


_OLD_HEAD_KEY = re.compile(r"^(decoder\.stages\.\d+\.)(cls_tower|reg_tower|cls_out|reg_out)\.")


def remap_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of checkpoints written before the heads became modules (drmm 0.1.0) in today's layout.

    ``decoder.stages.N.cls_out.weight`` -> ``decoder.stages.N.head.cls_out.weight`` (and the
    towers, ``reg_out``); every other key is unchanged.
    """
    return {_OLD_HEAD_KEY.sub(r"\1head.\2.", k): v for k, v in state.items()}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a drmm checkpoint with ``weights_only=True`` and check its contents."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot load checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise RuntimeError(f"{path} is not a drmm checkpoint (needs 'model' and 'config' entries)")
    ckpt["model"] = remap_state_dict(ckpt["model"])
    if isinstance(ckpt.get("ema"), dict):
        ckpt["ema"] = remap_state_dict(ckpt["ema"])
    return ckpt


def detector_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                             calibrator: str | Path | None = None, raw_scores: bool = False) -> tuple[Detector, dict]:
    """Rebuild the model saved in a checkpoint (config inside it); returns (model in eval mode, checkpoint).

    Its scores are calibrated by the checkpoint's ``"calibrator"`` (``drmm calibrate``), or by the
    calibrator JSON file ``calibrator`` instead; ``raw_scores``: the model's own scores.
    """
    ckpt = load_checkpoint(path, map_location)
    cfg = Config.from_dict(with_legacy_values(ckpt["config"]), f"{path}:config")
    cfg.model.pretrained = None  # the weights come from the checkpoint
    model = build_detector(cfg)
    # The one place checkpoints become models (eval, predict, export, the DRMM object, reproduce): a run
    # trained with train.ema saves the averaged weights as "ema" next to the raw "model" that --resume
    # needs; the averaged ones are the trained model (validation and best.pt used them).
    model.load_state_dict(ckpt["ema"] if isinstance(ckpt.get("ema"), dict) else ckpt["model"])
    if not raw_scores and (calibrator is not None or ckpt.get("calibrator") is not None):
        spec = read_calibrator(calibrator) if calibrator is not None else ckpt["calibrator"]
        set_score_calibration(model, spec, *checkpoint_classes(model, ckpt),
                              source=calibrator if calibrator is not None else f"{path}: 'calibrator'",
                              model_name=str(path))
    return model.eval(), ckpt


def checkpoint_classes(model, ckpt: dict) -> tuple[list[str], list[int]]:
    """``(class names, dataset category ids)`` of a checkpoint's classes 0..C-1 (ids as names when unnamed)."""
    num_classes = model.cfg.model.num_classes
    cat_ids = [int(c) for c in (ckpt.get("cat_ids") or range(num_classes))]
    names = ckpt.get("class_names") or model.cfg.class_names
    if not names or len(names) != num_classes:
        names = [str(c) for c in cat_ids]
    return list(names), cat_ids


def check_class_mapping(dataset: Any, ckpt: dict, num_classes: int, weights: str | Path) -> None:
    """The dataset's categories must be the ones the checkpoint was trained on (``drmm eval``, ``drmm reproduce``).

    ``ckpt`` is the loaded checkpoint (its ``cat_ids``, when saved, must equal the
    dataset's); without saved ids only the number of classes is compared with
    ``num_classes``. ``weights`` names the checkpoint in the error message.
    """
    ckpt_ids = ckpt.get("cat_ids")
    if ckpt_ids:
        if [int(c) for c in ckpt_ids] != [int(c) for c in dataset.cat_ids]:
            raise ValueError(f"{dataset.ann_file}: category ids {list(dataset.cat_ids)} differ from those the "
                             f"checkpoint {weights} was trained on {list(ckpt_ids)}")
    elif len(dataset.cat_ids) != num_classes:
        raise ValueError(f"{dataset.ann_file} has {len(dataset.cat_ids)} categories but the model in "
                         f"{weights} predicts {num_classes} classes")
