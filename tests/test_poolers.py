"""The RoIAlign poolers against torchvision: MultiScaleRoIAlign (unaligned, drmm 0.1) and
``roi_align(aligned=True)`` on the level of the released rule, computed here with plain math."""
import math
from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from drmm.models.poolers import GridRoIAlign, TorchvisionRoIAlign, box_levels, released_levels

B, C, H, W = 2, 3, 512, 640  # large enough for boxes to reach P2..P5


def random_boxes(B, K, H, W, g):
    xy = torch.rand(B, K, 2, generator=g) * torch.tensor([W, H]) * 0.9
    wh = torch.rand(B, K, 2, generator=g) ** 2 * torch.tensor([W, H]) + 1
    boxes = torch.cat([xy, xy + wh], -1)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, W)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, H)
    return boxes


def features(g):
    return OrderedDict(
        (f"p{l}", torch.randn(B, C, H // 2**l, W // 2**l, generator=g, dtype=torch.float64, requires_grad=True))
        for l in range(2, 6))


def wild_boxes(g, K=40):
    """Inside, crossing the border, fully outside, swapped corners, tiny (< 1 px) and huge."""
    boxes = random_boxes(B, K, H - 40, W - 30, g).double()
    boxes[:, :5] -= 200  # cross the top-left border, some entirely outside
    boxes[:, 5:10] += torch.tensor([500.0, 400.0, 500.0, 400.0], dtype=torch.float64)  # past the bottom right
    boxes[:, 10:15] = boxes[:, 10:15][..., [2, 3, 0, 1]]  # both corners swapped
    boxes[:, 15:18] = boxes[:, 15:18][..., [0, 3, 2, 1]]  # y swapped only: negative area
    boxes[:, 18:20, 2:] = boxes[:, 18:20, :2] + 0.3  # smaller than a pixel
    boxes[:, 20] = torch.tensor([-900.0, -700.0, 1500.0, 1300.0], dtype=torch.float64)  # far larger than the image
    return boxes


def reference_aligned(feats, boxes):
    """mmcv's RoIAlign convention with torchvision's kernel: level floor(log2(sqrt(|wh|)/56 + 1e-6)) in P2..P5."""
    out = []
    maps = list(feats.values())
    for b in range(boxes.shape[0]):
        for box in boxes[b]:
            side = math.sqrt(abs(float((box[2] - box[0]) * (box[3] - box[1]))))
            level = min(max(math.floor(math.log2(side / 56 + 1e-6)), 0), 3)
            roi = torch.cat([torch.tensor([float(b)], dtype=box.dtype), box])[None]
            out.append(roi_align(maps[level], roi, 7, 1 / 2 ** (level + 2), 2, aligned=True))
    return torch.cat(out)


def check_values_and_gradients(out, ref, feats, g):
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-8)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    g_ref = torch.autograd.grad((ref * w).sum(), list(feats.values()))
    g_out = torch.autograd.grad((out * w).sum(), list(feats.values()), allow_unused=True)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_unaligned_grid_pooler_matches_multiscale_roialign(sampling_ratio):
    g = torch.Generator().manual_seed(sampling_ratio)
    feats = features(g)
    boxes = random_boxes(B, 40, H - 40, W - 30, g).double()  # unpadded image smaller than the batch
    assert len(box_levels(boxes).unique()) >= 3
    ref = MultiScaleRoIAlign(list(feats), 7, sampling_ratio)(feats, list(boxes.unbind(0)), [(H, W)] * B)
    check_values_and_gradients(GridRoIAlign(list(feats), 7, sampling_ratio, aligned=False)(feats, boxes, (H, W)),
                               ref, feats, g)
    out = TorchvisionRoIAlign(list(feats), 7, sampling_ratio, aligned=False)(feats, boxes, (H, W))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("pooler", [GridRoIAlign, TorchvisionRoIAlign])
def test_aligned_poolers_match_roi_align_on_the_released_level(pooler):
    """Half-pixel RoIAlign, released level rule; boxes outside the image, swapped, tiny and huge included."""
    g = torch.Generator().manual_seed(3)
    feats = features(g)
    boxes = wild_boxes(g)
    assert len(released_levels(boxes).unique()) == 4
    out = pooler(list(feats), 7, 2)(feats, boxes, (H, W))
    assert torch.isfinite(out).all()
    check_values_and_gradients(out, reference_aligned(feats, boxes), feats, g)


def test_level_rules():
    sides = torch.tensor([50.0, 111.0, 113.0, 223.0, 225.0, 447.0, 449.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], -1)
    assert box_levels(boxes).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert released_levels(boxes).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert released_levels(boxes[:, [2, 3, 0, 1]]).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # swapped corners
    assert released_levels(boxes[:, [0, 3, 2, 1]]).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # negative area


def test_rejects_adaptive_sampling():
    with pytest.raises(ValueError, match="sampling_ratio"):
        GridRoIAlign(["p2"], 7, 0)
