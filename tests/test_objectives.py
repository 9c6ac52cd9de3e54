"""The Hungarian baseline objective, the D-RMM loss ablations and the top-k proposal ratio."""
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_batch as batch
from helpers import tiny_config
from scipy import special, stats
from torchvision.ops import generalized_box_iou

from drmm import build_detector
from drmm.config import load_config
from drmm.objectives import DRMMObjective, HungarianObjective, build_objective, hungarian_match
from drmm.mixture import mixture_losses
from drmm.structures import StageOutput, pad_targets

ROOT = Path(__file__).resolve().parents[1]
ALPHA, GAMMA = 0.25, 2.0


# --- matcher ---------------------------------------------------------------------------

def brute_force_total(cost: np.ndarray) -> float:
    """Minimum total cost of a one-to-one assignment of a [K, G] matrix, by enumeration."""
    K, G = cost.shape
    if G == 0 or K == 0:
        return 0.0
    if G <= K:
        return min(sum(cost[p[g], g] for g in range(G)) for p in itertools.permutations(range(K), G))
    return min(sum(cost[k, p[k]] for k in range(K)) for p in itertools.permutations(range(G), K))


@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_matcher_matches_brute_force(K):
    g = torch.Generator().manual_seed(K)
    sizes = [0, K, 4, 1, 3, 2]  # G = 0, G = K and G on both sides of K
    cost = torch.randn(len(sizes), K, sum(sizes), generator=g)
    matches = hungarian_match(cost, sizes)
    starts = np.cumsum([0] + sizes)
    padded = torch.full((len(sizes), K, max(sizes)), 1e3)
    for b, n in enumerate(sizes):
        padded[b, :, :n] = cost[b, :, starts[b] : starts[b] + n]
    for layout in (matches, hungarian_match(padded, sizes, padded=True)):
        for b, ((pred, gt), n) in enumerate(zip(layout, sizes)):
            block = cost[b, :, starts[b] : starts[b] + n].numpy()
            assert len(pred) == len(gt) == min(K, n)
            assert len(set(pred.tolist())) == len(pred) and gt.tolist() == sorted(set(gt.tolist()))
            np.testing.assert_allclose(block[pred, gt].sum(), brute_force_total(block), rtol=1e-5, atol=1e-6)


# --- Hungarian objective ---------------------------------------------------------------

def focal_by_hand(x: float, t: float) -> float:
    p = 1 / (1 + math.exp(-x))
    p_t = p if t else 1 - p
    return (ALPHA if t else 1 - ALPHA) * (1 - p_t) ** GAMMA * -math.log(p_t)


def test_hungarian_objective_hand_checked():
    # Image 200 x 100 (w x h); one ground truth of class 1; proposal 1 is the close one.
    gt = [20.0, 10.0, 60.0, 50.0]
    boxes = torch.tensor([[[100.0, 50.0, 180.0, 90.0], [22.0, 12.0, 58.0, 52.0]]])
    logits = torch.tensor([[[0.5, -0.5], [-1.0, 2.0]]])
    stage = StageOutput(boxes, boxes, logits)
    targets = [{"boxes": torch.tensor([gt]), "labels": torch.tensor([1])}]
    out = HungarianObjective()([stage], targets, [(100, 200)])
    assert sorted(out) == ["cls.0", "giou.0", "l1.0"]

    focal = sum(focal_by_hand(x, t) for x, t in [(0.5, 0), (-0.5, 0), (-1.0, 0), (2.0, 1)])
    l1 = 2 / 200 + 2 / 100 + 2 / 200 + 2 / 100
    inter, union, hull = 36 * 38, 36 * 40 + 40 * 40 - 36 * 38, 40 * 42  # hull = [20, 10, 60, 52]
    giou = inter / union - (hull - union) / hull
    assert out["cls.0"].item() == pytest.approx(2 * focal, rel=1e-5)
    assert out["l1.0"].item() == pytest.approx(5 * l1, rel=1e-5)
    assert out["giou.0"].item() == pytest.approx(2 * (1 - giou), rel=1e-5)


