"""Training objectives: how stage outputs are turned into losses."""
from .drmm import DRMMObjective, build_objective
from .hungarian import HungarianObjective
from .matching import hungarian_match

__all__ = ["DRMMObjective", "HungarianObjective", "build_objective", "hungarian_match"]
