"""mixture_losses against independent float64 brute forces (scipy.stats; a torch loop for gradients), plus safety."""
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from drmm.mixture import mixture_losses
from drmm.objectives import DRMMObjective
from drmm.structures import StageOutput

SCIPY = {"cauchy": stats.cauchy, "gaussian": stats.norm, "laplace": stats.laplace}


def random_case(B=3, K=7, G=5, C=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, K, 2, generator=g, dtype=dtype) * 200
    wh = torch.rand(B, K, 2, generator=g, dtype=dtype) * 100 + 5
    mu = torch.cat([xy, xy + wh], -1)
    raw = torch.randn(B, K, 4, generator=g, dtype=dtype) * 3
    obj = torch.randn(B, K, generator=g, dtype=dtype) * 2
    cls = torch.randn(B, K, C, generator=g, dtype=dtype) * 2
    gxy = torch.rand(B, G, 2, generator=g, dtype=dtype) * 200
    gt = torch.cat([gxy, gxy + torch.rand(B, G, 2, generator=g, dtype=dtype) * 100 + 5], -1)
    labels = torch.randint(0, C, (B, G), generator=g)
    valid = torch.rand(B, G, generator=g) > 0.3
    valid[0, 0] = True
    valid[-1] = False  # an image without ground truth
    return mu, raw, obj, cls, gt, labels, valid


def brute_force(mu, raw, obj, cls, gt, labels, valid, ratio=0.04, dist="cauchy"):
    """Per-(image, gt) loops in float64 numpy with scipy densities; independent of drmm."""
    mu, raw, obj, cls, gt = (t.detach().double().numpy() for t in (mu, raw, obj, cls, gt))
    B, K, _ = mu.shape
    G = gt.shape[1]
    nll, mcm = np.zeros((B, G)), np.zeros((B, G))
    for b in range(B):
        o = special.expit(obj[b])
        pi = o / o.sum()
        p = special.softmax(cls[b], axis=-1)
        for i in range(G):
            if not valid[b, i]:
                continue
            log_comp = np.empty(K)
            for k in range(K):
                w = max(mu[b, k, 2] - mu[b, k, 0], 1.0)
                h = max(mu[b, k, 3] - mu[b, k, 1], 1.0)
                floor = ratio * np.array([w, h, w, h])
                scale = np.maximum(np.logaddexp(0.0, raw[b, k]), floor)  # softplus
                lp = SCIPY[dist].logpdf(gt[b, i], loc=mu[b, k], scale=scale).sum()
                log_comp[k] = np.log(pi[k]) + lp + np.log(p[k, labels[b, i]])
            total = special.logsumexp(log_comp)
            nll[b, i] = -total
            mcm[b, i] = total - log_comp.max()
    return nll, mcm


def brute_force_cauchy_torch(mu, raw, obj, cls, gt, labels, valid, stop_grad=(), ratio=0.04, detach_floor=False,
                             kept=None):
    """Float64 loops over images, ground truths and components, differentiable, written from the formulas.

    ``log comp = log pi_k + sum_j log(gamma / (pi (gamma^2 + (x - mu)^2))) + log p_k[c]``;
    NLL = -log sum exp, MCM = log sum exp - max, with the ``stop_grad`` parts of
    ``log comp`` detached in the MCM only. gamma = max(softplus(raw), ratio x side),
    sides of at least 1 px, from mu with gradient unless ``detach_floor``. ``kept
    [B, K]``: pi over all K, sums and max over the kept components only. Returns
    ``(nll, mcm)`` lists of the valid ground truths, in (image, ground truth) order.
    """
    B, K, _ = mu.shape
    nll, mcm = [], []
    for b in range(B):
        o = 1 / (1 + torch.exp(-obj[b].double()))
        for i in range(gt.shape[1]):
            if not valid[b, i]:
                continue
            parts = []  # (log pi, log coord, log class) of each component
            for k in range(K):
                if kept is not None and not kept[b, k]:
                    continue
                m = mu[b, k].double()
                if detach_floor:  # plain floats: the floor has no gradient
                    w = max(float(m[2].detach() - m[0].detach()), 1.0)
                    h = max(float(m[3].detach() - m[1].detach()), 1.0)
                    floor = torch.tensor([w, h, w, h], dtype=torch.float64) * ratio
                else:
                    w, h = m[2] - m[0], m[3] - m[1]
                    w = w if w > 1 else torch.ones((), dtype=torch.float64)
                    h = h if h > 1 else torch.ones((), dtype=torch.float64)
                    floor = torch.stack([w, h, w, h]) * ratio
                gamma = torch.maximum(torch.log(1 + torch.exp(raw[b, k].double())), floor)
                x = gt[b, i].double()
                log_coord = torch.log(gamma / (math.pi * (gamma**2 + (x - m) ** 2))).sum()
                log_pi = torch.log(o[k] / o.sum())
                e = torch.exp(cls[b, k].double())
                log_class = torch.log(e[labels[b, i]] / e.sum())
                parts.append((log_pi, log_coord, log_class))
            log_comp = torch.stack([sum(p) for p in parts])
            nll.append(-torch.log(torch.exp(log_comp).sum()))
            mixed = [[t.detach() if name in stop_grad else t for name, t in zip(("mix", "coord", "class"), p)]
                     for p in parts]
            detached = torch.stack([sum(p) for p in mixed])
            mcm.append(torch.log(torch.exp(detached).sum()) - detached.max())
    return nll, mcm


