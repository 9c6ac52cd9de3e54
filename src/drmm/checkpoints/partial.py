"""Loading another detector's weights into a model of other classes: pure functions, no files.

Every tensor whose name and shape fit is loaded as it is. The class outputs of the
heads (``cls_out.weight`` / ``cls_out.bias`` of every stage) are mapped by class
name (:func:`map_class_rows`): the rows before the class logits (the mixture head's
objectness, row 0) are kept, a class present in both models keeps its trained row,
a class the source lacks keeps the target's freshly initialised row. Everything else
that differs (another backbone, another number of stages, another width) cannot be
placed: :func:`plan_partial_load` raises one :class:`UnplaceableError` listing all of it.
BatchNorm ``num_batches_tracked`` counters (absent from frozen norms) are the one
exception: a target's missing counter starts fresh and a source's extra one is unused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..models.heads import HEADS

_SHOWN = 20  # entries of each kind listed in an error
_OPTIONAL = "num_batches_tracked"


class UnplaceableError(ValueError):
    """Source tensors that have no place in the target model, or target tensors that no source tensor fills."""


@dataclass
class LoadPlan:
    """What :func:`apply` loads, and the lists a report shows."""

    state: dict[str, Tensor]  # every target tensor to load (class tensors with their rows mapped)
    loaded: list[str] = field(default_factory=list)  # tensors loaded as they are
    mapped: list[str] = field(default_factory=list)  # class tensors whose rows were mapped by class name
    class_mapping: dict[str, str | None] = field(default_factory=dict)  # target class -> source class (None: new)
    fresh_classes: list[str] = field(default_factory=list)  # target classes the source lacks
    unused_classes: list[str] = field(default_factory=list)  # source classes the target lacks
    fresh_tensors: list[str] = field(default_factory=list)  # target tensors left as initialised
    unused_tensors: list[str] = field(default_factory=list)  # source tensors not loaded


def class_tensors(model: nn.Module) -> dict[str, int]:
    """``{state-dict name: outputs before the class logits}`` of every head's class output layer."""
    heads = tuple(HEADS.values())
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, heads):
            for kind in ("weight", "bias"):
                out[f"{name}.cls_out.{kind}"] = module.extra_class_outputs
    return out


def class_index(source_classes: list[str], target_classes: list[str]) -> list[int | None]:
    """For each target class, the position of the source class of the same name (None when the source lacks it)."""
    where = {}
    for i, name in enumerate(source_classes):
        where.setdefault(name, i)
    return [where.get(name) for name in target_classes]


def map_class_rows(source: Tensor, fresh: Tensor, source_classes: list[str], target_classes: list[str],
                   leading: int) -> Tensor:
    """``fresh`` (rows: ``leading`` outputs, then one per target class) with the source's rows placed by name.

    ``source`` has ``leading`` rows, then one per source class. The leading rows
    (objectness) come from ``source``; the row of a target class comes from the source
    row of the same name, or stays ``fresh`` when the source lacks the class.
    """
    if source.shape[0] != leading + len(source_classes) or fresh.shape[0] != leading + len(target_classes):
        raise ValueError(f"class rows: source {list(source.shape)} for {leading} + {len(source_classes)} outputs, "
                         f"target {list(fresh.shape)} for {leading} + {len(target_classes)}")
    out = fresh.detach().clone()
    source = source.detach().to(device=out.device, dtype=out.dtype)
    out[:leading] = source[:leading]
    for j, i in enumerate(class_index(source_classes, target_classes)):
        if i is not None:
            out[leading + j] = source[leading + i]
    return out


def _listing(title: str, items: list[str]) -> str:
    more = f"\n    ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {i}" for i in items[:_SHOWN]) + more


def plan_partial_load(source: dict[str, Tensor], target: dict[str, Tensor], class_outputs: dict[str, int],
                      source_classes: list[str] | None, target_classes: list[str]) -> LoadPlan:
    """What of ``source`` goes where in ``target`` (a state dict of the freshly initialised model).

    ``class_outputs`` is :func:`class_tensors` of the target model. Raises
    :class:`UnplaceableError` listing every source tensor without a place, every target
    tensor left unfilled and every shape mismatch that is not a class dimension.
    """
    plan = LoadPlan(state={})
    unexpected, missing, misshapen = [], [], []
    for name, value in source.items():
        if name not in target:
            (plan.unused_tensors if name.endswith(_OPTIONAL) else unexpected).append(f"{name} {list(value.shape)}")
    for name, fresh in target.items():
        value = source.get(name)
        if value is None:
            if name.endswith(_OPTIONAL):
                plan.fresh_tensors.append(name)
                plan.state[name] = fresh
            else:
                missing.append(f"{name} {list(fresh.shape)}")
        elif name in class_outputs:
            leading = class_outputs[name]
            if source_classes is None:
                misshapen.append(f"{name}: the source has no class names, so its class rows cannot be placed")
            elif value.shape[1:] != fresh.shape[1:] or value.shape[0] != leading + len(source_classes):
                misshapen.append(f"{name} {list(value.shape)} -> {list(fresh.shape)} ({len(source_classes)} source "
                                 f"classes after {value.shape[0] - len(source_classes)} other output(s); this "
                                 f"model's head has {leading}: another head or objective?)")
            else:
                plan.state[name] = map_class_rows(value, fresh, source_classes, target_classes, leading)
                plan.mapped.append(name)
        elif value.shape != fresh.shape:
            misshapen.append(f"{name} {list(value.shape)} -> {list(fresh.shape)}")
        else:
            plan.state[name] = value
            plan.loaded.append(name)
    if unexpected or missing or misshapen:
        parts = [_listing("in the source, with no place in this model", unexpected)] if unexpected else []
        parts += [_listing("in this model, not in the source", missing)] if missing else []
        parts += [_listing("shape mismatches (source -> this model)", misshapen)] if misshapen else []
        raise UnplaceableError(f"{len(unexpected) + len(missing) + len(misshapen)} tensor(s) cannot be placed "
                               f"({len(unexpected)} unexpected, {len(missing)} missing, {len(misshapen)} "
                               "misshapen):\n" + "\n".join(parts))
    if plan.mapped and source_classes is not None:
        index = class_index(source_classes, target_classes)
        plan.class_mapping = {t: None if i is None else source_classes[i] for t, i in zip(target_classes, index)}
        plan.fresh_classes = [t for t, i in zip(target_classes, index) if i is None]
        used = {i for i in index if i is not None}
        plan.unused_classes = [s for i, s in enumerate(source_classes) if i not in used]
    return plan


def apply(model: nn.Module, plan: LoadPlan) -> None:
    """Load ``plan.state`` into ``model`` (every tensor of the model: strict)."""
    model.load_state_dict(plan.state, strict=True)
