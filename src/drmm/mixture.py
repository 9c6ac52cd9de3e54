"""The D-RMM mixture model maths: pure, batched functions in log space.

For one image with K components and a ground truth box ``b`` of class ``c``::

    comp_k = pi_k * prod_j F(b_j; mu_kj, gamma_kj) * p_k[c]
    NLL    = -log sum_k comp_k
    MCM    = -log(max_k comp_k / sum_k comp_k)      (paper eqs. 2-8)

with ``pi = sigmoid(o) / sum sigmoid(o)``, ``p = softmax(class_logits)`` and ``F`` a
factorised 1-D density (Cauchy by default). Everything is computed with
log-densities, ``logsumexp`` and ``max``: no ``+eps`` guards are needed and no
component underflows. Shapes: B images, K components, G (padded) ground truths,
N valid ground truths of the batch (packed), C classes.

One code path: :func:`check_options` validates, :func:`stage_log_factors` promotes
the dtype and computes the scale floor, ``log pi`` and ``log p``; the padded
:func:`mixture_log_terms` (ablations) and the packed :func:`mixture_losses` (fast
path) only differ in how they pair ground truths with components, and both reduce
with :func:`nll_from_log_comp` and :func:`mcm_from_log_comp`.
"""
from __future__ import annotations

import math
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import Tensor

COORD_DISTS = ("cauchy", "gaussian", "laplace")
STOP_GRAD_PARTS = frozenset({"mix", "coord", "class"})
_LOG_PI = math.log(math.pi)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOG_2 = math.log(2.0)


def check_choice(name: str, value: str, choices: Collection[str]) -> None:
    """Raise ``ValueError`` naming the option ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {tuple(choices)}")


def check_options(coord_dist: str = "cauchy", stop_grad: Collection[str] = ()) -> tuple[str, ...]:
    """Validate the mixture options; returns ``stop_grad`` as a tuple."""
    check_choice("coord_dist", coord_dist, COORD_DISTS)
    bad = set(stop_grad) - STOP_GRAD_PARTS
    if bad:
        raise ValueError(f"unknown stop_grad part(s) {sorted(bad)}; choose from {sorted(STOP_GRAD_PARTS)}")
    return tuple(stop_grad)


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype the mixture is computed in: float64 for float64 inputs, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def coord_log_prob(x: Tensor, loc: Tensor, scale: Tensor, dist: str = "cauchy") -> Tensor:
    """Elementwise log-density of ``x`` under a 1-D location-scale distribution (broadcasting)."""
    check_choice("coord_dist", dist, COORD_DISTS)
    z = (x - loc) / scale
    if dist == "cauchy":
        # log1p(z^2) = 2 log hypot(1, z): no overflow of z^2 for huge |z|, one fused op.
        return -_LOG_PI - scale.log() - 2 * torch.hypot(z, torch.ones((), dtype=z.dtype, device=z.device)).log()
    if dist == "gaussian":
        return -_HALF_LOG_2PI - scale.log() - 0.5 * z * z
    return -_LOG_2 - scale.log() - z.abs()  # laplace


def mixture_scale(mu: Tensor, raw_scale: Tensor, min_scale_ratio: float = 0.04, detach_floor: bool = False) -> Tensor:
    """``softplus(raw_scale) [..., 4]`` floored per coordinate at ``ratio * box width/height``.

    The floor uses the width of ``mu`` for x1, x2 and its height for y1, y2. As
    released, it is computed from ``mu`` with gradient (``detach_floor=False``): where
    the floor is above the softplus, the box size gets the gradient. ``detach_floor``
    computes it from detached ``mu``, so it only bounds the scale and never rewards
    shrinking boxes. Either way, sides below 1 px (swapped corners included) count
    as 1 px: the scale is never below ``ratio`` px, so ``log gamma`` stays finite
    (the release floors at the signed side, which a swapped box makes negative).
    """
    wh = mu[..., 2:] - mu[..., :2]
    wh = (wh.detach() if detach_floor else wh).clamp(min=1.0)
    floor = min_scale_ratio * torch.cat([wh, wh], dim=-1)
    return torch.maximum(F.softplus(raw_scale), floor)


def log_mixing_weights(objectness_logit: Tensor) -> Tensor:
    """``log pi [B, K]`` with ``pi_k = sigmoid(o_k) / sum_j sigmoid(o_j)``, in log space (no division)."""
    log_o = F.logsigmoid(objectness_logit)
    return log_o - torch.logsumexp(log_o, dim=-1, keepdim=True)


def stage_log_factors(
    mu: Tensor, raw_scale: Tensor, objectness_logit: Tensor, class_logits: Tensor, min_scale_ratio: float = 0.04,
    detach_floor: bool = False, kept: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The per-component quantities every loss needs: ``(mu, scale [B,K,4], log_pi [B,K], log_p [B,K,C])``.

    Computed in :func:`compute_dtype` of ``mu``; ``mu`` is returned in that dtype.
    ``kept [B, K]`` (bool, top-k pruning as released): ``pi`` is normalised over all K
    components, then ``log pi = -inf`` for the components not kept, which removes
    them from every sum and max of the loss.
    """
    dtype = compute_dtype(mu)
    mu, raw_scale, objectness_logit, class_logits = (
        t.to(dtype) for t in (mu, raw_scale, objectness_logit, class_logits)
    )
    scale = mixture_scale(mu, raw_scale, min_scale_ratio, detach_floor)
    log_pi = log_mixing_weights(objectness_logit)
    if kept is not None:
        log_pi = log_pi.masked_fill(~kept.bool(), -math.inf)
    return mu, scale, log_pi, F.log_softmax(class_logits, dim=-1)


