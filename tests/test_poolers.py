"""GridRoIAlign against torchvision's MultiScaleRoIAlign (values and gradients)."""
from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from drmm.models.poolers import GridRoIAlign, box_levels


def random_boxes(B, K, H, W, g):
    xy = torch.rand(B, K, 2, generator=g) * torch.tensor([W, H]) * 0.9
    wh = torch.rand(B, K, 2, generator=g) ** 2 * torch.tensor([W, H]) + 1
    boxes = torch.cat([xy, xy + wh], -1)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, W)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, H)
    return boxes


@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_grid_pooler_matches_torchvision(sampling_ratio):
    g = torch.Generator().manual_seed(sampling_ratio)
    B, K, C, H, W = 2, 40, 3, 512, 640  # large enough for boxes to reach P2..P5
    feats = OrderedDict(
        (f"p{l}", torch.randn(B, C, H // 2**l, W // 2**l, generator=g, dtype=torch.float64, requires_grad=True))
        for l in range(2, 6))
    boxes = random_boxes(B, K, H - 40, W - 30, g).double()  # unpadded image smaller than the batch
    assert len(box_levels(boxes).unique()) >= 3
    ref_pool = MultiScaleRoIAlign(list(feats), 7, sampling_ratio)
    ref = ref_pool(feats, list(boxes.unbind(0)), [(H, W)] * B)
    out = GridRoIAlign(list(feats), 7, sampling_ratio)(feats, boxes, (H, W))
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-8)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    g_ref = torch.autograd.grad((ref * w).sum(), list(feats.values()))
    g_out = torch.autograd.grad((out * w).sum(), list(feats.values()))
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_levels_follow_fpn_rule():
    sides = torch.tensor([50.0, 111.0, 113.0, 223.0, 225.0, 447.0, 449.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], -1)
    assert box_levels(boxes).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_rejects_adaptive_sampling():
    with pytest.raises(ValueError, match="sampling_ratio"):
        GridRoIAlign(["p2"], 7, 0)