def test_hungarian_objective_without_ground_truth():
    logits = torch.randn(2, 5, 3, requires_grad=True)
    boxes = torch.tensor([10.0, 10.0, 40.0, 50.0]).repeat(2, 5, 1).requires_grad_(True)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    out = HungarianObjective()([StageOutput(boxes, boxes, logits)], [empty, empty], [(60, 80), (60, 80)])
    negatives = sum(focal_by_hand(x, 0) for x in logits.detach().flatten().tolist())
    assert out["cls.0"].item() == pytest.approx(2 * negatives, rel=1e-5)  # divided by max(0, 1)
    assert out["l1.0"].item() == 0 and out["giou.0"].item() == 0
    sum(out.values()).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(boxes.grad).all()
    # One image with ground truths and one without: finite, the empty image's proposals are negatives.
    full = {"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([2])}
    out = HungarianObjective()([StageOutput(boxes, boxes, logits)], [full, empty], [(60, 80), (60, 80)])
    assert all(torch.isfinite(v) for v in out.values()) and out["l1.0"] > 0


def test_batched_cost_equals_per_image_loop():
    g = torch.Generator().manual_seed(3)
    B, K, C, sizes, hw = 3, 6, 4, [2, 0, 3], [(60, 80), (90, 50), (70, 70)]
    xy = torch.rand(B, K, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + torch.rand(B, K, 2, generator=g) * 20 + 2], -1)
    logits = torch.randn(B, K, C, generator=g)
    targets = []
    for n in sizes:
        gxy = torch.rand(n, 2, generator=g) * 40
        targets.append({"boxes": torch.cat([gxy, gxy + 10], -1), "labels": torch.randint(0, C, (n,), generator=g)})
    obj = HungarianObjective()
    image_wh = torch.tensor([[w, h, w, h] for h, w in hw], dtype=torch.float32)
    labels = torch.cat([t["labels"] for t in targets])
    gt = torch.cat([t["boxes"] for t in targets])
    gt_wh = image_wh.repeat_interleave(torch.tensor(sizes), 0)
    cost = obj.cost_matrix(StageOutput(boxes, boxes, logits), labels, gt, image_wh, gt_wh)
    assert cost.shape == (B, K, sum(sizes))
    start = 0
    for b, t in enumerate(targets):
        n, wh = len(t["labels"]), image_wh[b]
        p = logits[b].sigmoid()[:, t["labels"]]  # the released form, with eps
        focal = ALPHA * (1 - p) ** GAMMA * -(p + 1e-8).log() - (1 - ALPHA) * p**GAMMA * -(1 - p + 1e-8).log()
        l1 = (boxes[b][:, None] / wh - t["boxes"][None] / wh).abs().sum(-1)
        ref = 2 * focal + 5 * l1 - 2 * generalized_box_iou(boxes[b], t["boxes"])
        torch.testing.assert_close(cost[b, :, start : start + n], ref, rtol=1e-5, atol=1e-5)
        start += n


# --- D-RMM ablations -------------------------------------------------------------------

def scipy_terms(mu, raw, obj, cls, gt, labels, ratio=0.04):
    """``log pi [K]`` and ``log F + log P [G, K]`` of one image with scipy.stats.cauchy, in float64."""
    mu, raw, obj, cls, gt = (np.asarray(t, dtype=np.float64) for t in (mu, raw, obj, cls, gt))
    o = special.expit(obj)
    p = special.softmax(cls, -1)
    wh = np.maximum(mu[:, 2:] - mu[:, :2], 1.0)
    scale = np.maximum(np.logaddexp(0.0, raw), ratio * np.concatenate([wh, wh], -1))
    lik = np.array([[stats.cauchy.logpdf(g, mu[k], scale[k]).sum() + np.log(p[k, c]) for k in range(len(mu))]
                    for g, c in zip(gt, labels)])
    return np.log(o / o.sum()), lik


def case(mu, obj, gt, labels, C=3):
    """A one-image stage (float64) and its targets; class logits favour each component's index mod C."""
    mu = torch.tensor(mu, dtype=torch.float64)
    K = len(mu)
    raw = torch.full((K, 4), 2.0, dtype=torch.float64)
    cls = torch.nn.functional.one_hot(torch.arange(K) % C, C).double() * 2.0
    obj = torch.tensor(obj, dtype=torch.float64)
    stage = StageOutput(mu[None], mu[None], cls[None], obj[None], raw[None])
    targets = [{"boxes": torch.tensor(gt, dtype=torch.float64), "labels": torch.tensor(labels)}]
    return stage, targets, scipy_terms(mu, raw, obj, cls, gt, labels)


def best_assignment(score: np.ndarray) -> list[int]:
    """Component of each ground truth maximising the total ``score [G, K]`` (G <= K), by enumeration."""
    G, K = score.shape
    return list(max(itertools.permutations(range(K), G), key=lambda p: sum(score[i, p[i]] for i in range(G))))


