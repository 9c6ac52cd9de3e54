"""``train.init_from`` (``drmm train --init-from CKPT``): a new run starting from another detector's weights.

The source is read with ``torch.load(weights_only=True)`` and recognised by its layout:
a drmm checkpoint (``model`` + ``config``; ``convert-mmdet`` writes these too, with
``converted_from``) or an MMDetection checkpoint of the authors' code (``state_dict`` +
``meta``; keys mapped as ``convert-mmdet`` maps them, class names from
``meta.CLASSES``). Its tensors are placed by :mod:`drmm.checkpoints.partial` (class
outputs mapped by class name). Only weights come over: the run starts at iteration 0
with a fresh optimizer and schedule. The run folder gets ``init_from.json``; the
console a table of counts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from tqdm import tqdm

from .files import remap_state_dict
from .mmdet import (COCO_CLASSES, load_weights_only, released_class_names, released_parts,
                    released_to_drmm_key, resnet_depth)
from .partial import LoadPlan, UnplaceableError, apply, class_tensors, plan_partial_load

KINDS = {"drmm": "drmm checkpoint", "convert-mmdet": "convert-mmdet output", "mmdet": "MMDetection checkpoint"}
_SHAPE_KEYS = ("architecture", "backbone", "neck", "backbone_norm", "tiny_widths", "neck_channels", "num_proposals",
               "num_stages", "hidden_dim", "num_heads", "dim_feedforward", "dynamic_dim", "num_cls_layers",
               "num_reg_layers", "sampling_groups", "sampling_points", "mixing_out_points", "pooler_resolution",
               "channel_mapper_bias")  # model.* keys that change the names or shapes of tensors


@dataclass
class InitSource:
    """The weights of a source checkpoint under drmm's names."""

    path: Path
    kind: str  # a key of KINDS
    state: dict[str, Tensor]
    class_names: list[str] | None
    weights: str = "model"  # the entry read: "model", or "ema" where the checkpoint has EMA weights
    config: dict[str, Any] | None = None  # a drmm source's config (to name what differs)


def read_source(path: str | Path) -> InitSource:
    """The weights of a drmm checkpoint, a convert-mmdet output or an authors' MMDetection checkpoint."""
    path = Path(path)
    obj = load_weights_only(path)
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        weights = "ema" if isinstance(obj.get("ema"), dict) else "model"  # EMA weights first, where saved
        config = obj["config"] if isinstance(obj["config"], dict) else {}
        names = obj.get("class_names") or config.get("class_names")
        return InitSource(path, "convert-mmdet" if "converted_from" in obj else "drmm",
                          remap_state_dict(obj[weights]), list(names) if names else None, weights, config)
    if isinstance(obj, dict) and "state_dict" in obj:  # with "meta" as saved by MMDetection
        theirs, meta, _ = released_parts(obj, path)
        state = {released_to_drmm_key(k) or k: v for k, v in theirs.items()}  # unknown keys keep their names
        names = released_class_names(meta, path)
        if names is None:  # the authors' COCO files; other class counts have no names to map by
            cls = state.get("decoder.stages.0.head.cls_out.bias")
            names = COCO_CLASSES if cls is not None and cls.shape[0] == len(COCO_CLASSES) + 1 else None
        return InitSource(path, "mmdet", state, list(names) if names else None, "state_dict", None)
    entries = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{path}: neither a drmm checkpoint ('model' + 'config') nor an MMDetection checkpoint "
                     f"('state_dict' + 'meta'); found {entries}")


def _hint(source: InitSource, cfg: Any) -> str:
    """What to do when the source does not fit: the config values that differ, or the authors' configs."""
    if source.kind == "mmdet":
        depth = resnet_depth([k.replace("backbone.body.", "backbone.", 1) for k in source.state])
        return (f"The checkpoint's backbone looks like {depth}; start from the drmm config of the authors' "
                "architecture (configs/drmm_r50.yaml or configs/drmm_r101.yaml) with only the classes changed.")
    theirs = (source.config or {}).get("model", {})
    ours = cfg.to_dict()["model"] if cfg is not None else {}
    differ = [f"model.{k}={theirs[k]!r} (this run: {ours[k]!r})" for k in _SHAPE_KEYS
              if k in theirs and k in ours and theirs[k] != ours[k]]
    objective = (source.config or {}).get("objective", {}).get("name")
    if cfg is not None and objective and objective != cfg.objective.name:
        differ.append(f"objective.name={objective!r} (this run: {cfg.objective.name!r})")
    advice = ("The source was trained with " + ", ".join(differ) + "; set these (--set KEY=VALUE) to match it."
              if differ else "Use the architecture the source was trained with (its config is in the checkpoint).")
    return advice + " Only the classes may differ: their rows are mapped by class name."


def summary(source: InitSource, plan: LoadPlan) -> dict[str, Any]:
    """The contents of ``init_from.json``."""
    return {"source": str(source.path), "kind": source.kind, "weights": source.weights,
            "loaded": plan.loaded,
            "mapped_by_name": {"tensors": plan.mapped, "class_mapping": plan.class_mapping},
            "initialised_fresh": {"classes": plan.fresh_classes, "tensors": plan.fresh_tensors},
            "unused": {"classes": plan.unused_classes, "tensors": plan.unused_tensors}}


def table(source: InitSource, plan: LoadPlan) -> str:
    """The console table: counts of loaded, mapped, fresh and unused."""
    def some(names: list[str]) -> str:
        return ", ".join(names[:6]) + (f", ... ({len(names) - 6} more)" if len(names) > 6 else "")

    shared = sum(v is not None for v in plan.class_mapping.values())
    rows = [("loaded", f"{len(plan.loaded)} tensors"),
            ("mapped by name", f"{len(plan.mapped)} tensors ({shared} of {len(plan.class_mapping)} classes "
                               "from the source, objectness kept)")]
    for title, classes, tensors in (("initialised fresh", plan.fresh_classes, plan.fresh_tensors),
                                    ("unused", plan.unused_classes, plan.unused_tensors)):
        text = f"{len(classes)} class{'es' * (len(classes) != 1)}" + (f" ({some(classes)})" if classes else "")
        rows.append((title, text + (f" + {len(tensors)} tensors" if tensors else "")))
    head = f"init from {source.path} ({KINDS[source.kind]}, {source.weights} weights):"
    return "\n".join([head] + [f"  {t:<18} {v}" for t, v in rows])


def init_model(model: nn.Module, class_names: list[str], path: str | Path, out_dir: str | Path | None = None,
               cfg: Any = None) -> LoadPlan:
    """Load the weights of ``path`` into ``model`` (classes ``class_names``) and report it.

    ``out_dir`` (the run folder; None on processes other than the first) gets
    ``init_from.json`` and the console the table. ``cfg`` (this run's config) only
    makes the error of an unplaceable source name the settings that differ.
    """
    source = read_source(path)
    try:
        plan = plan_partial_load(source.state, model.state_dict(), class_tensors(model), source.class_names,
                                 list(class_names))
    except UnplaceableError as e:
        raise UnplaceableError(f"--init-from {path} ({KINDS[source.kind]}) does not fit this model: {e}\n"
                               + _hint(source, cfg)) from None
    apply(model, plan)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "init_from.json").write_text(json.dumps(summary(source, plan), indent=1) + "\n")
        tqdm.write(table(source, plan))
    return plan
