"""Detector architectures: backbones, proposals, decoders and the model that ties them."""
from .detector import Detector, build_detector, count_parameters, detector_from_checkpoint, load_checkpoint

__all__ = ["Detector", "build_detector", "count_parameters", "detector_from_checkpoint", "load_checkpoint"]
