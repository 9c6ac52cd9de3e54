"""The detector: build, forward/backward, eval outputs, parameter counts, checkpoints."""
import math

import pytest
import torch
import torchvision
from helpers import tiny_batch as batch
from helpers import tiny_config

from drmm import build_detector, detector_from_checkpoint
from drmm.config import Config
from drmm.models import count_parameters
from drmm.models.proposals import grid_shape, init_proposal_boxes
from drmm.models.box_ops import boxes_to_original, clean_boxes, decode_deltas




def test_forward_backward_tiny(tiny_cfg):
    model = build_detector(tiny_cfg).train()
    images, targets = batch()
    losses = model(images, targets)
    assert sorted(losses) == ["mcm.0", "mcm.1", "nll.0", "nll.1"]
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in params)
    # The learnable proposal boxes get gradient through the first stage's mu.
    assert model.proposals.boxes.weight.grad.abs().sum() > 0


def test_eval_output_format_and_ranges(tiny_cfg):
    tiny_cfg.model.num_proposals = 60  # 60 x 3 classes > 100 detections to choose from
    model = build_detector(tiny_cfg).eval()
    images = [torch.rand(3, 100, 120), torch.rand(3, 37, 211)]
    with torch.inference_mode():
        out = model(images)
    for det, img in zip(out, images):
        h, w = img.shape[-2:]
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape == (100, 4) and det["scores"].shape == (100,)
        assert (det["scores"] >= 0).all() and (det["scores"] <= 1).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()  # sorted
        b = det["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert det["labels"].dtype == torch.int64 and det["labels"].max() < 3


def test_detections_are_the_top_class_prob_times_objectness_pairs(tiny_cfg):
    """Scores, labels and boxes against a brute-force loop over every (component, class) pair."""
    model = build_detector(tiny_cfg).eval()
    images, _ = batch()
    with torch.inference_mode():
        out, trace = model(images, return_stages=True)
    last = trace.stages[-1]
    assert len(trace.stages) == tiny_cfg.model.num_stages
    for i, det in enumerate(out):
        pairs = []
        for k in range(last.class_logits.shape[1]):
            o = 1 / (1 + math.exp(-float(last.objectness_logit[i, k])))
            logits = [float(v) for v in last.class_logits[i, k]]
            z = sum(math.exp(v) for v in logits)
            pairs += [(math.exp(v) / z * o, k, c) for c, v in enumerate(logits)]
        pairs.sort(key=lambda t: -t[0])
        top = pairs[: len(det["scores"])]
        torch.testing.assert_close(det["scores"], torch.tensor([t[0] for t in top]), rtol=1e-5, atol=1e-6)
        assert det["labels"].tolist() == [t[2] for t in top]
        assert trace.components[i].tolist() == [t[1] for t in top]
        (h, w), (oh, ow) = trace.image_sizes[i], images[i].shape[-2:]
        for box, (_, k, _) in zip(det["boxes"], top):  # mu of the kept component, in the original image
            x1, y1, x2, y2 = (float(v) for v in last.boxes[i, k])
            x1, x2 = min(max(min(x1, x2), 0), w - 1), max(min(max(x1, x2), w), min(max(min(x1, x2), 0), w - 1) + 1)
            y1, y2 = min(max(min(y1, y2), 0), h - 1), max(min(max(y1, y2), h), min(max(min(y1, y2), 0), h - 1) + 1)
            ref = [min(max(x1 * ow / w, 0), ow), min(max(y1 * oh / h, 0), oh),
                   min(max(x2 * ow / w, 0), ow), min(max(y2 * oh / h, 0), oh)]
            torch.testing.assert_close(box, torch.tensor(ref), rtol=1e-5, atol=1e-4)


def test_mixture_parameters_by_hand(tiny_cfg):
    """pi = sigmoid(o) / sum, gamma = max(softplus(raw), 0.04 x box side), p = softmax (paper eqs. 2-3)."""
    model = build_detector(tiny_cfg).eval()
    with torch.inference_mode():
        stage = model(batch()[0], return_stages=True)[1].stages[-1]
    params = model.mixture_parameters(stage)
    i, k = 1, 5
    sig = [1 / (1 + math.exp(-float(v))) for v in stage.objectness_logit[i]]
    assert float(params["pi"][i, k]) == pytest.approx(sig[k] / sum(sig), rel=1e-5)
    assert float(params["objectness"][i, k]) == pytest.approx(sig[k], rel=1e-5)
    x1, y1, x2, y2 = (float(v) for v in stage.boxes[i, k])
    sides = [max(x2 - x1, 1.0), max(y2 - y1, 1.0)] * 2
    for j in range(4):
        softplus = math.log1p(math.exp(float(stage.raw_scale[i, k, j])))
        assert float(params["gamma"][i, k, j]) == pytest.approx(max(softplus, 0.04 * sides[j]), rel=1e-5)
    logits = [float(v) for v in stage.class_logits[i, k]]
    z = sum(math.exp(v) for v in logits)
    torch.testing.assert_close(params["class_prob"][i, k], torch.tensor([math.exp(v) / z for v in logits]))
    with pytest.raises(ValueError, match="only for the D-RMM head"):
        cfg = tiny_config()
        cfg.objective.name = "hungarian"
        build_detector(cfg).mixture_parameters(stage)


def test_mixture_head_moves_boxes_as_configured():
    from drmm.models.heads import MixtureHead

    proposals = torch.tensor([[[10.0, 20.0, 50.0, 100.0]]])  # w 40, h 80
    offsets = torch.tensor([[[1.0, -1.0, 0.5, 0.25]]])
    released = MixtureHead(8, 2, 1, 1).decode(offsets, proposals)
    torch.testing.assert_close(released, torch.tensor([[[11.0, 19.0, 50.5, 100.25]]]))
    relative = MixtureHead(8, 2, 1, 1, relative_offsets=True).decode(offsets, proposals)
    torch.testing.assert_close(relative, torch.tensor([[[50.0, -60.0, 70.0, 120.0]]]))
    head = MixtureHead(8, 2, 1, 1, relative_scales=True)
    raw = torch.tensor([[[0.3, -2.0, 1.0, 4.0]]])
    out = head.output(proposals, released, torch.zeros(1, 1, 3), torch.cat([offsets, raw], -1), torch.zeros(1, 1, 8))
    softplus = [math.log1p(math.exp(v)) for v in (0.3, -2.0, 1.0, 4.0)]
    expected = [s * side for s, side in zip(softplus, (40.0, 80.0, 40.0, 80.0))]
    torch.testing.assert_close(torch.nn.functional.softplus(out.raw_scale)[0, 0], torch.tensor(expected))


def test_top_k_post_processing_against_a_sort_of_all_pairs():
    from drmm.models.postprocess import TopKPostProcess

    g = torch.Generator().manual_seed(3)
    scores = torch.rand(2, 7, 5, generator=g)
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0]]).repeat(2, 7, 1) + torch.rand(2, 7, 1, generator=g)
    dets, comp = TopKPostProcess(9)(scores, boxes, [(50, 60), (50, 60)], [(100, 120), (25, 30)])
    for i in range(2):
        pairs = sorted(((float(scores[i, k, c]), k, c) for k in range(7) for c in range(5)), reverse=True)[:9]
        assert dets[i]["labels"].tolist() == [c for _, _, c in pairs] and comp[i].tolist() == [k for _, k, _ in pairs]
        torch.testing.assert_close(dets[i]["scores"], torch.tensor([s for s, _, _ in pairs]))
    scale = torch.tensor([2.0, 2.0, 2.0, 2.0])  # 50x60 -> 100x120
    torch.testing.assert_close(dets[0]["boxes"][0], boxes[0, comp[0, 0]] * scale)
    with pytest.raises(ValueError, match="detections_per_image"):
        TopKPostProcess(0)


