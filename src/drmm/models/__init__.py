"""Detector architectures: backbones, proposals, decoders, heads and the model that ties them."""
from .build import build_detector, count_parameters
from .detector import Detector

__all__ = ["Detector", "build_detector", "count_parameters"]  # checkpoints: drmm.checkpoints