def test_beta_zero_gives_nll_only():
    gt = [[12, 10, 50, 52], [58, 61, 92, 90]]
    stage, targets, (log_pi, lik) = case([[10, 10, 50, 50], [60, 60, 90, 95]], [1.0, -1.0], gt, [0, 1])
    out = DRMMObjective(beta=0.0)([stage, stage], targets)
    assert sorted(out) == ["mcm.0", "mcm.1", "nll.0", "nll.1"]
    assert out["mcm.0"].item() == 0 and out["mcm.1"].item() == 0
    nll = -special.logsumexp(log_pi + lik, axis=1).sum()
    assert out["nll.0"].item() == pytest.approx(nll, rel=1e-10) and out["nll.1"].item() == pytest.approx(nll, rel=1e-10)


def test_mcm_bipartite_equals_max_when_separated_and_differs_otherwise():
    # Separated: each ground truth's best component is its own, so matching = argmax.
    mu = [[10, 10, 50, 50], [200, 200, 240, 240], [100, 20, 150, 60]]
    stage, targets, (log_pi, lik) = case(mu, [0.5, 0.0, 0.3], [[11, 9, 52, 50], [98, 21, 149, 62]], [0, 2])
    log_comp = log_pi + lik
    assert best_assignment(log_comp) == log_comp.argmax(1).tolist()
    lse = special.logsumexp(log_comp, axis=1)
    bip = DRMMObjective(mcm_mode="bipartite")([stage], targets)
    assert bip["mcm.0"].item() == pytest.approx(0.5 * (lse - log_comp.max(1)).sum(), rel=1e-9)
    assert bip["nll.0"].item() == pytest.approx(-lse.sum(), rel=1e-10)

    # Two ground truths both best explained by component 0: matching sends one of them to component 1.
    mu = [[12, 10, 52, 50], [100, 100, 140, 140]]
    gt = [[10, 10, 50, 50], [14, 10, 54, 50]]
    stage, targets, (log_pi, lik) = case(mu, [2.0, -2.0], gt, [0, 0])
    log_comp = log_pi + lik
    assert (log_comp.argmax(1) == 0).all()
    assigned = best_assignment(log_comp)
    assert sorted(assigned) == [0, 1]
    lse = special.logsumexp(log_comp, axis=1)
    expected = sum(lse[i] - log_comp[i, assigned[i]] for i in range(2))
    bip = DRMMObjective(beta=1.0, mcm_mode="bipartite")([stage], targets)
    mx = DRMMObjective(beta=1.0, mcm_mode="max")([stage], targets)
    assert expected > sum(lse - log_comp.max(1)) + 1  # the case tells the two modes apart
    assert bip["mcm.0"].item() == pytest.approx(expected, rel=1e-9)
    assert mx["mcm.0"].item() == pytest.approx(sum(lse - log_comp.max(1)), rel=1e-9)


def test_nll_max_is_minus_best_log_component():
    stage, targets, (log_pi, lik) = case([[10, 10, 50, 50], [14, 12, 56, 50]], [0.2, 1.0], [[12, 10, 52, 50]], [1])
    out = DRMMObjective(beta=0.0, nll_mode="max")([stage], targets)
    assert out["nll.0"].item() == pytest.approx(-(log_pi + lik[0]).max(), rel=1e-10)
    assert -(log_pi + lik[0]).max() > -special.logsumexp(log_pi + lik[0]) + 0.1  # the case tells max from mixture


def test_nll_bipartite_hand_case():
    mu = [[10, 10, 50, 50], [12, 11, 49, 52], [100, 20, 150, 60]]
    obj = [0.5, -1.0, 0.3]
    gt = [[11, 10, 50, 51], [101, 20, 150, 61]]
    stage, targets, (log_pi, lik) = case(mu, obj, gt, [1, 2])
    assigned = best_assignment(lik)  # pi-free likelihood: GT 0 -> component 1 (class 1), GT 1 -> component 2
    assert assigned == [1, 2]
    # A second image without ground truth: its components are all objectness negatives.
    stage2 = StageOutput(*(torch.cat([t, t]) for t in (stage.proposals, stage.boxes, stage.class_logits,
                                                          stage.objectness_logit, stage.raw_scale)))
    empty = {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.int64)}
    out = DRMMObjective(beta=0.0, nll_mode="bipartite")([stage2], targets + [empty])
    assert sorted(out) == ["mcm.0", "nll.0", "obj.0"]
    assert out["nll.0"].item() == pytest.approx(-(lik[0, 1] + lik[1, 2]), rel=1e-10)
    o = special.expit(np.array(obj))
    bce = -np.log(1 - o[0]) - np.log(o[1]) - np.log(o[2])  # image 1: components 1, 2 matched
    bce += -np.log(1 - o).sum()  # image 2: none matched
    assert out["obj.0"].item() == pytest.approx(bce, rel=1e-10)