@pytest.mark.parametrize("dist", ["cauchy", "gaussian", "laplace"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_scipy_brute_force(dist, seed):
    case = random_case(seed=seed)
    nll, mcm = mixture_losses(*case, coord_dist=dist)
    ref_nll, ref_mcm = brute_force(*case, dist=dist)
    valid = case[-1].numpy()
    np.testing.assert_allclose(nll.numpy()[valid], ref_nll[valid], rtol=1e-6)
    np.testing.assert_allclose(mcm.numpy()[valid], ref_mcm[valid], rtol=1e-6, atol=1e-12)
    assert (nll[~case[-1]] == 0).all() and (mcm[~case[-1]] == 0).all()


def test_mcm_nonnegative_and_vanishes_when_one_component_dominates():
    mu, raw, obj, cls, gt, labels, valid = random_case(seed=3)
    _, mcm = mixture_losses(mu, raw, obj, cls, gt, labels, valid)
    assert (mcm >= 0).all()
    # Component 0 sits exactly on ground truth 0 with a tight scale, high objectness
    # and the right class: it carries almost all of that ground truth's likelihood.
    mu, raw, obj, cls = mu.clone(), raw.clone(), obj.clone(), cls.clone()
    mu[0, 0] = gt[0, 0]
    raw[0, 0] = -20.0  # scale at the floor
    obj[0, 0] = 20.0
    cls[0, 0, labels[0, 0]] = 30.0
    _, mcm = mixture_losses(mu, raw, obj, cls, gt, labels, valid, min_scale_ratio=1e-4)
    assert mcm[0, 0] < 1e-6


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=True)


def grads_or_zeros(loss, tensors):
    """d loss / d tensors, zeros where a tensor (or the whole loss) does not depend on it."""
    if not loss.requires_grad:
        return [torch.zeros_like(t) for t in tensors]
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads(loss, tensors), tensors)]


@pytest.mark.parametrize("detach_floor", [False, True])
@pytest.mark.parametrize("stop", [(), ("coord",), ("mix",), ("class",), ("mix", "coord", "class")])
def test_stop_gradient_gradients_match_brute_force(stop, detach_floor):
    """Both losses and their gradients against the loop; ``stop_grad`` detaches MCM parts only."""
    mu, raw, obj, cls, gt, labels, valid = random_case(B=2, K=4, G=3, C=3, seed=4)
    inputs = [t.clone().requires_grad_(True) for t in (mu, raw, obj, cls)]
    nll, mcm = mixture_losses(*inputs, gt, labels, valid, stop_grad=stop, detach_floor=detach_floor)
    ref_nll, ref_mcm = brute_force_cauchy_torch(*inputs, gt, labels, valid, stop_grad=stop,
                                                detach_floor=detach_floor)
    torch.testing.assert_close(nll[valid], torch.stack(ref_nll), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mcm[valid], torch.stack(ref_mcm), rtol=1e-10, atol=1e-10)
    for ours, ref in [(nll.sum(), sum(ref_nll)), (mcm.sum(), sum(ref_mcm))]:
        for name, g, r in zip(("mu", "raw", "obj", "cls"), grads_or_zeros(ours, inputs), grads_or_zeros(ref, inputs)):
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10, msg=lambda m, name=name: f"d/d{name}: {m}")
    # the case is discriminative: without stop_grad each input moves the MCM
    assert all(g.abs().sum() > 0 for g in grads_or_zeros(sum(brute_force_cauchy_torch(
        *inputs, gt, labels, valid)[1]), inputs))