def nll_from_log_comp(log_comp: Tensor) -> Tensor:
    """Mixture NLL ``-log sum_k comp_k`` from ``log comp [..., K]``; returns ``[...]``.

    The NLL term of the D-RMM loss (paper eqs. 4-8, Section 3.3).
    """
    return -torch.logsumexp(log_comp, dim=-1)


def mcm_from_log_comp(log_comp: Tensor, top: Tensor | None = None) -> Tensor:
    """MCM ``-log(max_k comp_k / sum_k comp_k)`` from ``log comp [..., K]``; returns ``[...]``.

    The MCM term of the D-RMM loss (paper eqs. 4-8, Section 3.3), computed as
    ``logsumexp - max``, so it is >= 0. ``top [...]`` replaces ``max_k log comp_k``
    (the log-component of a matched component, the MCM(B) ablation).
    """
    return torch.logsumexp(log_comp, dim=-1) - (log_comp.amax(dim=-1) if top is None else top)


def combine_log_terms(
    log_pi: Tensor, log_coord: Tensor, log_class: Tensor, stop_grad: Collection[str] = ()
) -> Tensor:
    """``log comp = log_pi + log_coord + log_class`` with the parts in ``stop_grad`` detached.

    Broadcasts (``[B,1,K]`` + ``[B,G,K]`` or ``[N,K]`` each). ``stop_grad`` is a subset
    of ``{"mix", "coord", "class"}``, validated with :func:`check_options`.
    """
    check_options(stop_grad=stop_grad)
    return (
        (log_pi.detach() if "mix" in stop_grad else log_pi)
        + (log_coord.detach() if "coord" in stop_grad else log_coord)
        + (log_class.detach() if "class" in stop_grad else log_class)
    )


