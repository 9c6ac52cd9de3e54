"""The authors' released D-RMM checkpoint layout and forward pass, restated from
../shared/reference/released-checkpoint.md with plain torch / torchvision ops (no drmm module).

``released_shapes`` lists the authors' keys and shapes; ``released_state`` fills them with random
but well-behaved values (BatchNorm statistics measured by a forward pass, small box offsets);
``released_detections`` runs the released inference on one image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.ops import roi_align

LN_EPS, BN_EPS = 1e-5, 1e-5
MEAN = torch.tensor([123.675, 116.28, 103.53])
STD = torch.tensor([58.395, 57.12, 57.375])


def released_shapes(depth: int = 50, dim: int = 256, proposals: int = 300, stages: int = 6, ffn: int = 2048,
                    dynamic: int = 64, classes: int = 80, pool: int = 7) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the authors' state dict (R50: 576 entries, R101: 882)."""
    body = getattr(torchvision.models, f"resnet{depth}")(weights=None)  # the doc: torchvision's names and shapes
    shapes = {f"backbone.{k}": tuple(v.shape) for k, v in body.state_dict().items() if not k.startswith("fc.")}
    widths = [256, 512, 1024, 2048] if depth >= 50 else [64, 128, 256, 512]
    for i, c in enumerate(widths):
        shapes |= {f"neck.lateral_convs.{i}.conv.weight": (dim, c, 1, 1), f"neck.lateral_convs.{i}.conv.bias": (dim,),
                   f"neck.fpn_convs.{i}.conv.weight": (dim, dim, 3, 3), f"neck.fpn_convs.{i}.conv.bias": (dim,)}
    shapes |= {"rpn_head.init_proposal_bboxes.weight": (proposals, 4),
               "rpn_head.init_proposal_features.weight": (proposals, dim)}
    for s in range(stages):
        p = f"roi_head.bbox_head.{s}."
        shapes |= {p + "fc_cls.weight": (classes + 1, dim), p + "fc_cls.bias": (classes + 1,),
                   p + "fc_reg.weight": (8, dim), p + "fc_reg.bias": (8,),
                   p + "attention.attn.in_proj_weight": (3 * dim, dim), p + "attention.attn.in_proj_bias": (3 * dim,),
                   p + "attention.attn.out_proj.weight": (dim, dim), p + "attention.attn.out_proj.bias": (dim,),
                   p + "instance_interactive_conv.dynamic_layer.weight": (2 * dim * dynamic, dim),
                   p + "instance_interactive_conv.dynamic_layer.bias": (2 * dim * dynamic,),
                   p + "instance_interactive_conv.fc_layer.weight": (dim, dim * pool * pool),
                   p + "instance_interactive_conv.fc_layer.bias": (dim,),
                   p + "ffn.layers.0.0.weight": (ffn, dim), p + "ffn.layers.0.0.bias": (ffn,),
                   p + "ffn.layers.1.weight": (dim, ffn), p + "ffn.layers.1.bias": (dim,),
                   p + "cls_fcs.0.weight": (dim, dim)}
        for ln, c in (("attention_norm", dim), ("instance_interactive_conv.norm_in", dynamic),
                      ("instance_interactive_conv.norm_out", dim), ("instance_interactive_conv.fc_norm", dim),
                      ("instance_interactive_conv_norm", dim), ("ffn_norm", dim), ("cls_fcs.1", dim),
                      ("reg_fcs.1", dim), ("reg_fcs.4", dim), ("reg_fcs.7", dim)):
            shapes |= {f"{p}{ln}.weight": (c,), f"{p}{ln}.bias": (c,)}
        shapes |= {f"{p}reg_fcs.{i}.weight": (dim, dim) for i in (0, 3, 6)}
    return shapes