def test_released_floor_is_the_default_and_passes_gradient_to_the_box_size():
    """Scales at the floor: d loss / d mu differs with and without the detached floor (released: not detached)."""
    mu, raw, obj, cls, gt, labels, valid = random_case(B=2, K=4, G=3, C=3, seed=4)
    raw = torch.full_like(raw, -30.0)  # every scale at the floor
    mu1, mu2 = mu.clone().requires_grad_(True), mu.clone().requires_grad_(True)
    released = mixture_losses(mu1, raw, obj, cls, gt, labels, valid)[0].sum()
    detached = mixture_losses(mu2, raw, obj, cls, gt, labels, valid, detach_floor=True)[0].sum()
    assert released.item() == pytest.approx(detached.item(), rel=1e-12)  # same value
    g1, g2 = torch.autograd.grad(released, mu1)[0], torch.autograd.grad(detached, mu2)[0]
    ref = torch.autograd.grad(sum(brute_force_cauchy_torch(mu1, raw, obj, cls, gt, labels, valid)[0]), mu1)[0]
    torch.testing.assert_close(g1, ref, rtol=1e-8, atol=1e-10)
    assert (g1 - g2).abs().max() > 1e-3


def test_kept_components_restrict_the_loss_with_pi_over_all_k():
    """The released top-k loss: pi normalised over all K, sums and max over the kept components only."""
    mu, raw, obj, cls, gt, labels, valid = random_case(B=2, K=6, G=3, C=3, seed=7)
    kept = torch.tensor([[True, False, True, True, False, True], [False, True, True, False, True, False]])
    inputs = [t.clone().requires_grad_(True) for t in (mu, raw, obj, cls)]
    nll, mcm = mixture_losses(*inputs, gt, labels, valid, kept=kept)
    ref_nll, ref_mcm = brute_force_cauchy_torch(*inputs, gt, labels, valid, stop_grad=("coord",), kept=kept)
    torch.testing.assert_close(nll[valid], torch.stack(ref_nll), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mcm[valid], torch.stack(ref_mcm), rtol=1e-10, atol=1e-10)
    total, ref_total = (nll + 0.5 * mcm).sum(), sum(ref_nll) + 0.5 * sum(ref_mcm)
    for g, r in zip(grads_or_zeros(total, inputs), grads_or_zeros(ref_total, inputs)):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)
    g_obj = grads(total, inputs)[2]
    assert (g_obj[~kept] != 0).any()  # the dropped components' objectness still normalises pi
    assert (grads(total, inputs)[0][~kept] == 0).all()  # but their boxes get no gradient


def test_rejects_unknown_options():
    case = random_case()
    with pytest.raises(ValueError, match="stop_grad"):
        mixture_losses(*case, stop_grad=("coords",))
    with pytest.raises(ValueError, match="coord_dist"):
        mixture_losses(*case, coord_dist="student")


