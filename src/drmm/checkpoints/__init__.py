"""Checkpoints, in one home: writing, reading, old layouts, classes, and placing other detectors' weights.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, written
atomically and read with ``torch.load(weights_only=True)`` only::

    {"model": state_dict, "config": Config.to_dict(), "class_names": [...],
     "cat_ids": [...],            # dataset category id of each contiguous label
     "version": "0.2.0", "step": int, "epoch": int,
     # training state (absent in exported weights):
     "optimizer", "scheduler", "scaler", "rng", "best_metric", ...,
     # the callbacks' state (drmm.engine.callbacks), where turned on:
     "ema": state_dict, "ema_updates": int,   # train.ema: the averaged weights (eval / predict load these)
     "early_stopping": {"best", "bad"},       # train.patience
     # convert-mmdet outputs:
     "converted_from": {...},
     # drmm calibrate: the score calibrator (drmm.models.score_calibration), applied on load:
     "calibrator": {"format": "drmm-calibrator", "method", "per_class", "params", "classes", ...}}

* :mod:`.files`      atomic_save, make_checkpoint, load_checkpoint (old key layouts remapped),
                     detector_from_checkpoint (the one place a file becomes a model),
                     checkpoint_classes, check_class_mapping
* :mod:`.training`   a run's resumable state (RNG states, optimizer, callbacks)
* :mod:`.mmdet`      the authors' MMDetection files: key names, ``meta.CLASSES``, COCO's classes
* :mod:`.partial`    another detector's weights placed by name and shape, class rows by class name
* :mod:`.init_from`  ``train.init_from``: a drmm, convert-mmdet or MMDetection source read and placed
"""
from .files import (atomic_save, check_class_mapping, checkpoint_classes, detector_from_checkpoint, load_checkpoint,
                    make_checkpoint, remap_state_dict)
from .training import restore_training_state, training_checkpoint

__all__ = ["atomic_save", "check_class_mapping", "checkpoint_classes", "detector_from_checkpoint", "load_checkpoint",
           "make_checkpoint", "remap_state_dict", "restore_training_state", "training_checkpoint"]