def mixture_log_terms(mu: Tensor, raw_scale: Tensor, objectness_logit: Tensor, class_logits: Tensor,
                      gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor, *, min_scale_ratio: float = 0.04,
                      coord_dist: str = "cauchy", detach_floor: bool = False,
                      kept: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(log_pi [B,1,K], log_coord [B,G,K], log_class [B,G,K])`` of a stage, padding-safe.

    Same arguments as :func:`mixture_losses`; the sum of the three is ``log comp``.
    Padding slots get a harmless box and label so no NaN can leak through
    gradients, and their terms are finite but meaningless: mask them with
    ``gt_valid``. Used by the loss ablations that need every component's
    log-likelihood, not just the NLL/MCM reductions.
    """
    check_options(coord_dist)
    mu, scale, log_pi, log_p = stage_log_factors(mu, raw_scale, objectness_logit, class_logits, min_scale_ratio,
                                                 detach_floor, kept)
    gt_valid = gt_valid.bool()
    zero = torch.zeros((), dtype=mu.dtype, device=mu.device)
    gt_boxes = torch.where(gt_valid.unsqueeze(-1), gt_boxes.to(mu.dtype), zero)
    gt_labels = torch.where(gt_valid, gt_labels, torch.zeros_like(gt_labels))
    log_coord = coord_log_prob(gt_boxes.unsqueeze(2), mu.unsqueeze(1), scale.unsqueeze(1), coord_dist).sum(-1)
    index = gt_labels.unsqueeze(-1).expand(-1, -1, log_p.shape[1])  # [B, G, K]
    log_class = torch.gather(log_p.transpose(1, 2), 1, index)  # log p_k[c_g] from [B, C, K]
    return log_pi.unsqueeze(1), log_coord, log_class


def mixture_losses(mu: Tensor, raw_scale: Tensor, objectness_logit: Tensor, class_logits: Tensor,
                   gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor, *, min_scale_ratio: float = 0.04,
                   coord_dist: str = "cauchy", stop_grad: Collection[str] = ("coord",), detach_floor: bool = False,
                   kept: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-ground-truth NLL and MCM of the D-RMM mixture (paper eqs. 4-8).

    Args:
        mu: ``[B, K, 4]`` component locations, xyxy pixels.
        raw_scale: ``[B, K, 4]`` scales before softplus.
        objectness_logit: ``[B, K]``; ``pi = sigmoid(o) / sum_k sigmoid(o)``.
        class_logits: ``[B, K, C]``; ``p = softmax`` over the C classes.
        gt_boxes: ``[B, G, 4]`` xyxy pixels; gt_labels: ``[B, G]`` int64 in 0..C-1;
        gt_valid: ``[B, G]`` bool, False on padding slots.
        min_scale_ratio: scale floor as a fraction of the predicted box size.
        coord_dist: ``"cauchy"`` (paper), ``"gaussian"`` or ``"laplace"``.
        stop_grad: parts of the component detached inside MCM only: any of
            ``"mix"``, ``"coord"``, ``"class"`` (paper Table 7; released: coord).
        detach_floor: compute the scale floor from detached ``mu`` (released: not
            detached, see :func:`mixture_scale`).
        kept: ``[B, K]`` bool, the components top-k pruning kept (released top-k
            ablation): the loss covers only them, ``pi`` normalised over all K.
            None: all components.

    Returns:
        ``(nll, mcm)``, each ``[B, G]`` float32 (float64 for float64 inputs),
        exactly 0 where ``gt_valid`` is False. Low-precision inputs are computed in
        float32.
    """
    stop_grad = check_options(coord_dist, stop_grad)
    mu, scale, log_pi, log_p = stage_log_factors(mu, raw_scale, objectness_logit, class_logits, min_scale_ratio,
                                                 detach_floor, kept)
    # Pack the valid ground truths of the batch (no padding work, no loop over images):
    # ground truth n of image img[n] meets the K components of that image.
    img, slot = gt_valid.bool().nonzero(as_tuple=True)
    boxes, labels = gt_boxes[img, slot].to(mu.dtype), gt_labels[img, slot]
    # index_select (backward: index_add) rather than advanced indexing (backward: a slow index_put)
    log_pi = log_pi.index_select(0, img)  # [N, K]
    mu_n, scale_n = mu.index_select(0, img), scale.index_select(0, img)  # [N, K, 4]
    log_coord = coord_log_prob(boxes[:, None], mu_n, scale_n, coord_dist).sum(-1)  # [N, K]
    # log p_k[c] of each ground truth's class c for the K components of its image: one flat gather
    B, K, C = log_p.shape
    flat = (img * (K * C) + labels)[:, None] + torch.arange(K, device=img.device) * C  # [N, K]
    log_class = log_p.reshape(-1).index_select(0, flat.reshape(-1)).view(-1, K)
    log_comp = log_pi + log_coord + log_class
    nll = nll_from_log_comp(log_comp)
    mcm = mcm_from_log_comp(combine_log_terms(log_pi, log_coord, log_class, stop_grad) if stop_grad else log_comp)

    out_nll = nll.new_zeros(gt_valid.shape).index_put((img, slot), nll)
    out_mcm = mcm.new_zeros(gt_valid.shape).index_put((img, slot), mcm)
    return out_nll, out_mcm


def mixture_probabilities(
    mu: Tensor, raw_scale: Tensor, objectness_logit: Tensor, class_logits: Tensor, min_scale_ratio: float = 0.04
) -> dict[str, Tensor]:
    """Readable mixture parameters of one stage: mu, gamma, pi, objectness o, class probs p."""
    o = objectness_logit.float().sigmoid()
    return {
        "mu": mu,
        "gamma": mixture_scale(mu.float(), raw_scale.float(), min_scale_ratio),
        "pi": o / o.sum(-1, keepdim=True),
        "objectness": o,
        "class_prob": class_logits.float().softmax(-1),
    }