@pytest.mark.parametrize("dist", ["cauchy", "gaussian", "laplace"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_cases_are_finite(dist, dtype):
    B, K, G, C = 2, 1, 3, 1  # K = 1, C = 1
    mu = torch.tensor([[[10.0, 10.0, 20.0, 20.0]], [[0.0, 0.0, 1.0, 1.0]]]).to(dtype).requires_grad_(True)
    raw = torch.full((B, K, 4), -60.0).to(dtype).requires_grad_(True)  # scales at the floor
    obj = torch.full((B, K), -30.0).to(dtype).requires_grad_(True)
    cls = torch.zeros(B, K, C).to(dtype).requires_grad_(True)
    gt = torch.tensor([[[1e4, 1e4, 1.2e4, 1.2e4], [-1e4, -1e4, -9e3, -9e3], [15.0, 15.0, 25.0, 25.0]],
                       [[0.0] * 4] * 3]).to(dtype)  # 1e4 px away from every component
    labels = torch.zeros(B, G, dtype=torch.long)
    valid = torch.tensor([[True, True, True], [False, False, False]])  # image 2 has no ground truth
    if dist == "gaussian" and dtype == torch.float16:
        # The released floor passes the scale's gradient to mu: a Gaussian at a 0.4 px scale
        # 1e4 px away gives d/dmu ~ 6e7, finite in float32 but past float16's range. The
        # heads return float32 boxes under autocast, so the model never feeds float16 mu.
        mu = mu.detach().float().requires_grad_(True)
    nll, mcm = mixture_losses(mu, raw, obj, cls, gt, labels, valid, coord_dist=dist, stop_grad=())
    loss = (nll + 0.5 * mcm).sum()
    assert torch.isfinite(loss)
    for g in grads(loss, (mu, raw, obj, cls)):
        assert g is not None and torch.isfinite(g).all()
    assert (nll[1] == 0).all()


@pytest.mark.parametrize("detach_floor", [False, True])
def test_swapped_and_degenerate_boxes_give_finite_losses_and_gradients(detach_floor):
    """Corners swapped, zero-size and far outside the image: the floor (sides >= 1 px) keeps log gamma finite."""
    mu = torch.tensor([[[50.0, 50.0, 10.0, 10.0],  # both corners swapped
                        [10.0, 60.0, 40.0, 20.0],  # y swapped only
                        [30.0, 30.0, 30.0, 30.0],  # zero size
                        [-5e3, -5e3, -4e3, 9e3]]], requires_grad=True)  # far outside
    raw = torch.full((1, 4, 4), -80.0, requires_grad=True)  # softplus underflows to 0: the floor is the scale
    obj = torch.zeros(1, 4, requires_grad=True)
    cls = torch.zeros(1, 4, 2, requires_grad=True)
    gt = torch.tensor([[[10.0, 10.0, 50.0, 50.0]]])
    nll, mcm = mixture_losses(mu, raw, obj, cls, gt, torch.tensor([[1]]), torch.tensor([[True]]),
                              detach_floor=detach_floor)
    loss = (nll + 0.5 * mcm).sum()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in grads(loss, (mu, raw, obj, cls)))


def test_gradcheck_tiny_case():
    mu, raw, obj, cls, gt, labels, valid = random_case(B=2, K=3, G=2, C=3, seed=5)
    raw = raw.abs() + 20.0  # keep away from the floor's kink

    def f(mu, raw, obj, cls):
        nll, mcm = mixture_losses(mu, raw, obj, cls, gt, labels, valid, stop_grad=())
        return nll + 0.5 * mcm

    inputs = tuple(t.clone().requires_grad_(True) for t in (mu, raw, obj, cls))
    assert torch.autograd.gradcheck(f, inputs)


def test_objective_reductions_and_stage_keys():
    mu, raw, obj, cls, gt, labels, valid = random_case(seed=6)
    stage = StageOutput(mu, mu, cls, obj, raw)
    targets = [{"boxes": gt[b][valid[b]], "labels": labels[b][valid[b]]} for b in range(len(gt))]
    ref_nll, ref_mcm = brute_force(mu, raw, obj, cls, gt, labels, valid.numpy())
    n = int(valid.sum())
    out = DRMMObjective(beta=0.5, reduction="sum")([stage, stage], targets)
    assert sorted(out) == ["mcm.0", "mcm.1", "nll.0", "nll.1"]
    np.testing.assert_allclose(out["nll.1"].item(), ref_nll.sum(), rtol=1e-6)
    np.testing.assert_allclose(out["mcm.0"].item(), 0.5 * ref_mcm.sum(), rtol=1e-6)
    mean = DRMMObjective(beta=0.7, reduction="mean")([stage], targets)
    np.testing.assert_allclose(mean["nll.0"].item(), ref_nll.sum() / n, rtol=1e-6)
    np.testing.assert_allclose(mean["mcm.0"].item(), 0.7 * ref_mcm.sum() / n, rtol=1e-6)
    # per_stage: unreduced, MCM not multiplied by beta, each image's ground truths first
    (nll, mcm, packed_valid), = DRMMObjective(beta=0.7).per_stage([stage], targets)
    for b in range(len(gt)):
        count = int(valid[b].sum())
        assert packed_valid[b].tolist() == [True] * count + [False] * (packed_valid.shape[1] - count)
        np.testing.assert_allclose(nll[b][packed_valid[b]].numpy(), ref_nll[b][valid[b].numpy()], rtol=1e-6)
        np.testing.assert_allclose(mcm[b][packed_valid[b]].numpy(), ref_mcm[b][valid[b].numpy()], rtol=1e-6,
                                   atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_mcm_path_with_several_components(dtype):
    mu, raw, obj, cls, gt, labels, valid = random_case(B=2, K=5, G=4, C=3, dtype=torch.float32, seed=9)
    gt[0, 0] = torch.tensor([1e4, 1e4, 1.1e4, 1.1e4])  # far from every component
    inputs = [t.to(dtype).requires_grad_(True) for t in (mu, raw, obj, cls)]
    nll, mcm = mixture_losses(*inputs, gt.to(dtype), labels, valid, stop_grad=())
    assert nll.dtype == mcm.dtype == torch.float32
    # float64 reference on the same (rounded) inputs: a float32 computation agrees to
    # ~1e-6 relative, one in float16 / bfloat16 would be off by ~1e-3
    ref_nll, ref_mcm = brute_force(*(t.detach() for t in inputs), gt.to(dtype), labels, valid)
    v = valid.numpy()
    np.testing.assert_allclose(nll.detach().numpy()[v], ref_nll[v], rtol=1e-5)
    np.testing.assert_allclose(mcm.detach().numpy()[v], ref_mcm[v], rtol=1e-4, atol=1e-5)
    assert (mcm[valid] > 0).any()
    for g in grads((nll + 0.5 * mcm).sum(), inputs):
        assert g is not None and torch.isfinite(g).all()
