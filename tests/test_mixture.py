"""mixture_losses against an independent float64 brute force (scipy.stats), plus safety."""
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


@pytest.mark.parametrize("stop", [(), ("coord",), ("mix",), ("class",), ("mix", "coord", "class")])
def test_stop_gradient_applies_to_mcm_only(stop):
    mu, raw, obj, cls, gt, labels, valid = random_case(seed=4)
    for t in (mu, raw, obj, cls):
        t.requires_grad_(True)
    nll, mcm = mixture_losses(mu, raw, obj, cls, gt, labels, valid, stop_grad=stop)
    if mcm.requires_grad:
        g_mu, g_raw, g_obj, g_cls = grads(mcm.sum(), (mu, raw, obj, cls))
    else:  # everything detached: MCM is a constant
        g_mu = g_raw = g_obj = g_cls = None

    def is_zero(g):
        return g is None or bool((g == 0).all())

    assert is_zero(g_mu) == ("coord" in stop) and is_zero(g_raw) == ("coord" in stop)
    assert is_zero(g_obj) == ("mix" in stop)
    assert is_zero(g_cls) == ("class" in stop)
    # NLL is never detached.
    assert all(not is_zero(g) for g in grads(nll.sum(), (mu, raw, obj, cls)))


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
    nll, mcm = mixture_losses(mu, raw, obj, cls, gt, labels, valid, coord_dist=dist, stop_grad=())
    loss = (nll + 0.5 * mcm).sum()
    assert torch.isfinite(loss)
    for g in grads(loss, (mu, raw, obj, cls)):
        assert g is not None and torch.isfinite(g).all()
    assert (nll[1] == 0).all()


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_mcm_path_with_several_components(dtype):
    mu, raw, obj, cls, gt, labels, valid = random_case(B=2, K=5, G=4, C=3, dtype=torch.float32, seed=9)
    gt[0, 0] = torch.tensor([1e4, 1e4, 1.1e4, 1.1e4])  # far from every component
    inputs = [t.to(dtype).requires_grad_(True) for t in (mu, raw, obj, cls)]
    nll, mcm = mixture_losses(*inputs, gt.to(dtype), labels, valid, stop_grad=())
    ref_nll, ref_mcm = mixture_losses(*(t.detach().float() for t in inputs), gt.to(dtype).float(), labels, valid,
                                      stop_grad=())
    torch.testing.assert_close(nll, ref_nll)  # computed in float32 internally
    assert (mcm[valid] > 0).any()
    for g in grads((nll + 0.5 * mcm).sum(), inputs):
        assert g is not None and torch.isfinite(g).all()