def torch_log_parts(mu, raw, obj, cls, gt, labels, ratio=0.04):
    """``[G][K]`` of (log pi, log F, log P) for one image: float64 loops from the formulas, differentiable.

    ``F`` is the Cauchy density ``gamma / (pi (gamma^2 + (x - mu)^2))`` per coordinate,
    ``gamma = max(softplus(raw), ratio * size)`` with the size taken as plain floats.
    """
    o = 1 / (1 + torch.exp(-obj))
    rows = []
    for x, c in zip(gt, labels):
        row = []
        for k in range(len(mu)):
            w, h = (max(float(mu[k, j + 2].detach() - mu[k, j].detach()), 1.0) for j in (0, 1))
            gamma = torch.maximum(torch.log(1 + torch.exp(raw[k])), ratio * torch.tensor([w, h, w, h]).double())
            log_f = torch.log(gamma / (math.pi * (gamma**2 + (x - mu[k]) ** 2))).sum()
            e = torch.exp(cls[k])
            row.append((torch.log(o[k] / o.sum()), log_f, torch.log(e[c] / e.sum())))
        rows.append(row)
    return rows


@pytest.mark.parametrize(("nll_mode", "mcm_mode", "stop"), [
    ("max", "max", ("coord",)),
    ("mixture", "bipartite", ("mix",)),
    ("bipartite", "bipartite", ("coord", "class")),
])
def test_ablation_losses_and_gradients_match_brute_force(nll_mode, mcm_mode, stop):
    # Both ground truths are best explained by component 0, so bipartite matching differs from max.
    mu = [[12, 10, 52, 50], [100, 100, 140, 140], [30, 30, 70, 80]]
    stage, targets, _ = case(mu, [2.0, -2.0, 0.5], [[10, 10, 50, 50], [14, 10, 54, 50]], [0, 0])
    inputs = [t[0].clone().requires_grad_(True) for t in (stage.boxes, stage.raw_scale, stage.objectness_logit,
                                                          stage.class_logits)]
    mu, raw, obj, cls = inputs
    out = DRMMObjective(beta=0.5, stop_grad=stop, nll_mode=nll_mode, mcm_mode=mcm_mode)(
        [StageOutput(mu[None], mu[None], cls[None], obj[None], raw[None])], targets)

    gt, labels = targets[0]["boxes"], targets[0]["labels"].tolist()
    parts = torch_log_parts(mu, raw, obj, cls, gt, labels)
    log_comp = torch.stack([torch.stack([sum(p) for p in row]) for row in parts])  # [G, K]
    lik = torch.stack([torch.stack([p[1] + p[2] for p in row]) for row in parts])  # pi-free
    lse = torch.log(torch.exp(log_comp).sum(1))
    ref = {}
    if nll_mode == "mixture":
        ref["nll.0"] = -lse.sum()
    elif nll_mode == "max":
        ref["nll.0"] = -log_comp.max(1).values.sum()
    else:
        matched = best_assignment(lik.detach().numpy())
        ref["nll.0"] = -sum(lik[i, k] for i, k in enumerate(matched))
        o = 1 / (1 + torch.exp(-obj))
        ref["obj.0"] = -sum(torch.log(o[k]) if k in matched else torch.log(1 - o[k]) for k in range(len(o)))
    kept = torch.stack([torch.stack([sum(t.detach() if n in stop else t for n, t in zip(("mix", "coord", "class"), p))
                                     for p in row]) for row in parts])
    top = best_assignment(log_comp.detach().numpy()) if mcm_mode == "bipartite" else kept.argmax(1).tolist()
    assert mcm_mode == "max" or top != log_comp.argmax(1).tolist()
    ref["mcm.0"] = 0.5 * sum(torch.log(torch.exp(kept[i]).sum()) - kept[i, k] for i, k in enumerate(top))

    assert sorted(out) == sorted(ref)
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-10, atol=1e-12)
        ours = torch.autograd.grad(out[key], inputs, allow_unused=True, retain_graph=True)
        theirs = torch.autograd.grad(ref[key], inputs, allow_unused=True, retain_graph=True)
        for name, t, g, r in zip(("mu", "raw", "obj", "cls"), inputs, ours, theirs):
            g, r = (torch.zeros_like(t) if x is None else x for x in (g, r))
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10, msg=lambda m, k=key, n=name: f"{k} d/d{n}: {m}")


