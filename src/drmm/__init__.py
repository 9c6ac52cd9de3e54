"""drmm: D-RMM, end-to-end multi-object detection with a regularized mixture model (ICML 2023)."""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {"Config": "config", "load_config": "config", "mixture_losses": "mixture",
            "build_detector": "models", "detector_from_checkpoint": "checkpoints", "DRMM": "api", "Detections": "api"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    """The public API, imported on first use: ``drmm.onnx_predict`` runs without torch installed."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'drmm' has no attribute {name!r}")
