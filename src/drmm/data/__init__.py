"""Data layer: COCO-format datasets, the training augmentation and a synthetic shapes dataset."""
from .coco import CocoDetection, build_dataset, check_class_mapping, collate_fn
from .images import UnreadableImageError, check_image, load_rgb
from .synthetic import CLASS_NAMES as SYNTHETIC_CLASS_NAMES, generate_synthetic
from .transforms import RandomSizeCrop, build_transforms

__all__ = [
    "CocoDetection",
    "RandomSizeCrop",
    "SYNTHETIC_CLASS_NAMES",
    "UnreadableImageError",
    "build_dataset",
    "build_transforms",
    "check_class_mapping",
    "check_image",
    "collate_fn",
    "generate_synthetic",
    "load_rgb",
]