def test_old_checkpoint_keys_are_remapped():
    from drmm.checkpoints import remap_state_dict

    old = {"decoder.stages.3.cls_out.weight": 1, "decoder.stages.0.reg_tower.2.bias": 2,
           "decoder.stages.1.dynamic_conv.out.weight": 3, "backbone.body.conv1.weight": 4}
    assert remap_state_dict(old) == {"decoder.stages.3.head.cls_out.weight": 1,
                                     "decoder.stages.0.head.reg_tower.2.bias": 2,
                                     "decoder.stages.1.dynamic_conv.out.weight": 3, "backbone.body.conv1.weight": 4}


def test_r50_eval_on_480x640_returns_at_most_100_detections():
    model = build_detector(Config()).eval()  # the paper's R50 model, random weights
    with torch.inference_mode():
        det = model([torch.rand(3, 480, 640)])[0]
    assert len(det["scores"]) <= 100
    assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
    b = det["boxes"]
    assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= 640).all() and (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= 480).all()


@pytest.mark.parametrize("backbone,expected", [("resnet50", 106.1e6), ("resnet101", None)])
def test_parameter_count_matches_paper(backbone, expected):
    cfg = Config()
    cfg.model.backbone = backbone
    total, trainable = count_parameters(build_detector(cfg))
    if expected:
        assert abs(total - expected) / expected < 0.01  # paper Table 11: 106.1M
    # Stem and layer1 are frozen; frozen BatchNorm has no parameters at all.
    frozen = total - trainable
    assert 0 < frozen < 1e6


