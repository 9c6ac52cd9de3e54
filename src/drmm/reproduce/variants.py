"""The paper's objective variants: one table, each variant a config overlay.

An overlay maps dotted config keys to values (``{"objective.beta": 0.0}``) and is
applied through :func:`drmm.config.apply_overrides`, so its keys and value types
are checked like ``--set``. Every D-RMM variant restates the whole paper objective
(:data:`PAPER_OBJECTIVE`) and then changes what defines it, so a base config with
other objective settings cannot leak into a variant.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..config import Config, apply_overrides

PAPER_OBJECTIVE: dict[str, Any] = {
    "objective.name": "drmm", "objective.beta": 0.5, "objective.nll_mode": "mixture", "objective.mcm_mode": "max",
    "objective.stop_grad": ["coord"],
}
"""The paper's D-RMM objective: NLL + 0.5 MCM, max component, Cauchy factor detached in the MCM."""

LARGE_MAX_ITERS = 10**9
"""``max_iters`` under a time budget: the time limit ends training, never this."""


def apply_overlay(cfg: Config, overlay: dict[str, Any]) -> Config:
    """A new config: ``cfg`` (not modified) with the dotted ``key: value`` pairs of ``overlay`` set."""
    return apply_overrides(cfg, [f"{key}={json.dumps(value)}" for key, value in overlay.items()])


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    paper: str  # where in the paper
    paper_ap: float  # COCO val AP (%) the paper reports, R50
    overlay: dict[str, Any]  # dotted config keys -> values, applied on top of the base config

    def apply(self, cfg: Config) -> Config:
        """The base config ``cfg`` (not modified) with this variant's overlay."""
        return apply_overlay(cfg, self.overlay)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("drmm", "D-RMM: NLL + 0.5 MCM (max)", "Tables 1-3 (V)", 47.0, dict(PAPER_OBJECTIVE)),
    Variant("baseline", "Sparse R-CNN: Hungarian, focal + L1 + GIoU, whole-image proposals", "Tables 1, 2 row 1",
            45.0, {"objective.name": "hungarian", "model.proposal_init": "whole"}),
    Variant("nll_only", "NLL only (mixture), beta 0", "Table 2 row 3, Table 3 (I)", 35.6,
            {**PAPER_OBJECTIVE, "objective.beta": 0.0}),
    Variant("nll_bipartite", "NLL(B): NLL on Hungarian-matched pairs, beta 0", "Table 2 row 2", 46.3,
            {**PAPER_OBJECTIVE, "objective.nll_mode": "bipartite", "objective.beta": 0.0}),
    Variant("nll_mcm_bipartite", "NLL + 0.5 MCM(B): matched instead of max component", "Table 2 row 4", 46.9,
            {**PAPER_OBJECTIVE, "objective.mcm_mode": "bipartite"}),
    Variant("nll_max", "NLL only for the max component, beta 0", "Table 3 (IV)", 45.7,
            {**PAPER_OBJECTIVE, "objective.nll_mode": "max", "objective.beta": 0.0}),
    Variant("stopgrad_none", "D-RMM, no stop-gradient in the MCM", "Table 7 row 1", 46.8,
            {**PAPER_OBJECTIVE, "objective.stop_grad": []}),
    Variant("stopgrad_coord_class", "D-RMM, MCM stop-gradient on Cauchy and categorical", "Table 7 row 3", 46.7,
            {**PAPER_OBJECTIVE, "objective.stop_grad": ["coord", "class"]}),
)}
DEFAULT_VARIANTS = tuple(VARIANTS)