def test_ablation_options_are_checked_and_built():
    with pytest.raises(ValueError, match="nll_mode"):
        DRMMObjective(nll_mode="nope")
    with pytest.raises(ValueError, match="mcm_mode"):
        DRMMObjective(mcm_mode="argmax")
    with pytest.raises(ValueError, match="reduction"):
        DRMMObjective(reduction="none")
    with pytest.raises(ValueError, match="coord_dist"):
        DRMMObjective(coord_dist="student")
    with pytest.raises(ValueError, match="stop_grad"):
        DRMMObjective(stop_grad=("coords",))
    cfg = load_config(ROOT / "configs/sparse_rcnn_r50.yaml")
    assert (cfg.objective.name, cfg.model.proposal_init, cfg.train.lr, cfg.train.weight_decay) == (
        "hungarian", "whole", 2.5e-5, 1e-4)
    assert (cfg.train.lr_steps, cfg.train.epochs, cfg.model.num_proposals) == ([27, 33], 36, 300)
    cfg.objective.l1_weight = 3.0
    obj = build_objective(cfg.objective)
    assert isinstance(obj, HungarianObjective) and obj.l1_weight == 3.0 and obj.cls_weight == 2.0
    cfg.objective.name, cfg.objective.nll_mode = "drmm", "bipartite"
    assert build_objective(cfg.objective).nll_mode == "bipartite"


# --- tiny detectors --------------------------------------------------------------------



