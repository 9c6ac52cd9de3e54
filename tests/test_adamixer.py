"""AdaMixer decoder and Swin-T backbone: maths against hand computations, every combination trains and infers."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import tiny_batch as batch
from helpers import tiny_config

from drmm import build_detector
from drmm.config import Config, load_config
from drmm.models import count_parameters
from drmm.models.adamixer import AdaptiveMixing, iof_attention_bias, position_embedding, sample_3d
from drmm.models.box_ops import box_iof, update_xyzr, xyxy_to_xyzr, xyzr_to_xyxy
from drmm.models.backbone import ChannelMapper, SwinBody

ROOT = Path(__file__).resolve().parents[1]


def adamixer_config(**model) -> Config:
    fields = dict(architecture="adamixer", num_reg_layers=1, sampling_groups=4, sampling_points=4,
                  mixing_out_points=8, delta_mode="relative", proposal_init="whole")
    return tiny_config(**{**fields, **model})




# ----------------------------------------------------------------------------- maths


def test_xyzr_roundtrip_and_update():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 8.0, 32.0]])
    xyzr = xyxy_to_xyzr(boxes)
    # (30, 30), w 40 h 20: z = log2(sqrt(800)), r = log2(20 / 40) = -1
    torch.testing.assert_close(xyzr[0], torch.tensor([30.0, 30.0, 0.5 * math.log2(800.0), -1.0]))
    torch.testing.assert_close(xyzr[1], torch.tensor([4.0, 16.0, 4.0, 2.0]))  # sqrt(8*32) = 16, 32 / 8 = 4
    torch.testing.assert_close(xyzr_to_xyxy(xyzr), boxes)
    # x, y move by delta * 2^z (z = 4: 16 px); z + 1 doubles both sides, r + 2 makes h / w 4x larger.
    new = update_xyzr(xyzr[1:], torch.tensor([[0.5, -0.25, 1.0, 2.0]]))
    torch.testing.assert_close(new, torch.tensor([[12.0, 12.0, 5.0, 4.0]]))
    w, h = 2.0 ** (5 - 2), 2.0 ** (5 + 2)
    torch.testing.assert_close(xyzr_to_xyxy(new), torch.tensor([[12 - w / 2, 12 - h / 2, 12 + w / 2, 12 + h / 2]]))


def test_iof_on_hand_built_boxes():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0],  # area 100
                           [5.0, 5.0, 25.0, 15.0],  # area 200, overlaps box 0 on 5 x 5 = 25
                           [0.0, 0.0, 5.0, 5.0],  # inside box 0
                           [50.0, 50.0, 60.0, 60.0]]])  # far away
    iof = box_iof(boxes)[0]
    expected = torch.tensor([
        [1.0, 25 / 100, 25 / 100, 0.0],
        [25 / 200, 1.0, 0.0, 0.0],
        [1.0, 0.0, 1.0, 0.0],  # box 2 lies entirely in box 0: its IoF with 0 is 1, not 0's with 2
        [0.0, 0.0, 0.0, 1.0],
    ])
    torch.testing.assert_close(iof, expected)
    tau = torch.tensor([0.5, 2.0])
    bias = iof_attention_bias(boxes, tau).view(1, 2, 4, 4)
    torch.testing.assert_close(bias[0, 1], 2.0 * torch.log(expected + 1e-7))
    torch.testing.assert_close(bias[0, 0], 0.5 * torch.log(expected + 1e-7))
    assert bias[0, 1, 0, 3] < -30  # disjoint boxes: strongly suppressed, still finite
    assert torch.isfinite(bias).all()


def test_position_embedding_is_sinusoidal_per_coordinate():
    xyzr = torch.tensor([[[500.0, 250.0, 6.0, -1.0]]])
    emb = position_embedding(xyzr, 8)
    assert emb.shape == (1, 1, 32)
    coords = [0.5, 0.25, 6.0, -1.0]
    for c, v in enumerate(coords):
        for i in range(8):
            arg = v / 10000 ** (2 * (i // 2) / 8)
            want = math.sin(arg) if i % 2 == 0 else math.cos(arg)
            assert emb[0, 0, c * 8 + i].item() == pytest.approx(want, abs=1e-6)


def _bilinear(f: torch.Tensor, s: int, x: float, y: float) -> float:
    """Hand bilinear read of a map ``f [H, W]`` whose pixel (i, j) is centred at ((j + 0.5) s, (i + 0.5) s); 0 outside."""
    u, v = x / s - 0.5, y / s - 0.5
    j0, i0 = math.floor(u), math.floor(v)
    a, b = u - j0, v - i0
    total = 0.0
    for di, wi in ((0, 1 - b), (1, b)):
        for dj, wj in ((0, 1 - a), (1, a)):
            i, j = i0 + di, j0 + dj
            if 0 <= i < f.shape[0] and 0 <= j < f.shape[1]:
                total += wi * wj * f[i, j].item()
    return total


def test_3d_sampler_matches_hand_computed_bilinear_samples():
    # Two images, two levels with different extents (stride 4: 6 x 5 map = 24 x 20 px; stride 8: 2 x 3 map
    # = 16 x 24 px), 2 groups of 2 channels, 3 queries, 2 points each.
    torch.manual_seed(0)
    B, N, G, P = 2, 3, 2, 2
    f4, f8 = torch.randn(B, 4, 6, 5), torch.randn(B, 4, 2, 3)
    x = torch.rand(B, N, G, P) * 28 - 2  # some points fall outside a map
    y = torch.rand(B, N, G, P) * 28 - 2
    z = torch.rand(B, N, G, P) * 3 + 1.5
    x[0, 0, 0, 0], y[0, 0, 0, 0], z[0, 0, 0, 0] = 6.0, 2.0, 2.0  # exactly on stride-4 pixel (0, 1)
    out = sample_3d([f4, f8], (4, 8), x, y, z)
    assert out.shape == (B, N, G, P, 2)
    for b in range(B):
        for n in range(N):
            for g in range(G):
                for p in range(P):
                    xx, yy, zz = x[b, n, g, p].item(), y[b, n, g, p].item(), z[b, n, g, p].item()
                    w = torch.tensor([-0.5 * (zz - 2) ** 2, -0.5 * (zz - 3) ** 2]).softmax(0)
                    for c in range(2):
                        ch = g * 2 + c  # group g reads channels 2g, 2g + 1
                        want = w[0] * _bilinear(f4[b, ch], 4, xx, yy) + w[1] * _bilinear(f8[b, ch], 8, xx, yy)
                        assert out[b, n, g, p, c].item() == pytest.approx(want.item(), abs=1e-5), (b, n, g, p, c)
    w0 = torch.tensor([0.0, -0.5]).softmax(0)  # z = 2: log2(4) exactly, one level away from log2(8)
    want = w0[0] * f4[0, 0, 0, 1] + w0[1] * _bilinear(f8[0, 0], 8, 6.0, 2.0)
    assert out[0, 0, 0, 0, 0].item() == pytest.approx(want.item(), abs=1e-6)


def test_3d_sampler_keeps_positions_in_fp32_for_bf16_maps():
    torch.manual_seed(0)
    f = torch.randn(1, 2, 256, 336)  # a 1344-px wide stride-4 map
    x = torch.full((1, 1, 1, 1), 1000.3)
    y = torch.full((1, 1, 1, 1), 500.7)
    z = torch.full((1, 1, 1, 1), 2.0)
    ref = sample_3d([f], (4,), x, y, z)
    low = sample_3d([f.bfloat16()], (4,), x, y, z)
    assert low.dtype == torch.bfloat16
    # Only the map values are rounded (bf16 ~ 3 significant digits); a bf16 position would be off by ~1 px.
    torch.testing.assert_close(low.float(), ref, atol=0.02, rtol=0.01)
    want = _bilinear(f[0, 0].bfloat16().float(), 4, 1000.3, 500.7)
    assert low[0, 0, 0, 0, 0].float().item() == pytest.approx(want, abs=0.02)


def test_iof_bias_enters_attention_as_a_per_image_per_head_logit_bias():
    """Two images with different boxes through nn.MultiheadAttention == a hand softmax(QK^T / sqrt(d) + bias) V."""
    torch.manual_seed(0)
    B, N, H, D = 2, 3, 2, 8
    boxes = torch.tensor([[[0.0, 0, 10, 10], [5, 5, 15, 15], [40, 40, 50, 60]],
                          [[0.0, 0, 4, 4], [0, 0, 8, 8], [2, 0, 6, 20]]])
    tau = torch.tensor([1.0, 3.0])
    attn = torch.nn.MultiheadAttention(D, H, batch_first=True)
    q = torch.randn(B, N, D)
    out = attn(q, q, q, attn_mask=iof_attention_bias(boxes, tau), need_weights=False)[0]
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    heads = []
    for h in range(H):
        sl = slice(h * D // H, (h + 1) * D // H)
        qh, kh, vh = (q @ wq.T + bq)[..., sl], (q @ wk.T + bk)[..., sl], (q @ wv.T + bv)[..., sl]
        logits = qh @ kh.transpose(1, 2) / math.sqrt(D // H) + tau[h] * torch.log(box_iof(boxes) + 1e-7)
        heads.append(logits.softmax(-1) @ vh)
    want = attn.out_proj(torch.cat(heads, -1))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_adaptive_mixing_against_explicit_loops():
    torch.manual_seed(0)
    mix = AdaptiveMixing(dim=16, channels=4, groups=2, points=3, out_points=5)
    torch.nn.init.normal_(mix.generator.weight)
    B, N = 2, 2
    sampled, content = torch.randn(B, N, 2, 3, 4), torch.randn(B, N, 16)
    out = mix(sampled, content)
    params = mix.generator(content).view(B, N, 2, -1)
    for b in range(B):
        flat = []
        for n in range(N):
            parts = []
            for g in range(2):
                m = params[b, n, g, :16].view(4, 4)  # channel mixing, 4 x 4
                s = params[b, n, g, 16:].view(5, 3)  # spatial mixing, out points x points
                x = F.relu(F.layer_norm(sampled[b, n, g] @ m, (3, 4)))  # AdaMixer: LN over the whole block
                parts.append(F.relu(F.layer_norm(s @ x, (5, 4))).flatten())
            flat.append(torch.cat(parts))
        torch.testing.assert_close(out[b], mix.out(torch.stack(flat)), rtol=1e-5, atol=1e-5)


def test_channel_mapper_shares_one_groupnorm():
    cm = ChannelMapper([8, 16], 64)
    assert isinstance(cm.norm, torch.nn.GroupNorm) and cm.norm.num_groups == 32
    out = cm({"c2": torch.randn(2, 8, 6, 6), "c3": torch.randn(2, 16, 3, 3)})
    assert [v.shape for v in out.values()] == [(2, 64, 6, 6), (2, 64, 3, 3)]
    assert ChannelMapper([8], 48).norm.num_groups == 16  # widths not divisible by 32: gcd groups


# ----------------------------------------------------------------------------- the decoder in the detector


@pytest.mark.parametrize("objective", ["drmm", "hungarian"])
@pytest.mark.parametrize("backbone", ["resnet18", "swin_t"])
@pytest.mark.parametrize("architecture", ["adamixer", "sparse_rcnn"])
def test_every_decoder_objective_backbone_trains_a_step_and_infers(architecture, objective, backbone):
    cfg = adamixer_config() if architecture == "adamixer" else tiny_config()
    m = cfg.model
    m.backbone, m.min_size, m.max_size = backbone, 64, 96
    cfg.objective.name = objective
    model = build_detector(cfg).train()
    images, targets = batch()
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert model.backbone.neck_name == ("channel_mapper" if architecture == "adamixer" else "fpn")
    if backbone == "swin_t":
        assert model.backbone.body.features[0][0].weight.grad.abs().sum() > 0  # Swin-T trains end to end
    if architecture == "adamixer":
        assert not model.proposals.boxes.weight.requires_grad  # AdaMixer's initial boxes are fixed
        # Every stage's sampling offsets and mixing generator learn (they start at zero weight).
        assert all(s.sampling.offsets.weight.grad.abs().sum() > 0 for s in model.decoder.stages)
        assert all(s.mixing.generator.weight.grad.abs().sum() > 0 for s in model.decoder.stages)
    model.eval()
    with torch.inference_mode():
        dets = model(images)
    for det, img in zip(dets, images):
        h, w = img.shape[-2:]
        assert len(det["scores"]) <= 100 and ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
        b = det["boxes"]
        assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= w).all() and (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= h).all()


def test_stage_output_geometry_mixture_head():
    """mu is the query box after AdaMixer's xyzr update; the next stage starts from mu (detached)."""
    cfg = adamixer_config(num_stages=2)
    model = build_detector(cfg).eval()
    for stage in model.decoder.stages:  # make the regression non-trivial
        torch.nn.init.normal_(stage.head.reg_out.weight, std=0.05)
    images, _ = batch()
    with torch.inference_mode():
        stages = model(images, return_stages=True)[1].stages
    s0, s1 = stages
    # Stage 0 starts from the whole (resized) image for every query.
    sizes = model.transform(images)[1]
    for i, (h, w) in enumerate(sizes):
        torch.testing.assert_close(s0.proposals[i], torch.tensor([0.0, 0, w, h]).expand_as(s0.proposals[i]), atol=1e-3, rtol=0)
    assert not torch.allclose(s0.boxes, s0.proposals)  # the boxes moved
    torch.testing.assert_close(s1.proposals, s0.boxes, rtol=1e-4, atol=1e-3)