def released_state(shapes: dict[str, tuple[int, ...]], calibration_image: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """Random values for ``shapes``; every BatchNorm's statistics are those of its input on ``calibration_image``."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, mean=0.0, std=1.0):
        return torch.empty(shape).normal_(mean, std, generator=g)

    def uniform(*shape, low=-1.0, high=1.0):
        return torch.empty(shape).uniform_(low, high, generator=g)

    sd = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000)
        elif len(shape) == 4:  # convs: He-normal
            sd[k] = randn(*shape, std=math.sqrt(2.0 / (shape[1] * shape[2] * shape[3])))
        elif len(shape) == 2:  # linear layers: Xavier-uniform; larger class and box outputs (peaked scores,
            bound = math.sqrt(6.0 / sum(shape)) * (4.0 if "fc_cls" in k else 2.0 if "fc_reg" in k else 1.0)
            sd[k] = uniform(*shape, low=-bound, high=bound)  # offsets of a few pixels)
        elif k.endswith("weight") and "backbone" in k:  # BatchNorm: small residual branches (bn3) as in
            low = 0.1 if k.endswith("bn3.weight") else 0.5  # trained ResNets (a random deep net is chaotic)
            sd[k] = uniform(*shape, low=low, high=2 * low)
        elif k.endswith("weight"):  # LayerNorm
            sd[k] = randn(*shape, mean=1.0, std=0.1)
        else:
            sd[k] = randn(*shape, std=0.05)
    rows, cols = 15, 20  # D-RMM's grid of proposals, slightly perturbed
    cy, cx = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
    boxes = torch.stack([cx.flatten(), cy.flatten(), torch.full((300,), 0.5), torch.full((300,), 0.5)], 1)
    n = shapes["rpn_head.init_proposal_bboxes.weight"][0]
    sd["rpn_head.init_proposal_bboxes.weight"] = boxes[:n] + randn(n, 4, std=0.02)
    sd["rpn_head.init_proposal_features.weight"] = randn(*shapes["rpn_head.init_proposal_features.weight"])
    resnet(sd, normalise(calibration_image)[None], calibrate=True)
    return sd


def normalise(image: Tensor) -> Tensor:
    """0..1 RGB -> MMDetection's normalisation of 0..255 RGB."""
    return (image * 255 - MEAN[:, None, None]) / STD[:, None, None]


def resnet(sd: dict[str, Tensor], x: Tensor, calibrate: bool = False) -> list[Tensor]:
    """C2-C5 of a 'pytorch'-style ResNet from ``backbone.*`` (BatchNorm statistics measured if ``calibrate``)."""

    def bn(name: str, x: Tensor) -> Tensor:
        if calibrate:
            sd[f"{name}.running_mean"] = x.mean((0, 2, 3)).detach()
            sd[f"{name}.running_var"] = x.var((0, 2, 3), unbiased=False).detach()
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], False, 0.0, BN_EPS)

    x = F.relu(bn("backbone.bn1", F.conv2d(x, sd["backbone.conv1.weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, 3, 2, 1)
    outs = []
    for layer in range(1, 5):
        blocks = len({k.split(".")[2] for k in sd if k.startswith(f"backbone.layer{layer}.")})
        for b in range(blocks):
            p = f"backbone.layer{layer}.{b}."
            stride = 2 if b == 0 and layer > 1 else 1
            if p + "conv3.weight" in sd:  # Bottleneck (R50, R101): the stride on the 3 x 3 conv
                y = F.relu(bn(p + "bn1", F.conv2d(x, sd[p + "conv1.weight"])))
                y = F.relu(bn(p + "bn2", F.conv2d(y, sd[p + "conv2.weight"], stride=stride, padding=1)))
                y = bn(p + "bn3", F.conv2d(y, sd[p + "conv3.weight"]))
            else:  # BasicBlock (the small test models)
                y = F.relu(bn(p + "bn1", F.conv2d(x, sd[p + "conv1.weight"], stride=stride, padding=1)))
                y = bn(p + "bn2", F.conv2d(y, sd[p + "conv2.weight"], padding=1))
            if p + "downsample.0.weight" in sd:
                x = bn(p + "downsample.1", F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride))
            x = F.relu(y + x)
        outs.append(x)
    return outs


def fpn(sd: dict[str, Tensor], feats: list[Tensor]) -> list[Tensor]:
    lat = [F.conv2d(f, sd[f"neck.lateral_convs.{i}.conv.weight"], sd[f"neck.lateral_convs.{i}.conv.bias"])
           for i, f in enumerate(feats)]
    for i in range(len(lat) - 1, 0, -1):  # nearest upsampling to the lower level's exact size
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
    return [F.conv2d(l, sd[f"neck.fpn_convs.{i}.conv.weight"], sd[f"neck.fpn_convs.{i}.conv.bias"], padding=1)
            for i, l in enumerate(lat)]


def layer_norm(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], LN_EPS)


def linear(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return x @ sd[f"{name}.weight"].T + (sd[f"{name}.bias"] if f"{name}.bias" in sd else 0)


def attention(sd: dict[str, Tensor], p: str, q: Tensor, heads: int = 8) -> Tensor:
    """Multi-head self-attention (no positional encoding, no mask); in_proj rows are q | k | v."""
    K, D = q.shape
    qkv = q @ sd[p + "in_proj_weight"].T + sd[p + "in_proj_bias"]
    qh, kh, vh = (t.reshape(K, heads, D // heads).transpose(0, 1) for t in qkv.split(D, dim=1))
    w = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(D // heads), dim=-1)
    return linear(sd, p + "out_proj", (w @ vh).transpose(0, 1).reshape(K, D))


def pool(maps: list[Tensor], boxes: Tensor) -> Tensor:
    """RoIAlign 7 x 7, sampling 2, aligned, on level floor(log2(sqrt(wh)/56 + 1e-6)) clamped to P2..P5."""
    out = boxes.new_zeros(len(boxes), maps[0].shape[1], 7, 7)
    for i, box in enumerate(boxes):
        level = min(max(math.floor(math.log2(math.sqrt(float((box[2] - box[0]) * (box[3] - box[1]))) / 56 + 1e-6)), 0), 3)
        rois = torch.cat([box.new_zeros(1), box])[None]
        out[i] = roi_align(maps[level], rois, 7, 1 / 2 ** (level + 2), 2, aligned=True)[0]
    return out


def stage(sd: dict[str, Tensor], s: int, maps: list[Tensor], boxes: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One stage on ``boxes [K, 4]`` and ``q [K, D]``: (class outputs [K, C+1], mu [K, 4], q)."""
    p = f"roi_head.bbox_head.{s}."
    K, D = q.shape
    q = layer_norm(sd, p + "attention_norm", q + attention(sd, p + "attention.attn.", q))
    roi = pool(maps, boxes).flatten(2).transpose(1, 2)  # [K, 49, D], spatial index h * 7 + w
    params = linear(sd, p + "instance_interactive_conv.dynamic_layer", q)
    half = params.shape[1] // 2
    w_in, w_out = params[:, :half].reshape(K, D, -1), params[:, half:].reshape(K, -1, D)
    f = F.relu(layer_norm(sd, p + "instance_interactive_conv.norm_in", roi @ w_in))
    f = F.relu(layer_norm(sd, p + "instance_interactive_conv.norm_out", f @ w_out))
    f = F.relu(layer_norm(sd, p + "instance_interactive_conv.fc_norm",
                          linear(sd, p + "instance_interactive_conv.fc_layer", f.flatten(1))))
    q = layer_norm(sd, p + "instance_interactive_conv_norm", q + f)
    ffn = linear(sd, p + "ffn.layers.1", F.relu(linear(sd, p + "ffn.layers.0.0", q)))
    q = layer_norm(sd, p + "ffn_norm", q + ffn)
    c = F.relu(layer_norm(sd, p + "cls_fcs.1", linear(sd, p + "cls_fcs.0", q)))
    r = q
    for i in (0, 3, 6):
        r = F.relu(layer_norm(sd, f"{p}reg_fcs.{i + 1}", linear(sd, f"{p}reg_fcs.{i}", r)))
    return linear(sd, p + "fc_cls", c), boxes + linear(sd, p + "fc_reg", r)[:, :4], q


@torch.no_grad()
def released_detections(sd: dict[str, Tensor], image: Tensor, top: int = 100) -> dict[str, Tensor]:
    """The released inference on one 0..1 image that needs no resize (short side 800, long side <= 1333).

    Returns the top ``top`` pairs (``scores``, ``labels``, ``components``, ``boxes``) and every
    pair's ``all_scores [K, C]`` and component boxes ``mu [K, 4]``.
    """
    h, w = image.shape[-2:]
    x = F.pad(normalise(image), (0, -w % 32, 0, -h % 32))[None]  # zeros bottom/right to a multiple of 32
    maps = fpn(sd, resnet(sd, x))
    cxcywh = sd["rpn_head.init_proposal_bboxes.weight"]
    boxes = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
    boxes = boxes * torch.tensor([w, h, w, h], dtype=boxes.dtype)
    q = sd["rpn_head.init_proposal_features.weight"]
    stages = len({k.split(".")[2] for k in sd if k.startswith("roi_head.bbox_head.")})
    for s in range(stages):
        cls, mu, q = stage(sd, s, maps, boxes, q)
        boxes = mu
    scores = torch.sigmoid(cls[:, :1]) * torch.softmax(cls[:, 1:], dim=1)
    C = scores.shape[1]
    values, idx = scores.flatten().topk(top)
    return {"scores": values, "labels": idx % C, "components": idx // C, "boxes": mu[idx // C],
            "all_scores": scores, "mu": mu}
