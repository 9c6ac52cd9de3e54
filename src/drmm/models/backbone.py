"""Backbones + FPN returning P2-P5 (strides 4, 8, 16, 32).

ResNets come from torchvision with frozen BatchNorm; ImageNet weights load only
from a local file (``pretrained: path``), never from the network. ``tiny`` is a
small plain CNN for CPU work and tests.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

RESNETS = {"resnet18": 64, "resnet34": 64, "resnet50": 256, "resnet101": 256}
LEVELS = ("p2", "p3", "p4", "p5")


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a local checkpoint with ``weights_only=True``; unwrap ``{"model"|"state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupted, not a torch file, or pickled objects
        raise RuntimeError(f"cannot load weights from {path}: {e}") from e
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise RuntimeError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _resnet_body(name: str, pretrained: str | None, trainable_layers: int) -> tuple[nn.Module, list[int]]:
    net = getattr(resnet, name)(weights=None, norm_layer=FrozenBatchNorm2d)
    if pretrained:
        state = load_state_dict_file(pretrained)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise RuntimeError(f"{pretrained}: not a torchvision {name} checkpoint: {e}") from e
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise RuntimeError(
                f"{pretrained}: not a torchvision {name} checkpoint "
                f"(missing {missing[:5]}..., unexpected {unexpected[:5]}...)"
            )
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    for pname, p in net.named_parameters():
        p.requires_grad_(any(pname.startswith(t) for t in train))
    body = IntermediateLayerGetter(net, {f"layer{i}": f"c{i + 1}" for i in range(1, 5)})
    c2 = RESNETS[name]
    return body, [c2, c2 * 2, c2 * 4, c2 * 8]


class TinyBody(nn.Module):
    """Four conv stages (strides 4, 8, 16, 32) of configurable widths: a CPU-sized backbone."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"tiny_widths needs 4 values, got {widths}")

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        ins = [widths[0]] + widths[:-1]
        self.stages = nn.ModuleList(block(i, o, 2) for i, o in zip(ins, widths))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(x)
        out = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out[f"c{i + 2}"] = x
        return out


class BackboneFPN(nn.Module):
    """Body (C2-C5) + torchvision FeaturePyramidNetwork -> ``{"p2".."p5"}``."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels)
        self.out_channels = out_channels
        self.strides = (4, 8, 16, 32)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.fpn(self.body(x))
        return OrderedDict(zip(LEVELS, feats.values()))


def build_backbone(cfg) -> BackboneFPN:
    """Backbone + FPN from a :class:`~drmm.config.ModelConfig`."""
    if cfg.backbone in RESNETS:
        body, channels = _resnet_body(cfg.backbone, cfg.pretrained, cfg.trainable_layers)
    elif cfg.backbone == "tiny":
        if cfg.pretrained:
            raise ValueError("the tiny backbone has no pretrained weights; unset model.pretrained")
        body, channels = TinyBody(list(cfg.tiny_widths)), list(cfg.tiny_widths)
    else:
        raise ValueError(f"unknown backbone {cfg.backbone!r}; available: {sorted(RESNETS) + ['tiny']}")
    return BackboneFPN(body, channels, cfg.fpn_channels)
