"""Training objectives: how stage outputs are turned into losses."""
from .drmm import DRMMObjective, build_objective

__all__ = ["DRMMObjective", "build_objective"]