@pytest.mark.parametrize("norm", ["bn", "bn_eval", "frozen"])
def test_frozen_backbone_parts(norm):
    cfg = Config()
    cfg.model.backbone, cfg.model.backbone_norm = "resnet18", norm
    cfg.model.neck_channels = cfg.model.hidden_dim = 64
    cfg.model.num_stages, cfg.model.num_proposals = 1, 4
    model = build_detector(cfg).train()
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.bn1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    if norm == "frozen":
        assert isinstance(body.bn1, torchvision.ops.misc.FrozenBatchNorm2d)
        return
    norms = {n: m for n, m in body.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert len(norms) == 20  # every BatchNorm of a ResNet-18 is a real one (affine parameters)
    # stem and layer1 stay in eval mode when the model trains; with bn, layers 2-4 use batch statistics
    for name, bn in norms.items():
        assert bn.training == (norm == "bn" and not name.startswith(("bn1", "layer1."))), name
    model.eval()
    assert not any(m.training for m in norms.values())


def test_pretrained_weights_from_local_file(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    cfg = Config()
    cfg.model.backbone, cfg.model.pretrained = "resnet18", str(path)
    cfg.model.neck_channels = cfg.model.hidden_dim = 64
    cfg.model.num_stages, cfg.model.num_proposals = 1, 4
    model = build_detector(cfg)
    torch.testing.assert_close(model.backbone.body.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    torch.testing.assert_close(model.backbone.body.bn1.running_mean, ref.bn1.running_mean)
    cfg.model.pretrained = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_detector(cfg)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    cfg.model.pretrained = str(bad)
    with pytest.raises(RuntimeError, match="bad.pth"):
        build_detector(cfg)
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError, match="not a torchvision resnet18"):
        build_detector(cfg)


def test_checkpoint_roundtrip_with_weights_only(tmp_path, tiny_cfg):
    model = build_detector(tiny_cfg).eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": tiny_cfg.to_dict(), "class_names": ["a", "b", "c"]}, path)
    # weights_only=True must be able to read it: plain tensors, dicts, lists, numbers.
    torch.load(path, weights_only=True)
    loaded, ckpt = detector_from_checkpoint(path)
    assert ckpt["class_names"] == ["a", "b", "c"]
    images, _ = batch()
    with torch.inference_mode():
        a, b = model(images), loaded(images)
    torch.testing.assert_close(a[0]["boxes"], b[0]["boxes"])
    torch.testing.assert_close(a[1]["scores"], b[1]["scores"])
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="junk.pt"):
        detector_from_checkpoint(tmp_path / "junk.pt")


def test_bad_inputs_give_clear_errors(tiny_cfg):
    model = build_detector(tiny_cfg)
    images, targets = batch()
    with pytest.raises(ValueError, match="targets are required"):
        model(images)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        model([torch.rand(100, 120)], targets[:1])
    with pytest.raises(ValueError, match="uint8"):
        model([torch.zeros(3, 10, 10, dtype=torch.uint8)], targets[:1])
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        model(images, [{"boxes": targets[0]["boxes"], "labels": torch.tensor([0])}, targets[1]])
    with pytest.raises(ValueError, match="NaN"):
        model(images[:1], [{"boxes": torch.tensor([[0.0, 0, float("nan"), 1]]), "labels": torch.tensor([0])}])


def test_resize_and_back(tiny_cfg):
    model = build_detector(tiny_cfg)
    t = model.transform.eval()
    batch_, sizes, tg = t([torch.rand(3, 100, 120), torch.rand(3, 50, 400)], [
        {"boxes": torch.tensor([[10.0, 20, 30, 40]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[0.0, 0, 400, 50]]), "labels": torch.tensor([0])}])
    assert sizes == [(96, 115), (20, 160)]  # short side 96, long side capped at 160
    assert batch_.shape[-2] % 32 == 0 and batch_.shape[-1] % 32 == 0
    torch.testing.assert_close(tg[1]["boxes"], torch.tensor([[0.0, 0, 160, 20]]))
    back = boxes_to_original(tg[0]["boxes"], sizes[0], (100, 120))
    torch.testing.assert_close(back, torch.tensor([[10.0, 20, 30, 40]]), atol=1e-4, rtol=0)


def test_proposal_grid_init():
    assert grid_shape(300) == (15, 20)
    boxes = init_proposal_boxes(300, "grid", 0.5)
    assert boxes.shape == (300, 4)
    assert torch.allclose(boxes[:, 2:], torch.tensor(0.5))
    assert torch.allclose(boxes[0, :2], torch.tensor([0.025, 1 / 30]))
    assert len(set(map(tuple, boxes[:, :2].tolist()))) == 300
    assert torch.equal(init_proposal_boxes(7, "whole")[3], torch.tensor([0.5, 0.5, 1.0, 1.0]))


def test_box_helpers():
    boxes = torch.tensor([[[50.0, 40, 10, 10], [-5, -5, 500, 500]]])
    clean = clean_boxes(boxes, [(100, 200)])
    assert torch.equal(clean, torch.tensor([[[10.0, 10, 50, 40], [0, 0, 200, 100]]]))
    ref = torch.tensor([[0.0, 0, 10, 20]])
    assert torch.allclose(decode_deltas(torch.zeros(1, 4), ref), ref)
    moved = decode_deltas(torch.tensor([[2.0, 0, 0, 0]]), ref)  # dx weight 2 -> one box width
    assert torch.allclose(moved, torch.tensor([[10.0, 0, 20, 20]]))


def test_bad_labels_and_box_order_are_errors(tiny_cfg):
    model = build_detector(tiny_cfg)  # 3 classes
    img = [torch.rand(3, 50, 50)]
    with pytest.raises(ValueError, match=r"labels'\] must be integers in 0..2"):
        model(img, [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match="must be integers"):
        model(img, [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([-1])}])
    with pytest.raises(ValueError, match="x2 < x1"):
        model(img, [{"boxes": torch.tensor([[10.0, 0, 5, 10]]), "labels": torch.tensor([0])}])


def test_heads_stay_fp32_under_bf16_autocast(tiny_cfg):
    model = build_detector(tiny_cfg).eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        stages = model([torch.rand(3, 100, 120)], return_stages=True)[1].stages
    assert stages[-1].boxes.dtype == torch.float32 and stages[-1].raw_scale.dtype == torch.float32


def test_fused_frozen_batchnorm_matches_torchvision():
    from drmm.models.backbone import FrozenBatchNorm2d

    ref, ours = torchvision.ops.misc.FrozenBatchNorm2d(6), FrozenBatchNorm2d(6)
    for name in ("weight", "bias", "running_mean"):
        getattr(ref, name).copy_(torch.randn(6))
    ref.running_var.copy_(torch.rand(6) + 0.1)
    ours.load_state_dict(ref.state_dict())  # same buffers: torchvision checkpoints load unchanged
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    ref64, ours64 = ref.double(), ours.double()
    torch.testing.assert_close(ours64(x), ref64(x))
    (g_ours,) = torch.autograd.grad(ours64(x).square().sum(), x)
    (g_ref,) = torch.autograd.grad(ref64(x).square().sum(), x)
    torch.testing.assert_close(g_ours, g_ref)
    ours.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 activations, fp32 statistics
        y = ours(x.detach().float().bfloat16())
    torch.testing.assert_close(y.float(), ref.float()(x.detach().float()), atol=0.05, rtol=0.02)


def test_dynamic_conv_against_per_proposal_reference():
    """Each proposal's feature -> W1 (D x d), W2 (d x D); RoI x W1 -> LN -> ReLU -> x W2 -> LN -> ReLU -> Linear."""
    from drmm.models.sparse_rcnn import DynamicConv

    torch.manual_seed(0)
    D, d, S = 8, 3, 2
    conv = DynamicConv(D, d, S)
    pro, roi = torch.randn(4, D), torch.randn(4, S * S, D)
    out = conv(pro, roi)
    for m in range(4):
        params = conv.params(pro[m])
        w1, w2 = params[: D * d].view(D, d), params[D * d:].view(d, D)
        x = torch.relu(conv.norm1(roi[m] @ w1))
        x = torch.relu(conv.norm2(x @ w2))
        torch.testing.assert_close(out[m], torch.relu(conv.norm3(conv.out(x.flatten()))), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["frozen", "bn"])
def test_optimize_for_inference_keeps_the_detections(norm):
    cfg = Config()
    cfg.model.backbone, cfg.model.neck_channels, cfg.model.hidden_dim = "resnet18", 64, 64
    cfg.model.backbone_norm = norm
    cfg.model.num_stages, cfg.model.num_proposals, cfg.model.min_size, cfg.model.max_size = 2, 20, 128, 160
    model = build_detector(cfg).eval()
    body = model.backbone.body
    with torch.no_grad():  # non-trivial frozen statistics, so folding them is not a no-op
        for m in body.modules():
            if isinstance(m, (torchvision.ops.misc.FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    images = [torch.rand(3, 120, 150), torch.rand(3, 100, 160)]
    with torch.inference_mode():
        ref, ref_trace = model(images, return_stages=True)
        ref_stages = ref_trace.stages
        model.optimize_for_inference()
        out, trace = model(images, return_stages=True)
        stages = trace.stages
    norms = (torchvision.ops.misc.FrozenBatchNorm2d, torch.nn.BatchNorm2d)
    assert not any(isinstance(m, norms) for m in body.modules())  # all 20 folded
    assert body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(stages[-1].boxes, ref_stages[-1].boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(stages[-1].class_logits, ref_stages[-1].class_logits, rtol=1e-4, atol=1e-4)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="cannot train"):
        model.train()(images, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2)


def test_renamed_config_key_still_loads():
    """0.1.0 configs and checkpoints say fpn_channels; the field is neck_channels now."""
    from drmm.config import apply_overrides

    assert Config.from_dict({"model": {"fpn_channels": 64}}).model.neck_channels == 64
    assert apply_overrides(Config(), ["model.fpn_channels=48"]).model.neck_channels == 48
    with pytest.raises(ValueError, match="old name of 'neck_channels'"):
        Config.from_dict({"model": {"fpn_channels": 64, "neck_channels": 64}})