ABLATIONS = {
    "hungarian": {"name": "hungarian"},
    "nll_only": {"beta": 0.0},
    "nll_max": {"nll_mode": "max", "beta": 0.0},
    "nll_bipartite": {"nll_mode": "bipartite", "beta": 0.0},
    "mcm_bipartite": {"mcm_mode": "bipartite"},
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_tiny_detector_trains_and_evaluates(name):
    cfg = tiny_config(topk_ratio=0.5) if name == "hungarian" else tiny_config()
    for k, v in ABLATIONS[name].items():
        setattr(cfg.objective, k, v)
    model = build_detector(cfg).train()
    images, targets = batch()
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    if name == "hungarian":
        assert not model.is_mixture and sorted(losses) == ["cls.0", "cls.1", "giou.0", "giou.1", "l1.0", "l1.1"]
    model.eval()
    with torch.inference_mode():
        det = model(images)
    for d in det:
        assert ((d["scores"] >= 0) & (d["scores"] <= 1)).all()


def clipped(boxes, sizes):
    """Corners sorted, clipped to each (h, w) image, sides at least 1 px: a per-image reference."""
    out = boxes.clone()
    for b, (h, w) in enumerate(sizes):
        for lo, hi, size in ((0, 2, w), (1, 3, h)):
            a, z = torch.minimum(boxes[b, :, lo], boxes[b, :, hi]), torch.maximum(boxes[b, :, lo], boxes[b, :, hi])
            out[b, :, lo] = a.clamp(0, size - 1)
            out[b, :, hi] = torch.maximum(z.clamp(max=size), out[b, :, lo] + 1)
    return out


@pytest.mark.parametrize("objective", ["drmm", "hungarian"])
def test_topk_next_stage_mode_shrinks_components_per_stage(objective):
    """drmm 0.1's top-k: ceil(K * ratio) go on (clipped, with clip_stage_boxes); every stage outputs all its K."""
    cfg = tiny_config(num_stages=3, topk_ratio=0.5, topk_mode="next_stage", clip_stage_boxes=True)
    cfg.objective.name = objective
    model = build_detector(cfg).eval()
    images, _ = batch()
    with torch.inference_mode():
        stages = model(images, return_stages=True)[1].stages
    assert [s.boxes.shape[1] for s in stages] == [12, 6, 3]
    assert [s.class_logits.shape[1] for s in stages] == [12, 6, 3]
    assert all(s.kept is None for s in stages)
    # The kept proposals of stage 2 are stage 1's highest-scoring boxes.
    score = stages[0].objectness_logit if objective == "drmm" else stages[0].class_logits.amax(-1)
    top = score.topk(6, dim=1).indices[..., None].expand(-1, -1, 4)
    sizes = model.transform(images)[1]
    torch.testing.assert_close(stages[1].proposals, torch.gather(clipped(stages[0].boxes, sizes), 1, top))
    with pytest.raises(ValueError, match="topk_ratio"):
        build_detector(tiny_config(topk_ratio=0.0))
    with pytest.raises(ValueError, match="topk_mode"):
        build_detector(tiny_config(topk_ratio=0.5, topk_mode="sometimes"))


@pytest.mark.parametrize("objective", ["drmm", "hungarian"])
def test_topk_released_mode_keeps_int_k_ratio_at_every_stage(objective):
    """As released: each stage keeps int(K * ratio) components (the last too), the next gets them unclipped."""
    cfg = tiny_config(num_stages=3, topk_ratio=0.7, num_proposals=10)
    cfg.objective.name = objective
    model = build_detector(cfg).eval()
    images, _ = batch()
    with torch.inference_mode():
        dets, trace = model(images, return_stages=True)
    stages = trace.stages
    assert [s.boxes.shape[1] for s in stages] == [10, 7, 4]  # int(10 * 0.7) = 7, int(7 * 0.7) = 4
    assert [s.kept.sum(1).tolist() for s in stages] == [[7, 7], [4, 4], [2, 2]]
    for s, nxt in zip(stages, stages[1:]):
        score = s.objectness_logit if objective == "drmm" else s.class_logits.amax(-1)
        top = score.topk(len(nxt.boxes[0]), dim=1).indices
        for b in range(len(images)):
            assert sorted(top[b].tolist()) == s.kept[b].nonzero().squeeze(1).tolist()
            torch.testing.assert_close(nxt.proposals[b], s.boxes[b, top[b]])  # best first, not clipped
    # detections come only from the last stage's kept components
    for b, comp in enumerate(trace.components):
        assert stages[-1].kept[b, comp[dets[b]["scores"] > 0]].all()


def test_topk_released_loss_covers_only_the_kept_components():
    cfg = tiny_config(num_stages=2, topk_ratio=0.5)
    model = build_detector(cfg).train()
    images, targets = batch()
    torch.manual_seed(0)
    losses, trace = model(images, targets, return_stages=True)
    gt_boxes, gt_labels, gt_valid = pad_targets(trace.targets)
    for i, s in enumerate(trace.stages):
        args = (s.boxes, s.raw_scale, s.objectness_logit, s.class_logits, gt_boxes, gt_labels, gt_valid)
        nll, _ = mixture_losses(*args, kept=s.kept)
        torch.testing.assert_close(losses[f"nll.{i}"], nll.sum())
        assert (mixture_losses(*args)[0].sum() - nll.sum()).abs() > 1e-3  # not the loss over all K


def test_topk_released_hungarian_ignores_the_dropped_proposals():
    """Changing what a dropped proposal predicts does not change the baseline's loss."""
    g = torch.Generator().manual_seed(0)
    B, K, C = 2, 8, 3
    xy = torch.rand(B, K, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 10 + torch.rand(B, K, 2, generator=g) * 30], -1)
    logits = torch.randn(B, K, C, generator=g)
    kept = torch.zeros(B, K, dtype=torch.bool)
    kept[:, ::2] = True
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([1])}] * B
    objective = HungarianObjective()
    sizes = [(100, 120)] * B
    base = objective([StageOutput(boxes, boxes, logits, kept=kept)], targets, sizes)
    logits2, boxes2 = logits.clone(), boxes.clone()
    logits2[~kept] = 50.0  # confident, on every class
    boxes2[~kept] = torch.tensor([5.0, 5.0, 40.0, 30.0])  # exactly on the ground truth
    other = objective([StageOutput(boxes2, boxes2, logits2, kept=kept)], targets, sizes)
    for k in base:
        torch.testing.assert_close(base[k], other[k])
    assert objective([StageOutput(boxes2, boxes2, logits2)], targets, sizes)["cls.0"] > 10 * base["cls.0"]


def test_topk_released_mode_rejects_the_bipartite_ablations():
    cfg = tiny_config(topk_ratio=0.5)
    cfg.objective.mcm_mode = "bipartite"
    with pytest.raises(ValueError, match="topk_mode: next_stage"):
        build_detector(cfg)
    cfg.model.topk_mode = "next_stage"
    build_detector(cfg)
