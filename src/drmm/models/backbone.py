"""Backbones + necks returning P2-P5 (strides 4, 8, 16, 32).

Bodies: torchvision ResNets, torchvision's Swin-T (``swin_t``) and ``tiny``, a small
plain CNN for CPU work and tests. ImageNet weights load only from a local file
(``pretrained: path``), never from the network.

ResNet BatchNorm (``norm``): ``bn`` (released D-RMM) trains the affine parameters and
uses batch statistics in the trained stages, while the frozen stages' norms stay in
eval mode even when the model trains; ``bn_eval`` (Sparse R-CNN's and AdaMixer's
code) trains the affine parameters of the trained stages with every norm in eval
mode; ``frozen`` uses :class:`FrozenBatchNorm2d` (no parameters, nothing trains).

Necks: ``fpn`` (torchvision's FeaturePyramidNetwork, Sparse R-CNN) or
``channel_mapper`` (AdaMixer: a 1 x 1 conv per level and one shared GroupNorm, no
top-down path). ``model.neck: null`` picks the architecture's own.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models import resnet, swin_t
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork, misc

RESNETS = {"resnet18": 64, "resnet34": 64, "resnet50": 256, "resnet101": 256}
SWIN_T_CHANNELS = [96, 192, 384, 768]
BACKBONES = sorted(RESNETS) + ["swin_t", "tiny"]
NECKS = ("fpn", "channel_mapper")
NORMS = ("bn", "bn_eval", "frozen")
LEVELS = ("p2", "p3", "p4", "p5")
STRIDES = (4, 8, 16, 32)


class FrozenBatchNorm2d(misc.FrozenBatchNorm2d):
    """torchvision's frozen BatchNorm (same buffers and checkpoints) run by the fused ``batch_norm`` kernel.

    torchvision's version computes ``x * scale + bias`` as two elementwise passes
    over the activation; the native inference-mode kernel does one. Same result,
    and the input gradient is still defined (the statistics and affine stay frozen).
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm in eval mode that follows a conv (ResNet ``convN``/``bnN``, ``downsample``) into it.

    Frozen (:class:`FrozenBatchNorm2d`) and ``nn.BatchNorm2d`` norms in eval mode
    (their running statistics) are folded. Inference only: the conv gets ``W * s``
    and a bias, the norm becomes ``Identity``, which saves one pass over every
    activation. Returns the number of folds.
    """

    def foldable(bn: nn.Module) -> bool:
        return isinstance(bn, misc.FrozenBatchNorm2d) or (
            isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_mean is not None)

    def fold(conv: nn.Conv2d, bn: nn.Module) -> None:
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)

    folded = 0
    for m in list(module.modules()):
        for i in (1, 2, 3):
            conv, bn = getattr(m, f"conv{i}", None), getattr(m, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and foldable(bn):
                fold(conv, bn)
                setattr(m, f"bn{i}", nn.Identity())
                folded += 1
        if isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.Conv2d) and foldable(m[1]):
            fold(m[0], m[1])
            m[1] = nn.Identity()
            folded += 1
    return folded


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


class ResNetBody(IntermediateLayerGetter):
    """A torchvision ResNet's C2-C5 whose BatchNorms under ``eval_prefixes`` stay in eval mode.

    ``train()`` puts them back in eval mode, so frozen stages never update (nor use)
    batch statistics, with plain or converted ``SyncBatchNorm`` norms alike.
    """

    def __init__(self, net: nn.Module, eval_prefixes: tuple[str, ...]) -> None:
        super().__init__(net, {f"layer{i}": f"c{i + 1}" for i in range(1, 5)})
        self.eval_prefixes = eval_prefixes

    def train(self, mode: bool = True) -> "ResNetBody":
        super().train(mode)
        for name, m in self.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(
                    p == "" or name == p or name.startswith(p + ".") for p in self.eval_prefixes):
                m.eval()
        return self


def _resnet_body(name: str, pretrained: str | None, trainable_layers: int,
                 norm: str = "bn") -> tuple[nn.Module, list[int]]:
    if norm not in NORMS:
        raise ValueError(f"unknown backbone_norm {norm!r}; choose from {NORMS}")
    net = getattr(resnet, name)(weights=None, norm_layer=FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d)
    if pretrained:
        state = load_state_dict_file(pretrained)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise RuntimeError(f"{pretrained}: not a torchvision {name} checkpoint: {e}") from e
        missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise RuntimeError(
                f"{pretrained}: not a torchvision {name} checkpoint "
                f"(missing {missing[:5]}..., unexpected {unexpected[:5]}...)"
            )
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    stages = ["layer4", "layer3", "layer2", "layer1", "conv1"]
    prefixes = {"conv1": ("conv1", "bn1")}  # the stem's norm is bn1
    train = [p for t in stages[:trainable_layers] for p in prefixes.get(t, (t,))]
    frozen = tuple(p for t in stages[trainable_layers:] for p in prefixes.get(t, (t,)))
    for pname, p in net.named_parameters():
        p.requires_grad_(any(pname.startswith(t + ".") for t in train))
    body = ResNetBody(net, ("",) if norm == "bn_eval" else frozen)
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


class SwinBody(nn.Module):
    """torchvision's Swin-T as a detection body: C2-C5 (96-768 channels), each after a new LayerNorm.

    All of it trains (as in the Swin detection recipes); ``trainable_layers`` applies
    to ResNets only. ``pretrained``: a torchvision ``swin_t`` ImageNet state dict
    (its classifier ``head`` and final ``norm`` are not used).
    """

    def __init__(self, pretrained: str | None = None) -> None:
        super().__init__()
        net = swin_t(weights=None)
        if pretrained:
            state = {k: v for k, v in load_state_dict_file(pretrained).items() if not k.startswith(("head.", "norm."))}
            try:
                missing, unexpected = net.features.load_state_dict(
                    {k.removeprefix("features."): v for k, v in state.items()}, strict=False
                )
            except RuntimeError as e:
                raise RuntimeError(f"{pretrained}: not a torchvision swin_t checkpoint: {e}") from e
            if missing or unexpected:
                raise RuntimeError(
                    f"{pretrained}: not a torchvision swin_t checkpoint "
                    f"(missing {missing[:5]}..., unexpected {unexpected[:5]}...)"
                )
        self.features = net.features  # 0: patch embed, 1/3/5/7: stages, 2/4/6: patch merging
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in SWIN_T_CHANNELS)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out = OrderedDict()
        for i, layer in enumerate(self.features):
            x = layer(x)  # channels last: [B, H, W, C]
            if i % 2 == 1:
                level = i // 2
                out[f"c{level + 2}"] = self.norms[level](x).permute(0, 3, 1, 2).contiguous()
        return out


class ChannelMapper(nn.Module):
    """AdaMixer's neck: a 1 x 1 conv maps each of C2-C5 to ``out_channels``, then one shared GroupNorm(32).

    The convs have a bias (zero-initialised), as in AdaMixer's code; ``bias=False`` is drmm 0.1's neck.
    """

    def __init__(self, in_channels: list[int], out_channels: int, groups: int = 32, bias: bool = True) -> None:
        super().__init__()
        if out_channels % groups:
            groups = math.gcd(out_channels, groups)  # small CPU widths: as many groups as divide the width
        self.convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1, bias=bias) for c in in_channels)
        self.norm = nn.GroupNorm(groups, out_channels)
        for conv in self.convs:
            nn.init.xavier_uniform_(conv.weight)
            if bias:
                nn.init.zeros_(conv.bias)

    def forward(self, feats: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        return OrderedDict((name, self.norm(conv(f))) for (name, f), conv in zip(feats.items(), self.convs))


class Backbone(nn.Module):
    """Body (C2-C5) + neck -> ``{"p2".."p5"}`` with ``out_channels`` each."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int, neck: str = "fpn",
                 neck_bias: bool = True) -> None:
        super().__init__()
        if neck not in NECKS:
            raise ValueError(f"unknown neck {neck!r}; available: {', '.join(NECKS)}")
        self.body = body
        self.neck_name = neck
        self.neck = FeaturePyramidNetwork(in_channels, out_channels) if neck == "fpn" else ChannelMapper(
            in_channels, out_channels, bias=neck_bias)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.neck(self.body(x))
        return OrderedDict(zip(LEVELS, feats.values()))


def default_neck(architecture: str) -> str:
    """The neck an architecture was published with: FPN (Sparse R-CNN) or the channel mapper (AdaMixer)."""
    return "channel_mapper" if architecture == "adamixer" else "fpn"


def build_backbone(name: str, neck: str, neck_channels: int, *, pretrained: str | None = None,
                   trainable_layers: int = 3, norm: str = "bn",
                   tiny_widths: list[int] | tuple[int, ...] = (32, 64, 128, 256), neck_bias: bool = True) -> Backbone:
    """Body ``name`` + ``neck`` (``neck_bias``: the channel mapper's conv bias)."""
    if name in RESNETS:
        body, channels = _resnet_body(name, pretrained, trainable_layers, norm)
    elif name == "swin_t":
        body, channels = SwinBody(pretrained), list(SWIN_T_CHANNELS)
    elif name == "tiny":
        if pretrained:
            raise ValueError("the tiny backbone has no pretrained weights; remove model.pretrained from the config "
                             "or pass --set model.pretrained=null")
        body, channels = TinyBody(list(tiny_widths)), list(tiny_widths)
    else:
        raise ValueError(f"unknown backbone {name!r}; available: {BACKBONES}")
    return Backbone(body, channels, neck_channels, neck, neck_bias)
