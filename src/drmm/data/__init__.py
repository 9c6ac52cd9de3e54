"""Data layer: COCO, YOLO and VOC datasets (served as COCO), the training augmentation, a synthetic set."""
from .coco import CocoDetection, build_dataset, collate_fn
from .formats import FORMATS, detect_format
from .images import UnreadableImageError, check_image, load_rgb
from .protocol import DetectionDataset
from .synthetic import CLASS_NAMES as SYNTHETIC_CLASS_NAMES, generate_synthetic
from .transforms import RandomSizeCrop, build_transforms

__all__ = [
    "CocoDetection",
    "DetectionDataset",
    "FORMATS",
    "RandomSizeCrop",
    "SYNTHETIC_CLASS_NAMES",
    "UnreadableImageError",
    "build_dataset",
    "build_transforms",
    "check_image",
    "collate_fn",
    "detect_format",
    "generate_synthetic",
    "load_rgb",
]
