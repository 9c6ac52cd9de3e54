"""drmm: D-RMM, end-to-end multi-object detection with a regularized mixture model (ICML 2023)."""
__version__ = "0.2.0"

from .config import Config, load_config
from .mixture import mixture_losses
from .models import build_detector, detector_from_checkpoint

__all__ = ["Config", "load_config", "mixture_losses", "build_detector", "detector_from_checkpoint", "__version__"]