def test_relative_scale_follows_query_size():
    cfg = adamixer_config(num_stages=1)
    model = build_detector(cfg).eval()
    stage = model.decoder.stages[0]
    torch.nn.init.zeros_(stage.head.reg_out.weight)
    torch.nn.init.zeros_(stage.head.reg_out.bias)
    with torch.inference_mode():
        (s0,) = model([torch.rand(3, 96, 128)], return_stages=True)[1].stages
    wh = s0.proposals[..., 2:] - s0.proposals[..., :2]
    # raw 0 -> softplus(0) = log 2 of the query's w, h; zero deltas keep mu on the query box.
    torch.testing.assert_close(F.softplus(s0.raw_scale), math.log(2) * torch.cat([wh, wh], -1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s0.boxes, s0.proposals)


def test_adamixer_rejects_inconsistent_configs():
    with pytest.raises(ValueError, match="delta_mode"):
        build_detector(adamixer_config(delta_mode="proposal"))
    with pytest.raises(ValueError, match="sampling_groups"):
        build_detector(adamixer_config(sampling_groups=5))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_detector(tiny_config(architecture="detr"))
    with pytest.raises(ValueError, match="unknown neck"):
        build_detector(tiny_config(neck="bifpn"))


def test_topk_ratio_keeps_the_best_queries_with_their_boxes():
    cfg = adamixer_config(num_stages=3, topk_ratio=0.5)
    model = build_detector(cfg).eval()
    for stage in model.decoder.stages:
        torch.nn.init.normal_(stage.head.reg_out.weight, std=0.05)
        torch.nn.init.normal_(stage.head.cls_out.weight, std=0.5)
    images, _ = batch()
    with torch.inference_mode():
        stages = model(images, return_stages=True)[1].stages
    assert [s.boxes.shape[1] for s in stages] == [12, 6, 3]
    for prev, nxt in zip(stages, stages[1:]):
        keep = prev.objectness_logit.topk(nxt.boxes.shape[1], dim=1).indices
        # The kept queries' boxes are the previous stage's boxes of the highest objectness, in that order.
        torch.testing.assert_close(nxt.proposals, torch.gather(prev.boxes, 1, keep[..., None].expand(-1, -1, 4)),
                                   rtol=1e-4, atol=1e-3)


def test_stages_are_detached_from_each_other():
    cfg = adamixer_config(num_stages=2)
    model = build_detector(cfg).train()
    images, targets = batch()
    stages = model(images, targets, return_stages=True)[1].stages
    (stages[1].boxes.sum() + stages[1].objectness_logit.sum()).backward()
    s0, s1 = model.decoder.stages
    assert s0.head.reg_out.weight.grad is None  # the box path does not go back into stage 0's regression
    assert s1.head.reg_out.weight.grad.abs().sum() > 0
    assert s0.norm3.weight.grad.abs().sum() > 0  # the content path does (as in AdaMixer)


# ----------------------------------------------------------------------------- Swin-T weights, configs, counts


def test_swin_t_pretrained_weights_from_local_file(tmp_path):
    ref = torchvision.models.swin_t(weights=None)
    path = tmp_path / "swin_t.pth"
    torch.save(ref.state_dict(), path)
    body = SwinBody(str(path))
    torch.testing.assert_close(body.features[7][1].mlp[0].weight, ref.features[7][1].mlp[0].weight)
    torch.save({"features.0.0.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="not a torchvision swin_t"):
        SwinBody(str(path))
    out = body(torch.rand(1, 3, 64, 96))
    assert [tuple(v.shape[1:]) for v in out.values()] == [(96, 16, 24), (192, 8, 12), (384, 4, 6), (768, 2, 3)]


@pytest.mark.parametrize("name,arch,backbone,steps", [
    ("drmm_adamixer_r50", "adamixer", "resnet50", [24, 33]),
    ("adamixer_r50", "adamixer", "resnet50", [24, 33]),
    ("drmm_adamixer_r101", "adamixer", "resnet101", [24, 33]),
    ("drmm_adamixer_swin_t", "adamixer", "swin_t", [24, 33]),
    ("drmm_swin_t", "sparse_rcnn", "swin_t", [27, 33]),
])
def test_table5_configs(name, arch, backbone, steps):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    m = cfg.model
    assert (m.architecture, m.backbone, m.num_proposals, m.num_stages, m.num_classes) == (arch, backbone, 300, 6, 80)
    objective = "hungarian" if name == "adamixer_r50" else "drmm"
    assert (cfg.objective.name, cfg.train.epochs, cfg.train.lr_steps) == (objective, 36, steps)
    with torch.device("meta"):
        total, trainable = count_parameters(build_detector(cfg))
    if name.endswith("adamixer_r50"):
        assert abs(total - 134.6e6) / 134.6e6 < 0.005  # paper Table 11: AdaMixer and D-RMM + AdaMixer, 134.6M
    assert trainable > 0.9 * total
