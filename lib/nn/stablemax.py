"""StableMax, Softmax Collapse and the perpendicular gradient (Prieto et al., 2025).

Prieto, Barsbey, Mediano and Birdal, *Grokking at the Edge of Numerical Stability* (ICLR 2025,
arXiv:2501.04697) argue that, without regularisation, a network that has fitted its training
set keeps lowering cross-entropy by scaling its logits (*naive loss minimisation*, NLM) until
the softmax of the correct class rounds to exactly 1 in floating point (*Softmax Collapse*, SC)
and the gradient vanishes. This module holds the pieces of that story:

* :func:`stablemax` and :func:`stablemax_cross_entropy`: the paper's StableMax (its StableMax
  section): the softmax with ``exp`` replaced by the ramp ``s(x) = x + 1`` for ``x >= 0`` and
  ``1 / (1 - x)`` for ``x < 0``, which grows linearly rather than exponentially.
* :func:`softmax_cross_entropy`: the ordinary loss computed in a chosen float format (16, 32 or
  64 bits), the knob of the paper's precision experiment (its Softmax Collapse section).
* :func:`softmax_collapse_mask` / :func:`softmax_collapse_fraction`: a sample has collapsed when
  its cross-entropy, computed by torch's log-softmax in the chosen format (the loss the model
  trains on), is exactly 0: the largest term of ``sum_j exp(z_j - max_k z_k)`` has absorbed
  every other one (the paper's Softmax Collapse section). The official logger's variant, which
  tests ``torch.sum(exp(z - max)) == 1`` (another order of summation, so it can disagree with
  the loss on samples at the edge), is ``method="denominator"``.
* :func:`absorbed_mass`, :func:`runner_up_term` and :func:`collapse_threshold`: what the
  largest softmax term must absorb, its largest piece, and the unit roundoff below which
  absorption happens; they bracket the collapse fraction from both sides.
* :func:`zero_loss_fraction`: share of samples whose per-sample loss is exactly 0.
* :func:`project_out_parallel_` and :class:`PerpAdamW`: the paper's perpendicular gradient,
  ``g_perp = g - (theta . g / theta . theta) theta`` per parameter tensor (the paper's
  ⊥Grad section), rescaled to the norm of ``g`` as the official ``OrthoGrad`` does (the
  unscaled projection with ``rescale=False``), applied before an AdamW step ("⊥AdamW").
* :func:`nlm_cosine`: the cosine between the descent direction ``-g`` and the NLM direction,
  which for a bias-free ReLU network (positively homogeneous) is the weight vector itself:
  scaling every weight up scales the logits and, once the training set is fitted, lowers the
  loss without changing a single prediction (the paper's section on naive loss minimisation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

_DTYPES = {16: torch.float16, 32: torch.float32, 64: torch.float64}


def float_dtype(bits: int) -> torch.dtype:
    """The torch float type with ``bits`` bits (16, 32 or 64)."""
    if bits not in _DTYPES:
        raise ValueError(f"precision must be 16, 32 or 64 bits, got {bits!r}")
    return _DTYPES[bits]


def _check_logits(logits: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(
            f"logits must be a 2-D tensor (samples, classes), got shape "
            f"{getattr(logits, 'shape', type(logits))}"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"logits need at least two classes, got {logits.shape[1]}")
    if labels is None:
        return
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one entry per sample ({logits.shape[0]}), "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point:
        raise ValueError("labels must be integer class indices")
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}]")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """The ramp that replaces ``exp`` in StableMax (the paper's StableMax section).

    ``s(x) = x + 1`` for ``x >= 0`` and ``1 / (1 - x)`` for ``x < 0``: positive, increasing,
    continuous with a continuous first derivative at 0 (both pieces have value 1 and slope 1),
    and linear rather than exponential for large ``x``.
    """
    # clamp keeps each branch finite where torch.where does not select it (no inf * 0 = nan
    # in the backward pass)
    positive = x.clamp(min=0) + 1
    negative = 1 / (1 - x.clamp(max=0))
    return torch.where(x >= 0, positive, negative)


def stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """StableMax(z)_i = s(z_i) / sum_j s(z_j) along ``dim`` (the paper's StableMax section).

    A probability map: positive entries summing to 1, in the order of the logits.
    """
    sx = stablemax_s(logits)
    return sx / sx.sum(dim=dim, keepdim=True)


def log_stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log StableMax(z), computed as ``log s(z_i) - log sum_j s(z_j)``."""
    sx = stablemax_s(logits)
    return sx.log() - sx.sum(dim=dim, keepdim=True).log()


def stablemax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """StableMax cross-entropy ``-log StableMax(z)_y`` (the paper's StableMax section).

    Computed in float64, as in the paper's code; the result stays float64 (the gradient flows
    back to the logits in their own type).
    """
    _check_logits(logits, labels)
    logp = log_stablemax(logits.to(torch.float64), dim=-1)
    return _reduce(-logp.gather(1, labels[:, None]).squeeze(1), reduction)


def softmax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, bits: int = 32, reduction: str = "mean"
) -> torch.Tensor:
    """Ordinary cross-entropy ``-log softmax(z)_y`` with the log-softmax computed in ``bits``.

    torch's log-softmax subtracts the maximum logit and computes ``log sum_j exp(z_j - max)``;
    when that sum rounds to exactly 1 the loss of a correctly classified sample is exactly 0 and
    so is its gradient: Softmax Collapse (the paper's Softmax Collapse section).
    """
    _check_logits(logits, labels)
    logp = torch.log_softmax(logits.to(float_dtype(bits)), dim=-1)
    return _reduce(-logp.gather(1, labels[:, None]).squeeze(1), reduction)


COLLAPSE_METHODS = ("loss", "denominator")


@torch.no_grad()
def softmax_collapse_mask(
    logits: torch.Tensor,
    bits: int = 32,
    labels: torch.Tensor | None = None,
    method: str = "loss",
) -> torch.Tensor:
    """Samples in Softmax Collapse in the ``bits``-bit float format (the paper's SC section).

    ``method="loss"`` (default): the per-sample cross-entropy that :func:`softmax_cross_entropy`
    computes (torch's log-softmax in that format, the loss the model trains on) is exactly 0
    for the label, or, without ``labels``, for the top class. That happens exactly when the
    computed denominator ``sum_j exp(z_j - max_k z_k)`` rounds to 1: the largest term
    (``exp(0) = 1``) has absorbed every other one, the softmax is an exact one-hot vector, and
    the loss and its gradient on the correct logit are exactly zero.

    ``method="denominator"``: the official logger's test, ``torch.sum(exp(z - max)) == 1`` as a
    separate reduction. It sums in another order than the log-softmax kernel, so on samples whose
    absorbed mass is close to the unit roundoff the two can disagree; it ignores ``labels``.
    """
    _check_logits(logits, labels)
    z = logits.detach().to(float_dtype(bits))
    if method == "denominator":
        shifted = z - z.amax(dim=1, keepdim=True)
        return shifted.exp().sum(dim=1) == 1
    if method != "loss":
        raise ValueError(f"method must be one of {COLLAPSE_METHODS}, got {method!r}")
    logp = torch.log_softmax(z, dim=1)
    if labels is None:
        return logp.amax(dim=1) == 0
    return logp.gather(1, labels[:, None]).squeeze(1) == 0


def softmax_collapse_fraction(
    logits: torch.Tensor,
    bits: int = 32,
    labels: torch.Tensor | None = None,
    method: str = "loss",
) -> float:
    """Share of samples (rows of ``logits``) in Softmax Collapse (:func:`softmax_collapse_mask`)."""
    mask = softmax_collapse_mask(logits, bits, labels=labels, method=method)
    return float(mask.float().mean()) if mask.numel() else 0.0


@torch.no_grad()
def absorbed_mass(logits: torch.Tensor) -> torch.Tensor:
    """Per sample, ``sum_{j != argmax} exp(z_j - max_k z_k)`` computed in float64.

    This is what the largest term of the softmax denominator must absorb: in a float format
    with unit roundoff ``u`` (:func:`collapse_threshold`), ``1 + m`` rounds to exactly 1 once
    ``m <= u`` (up to the order of summation), which is Softmax Collapse.
    """
    _check_logits(logits)
    z = logits.detach().to(torch.float64)
    e = (z - z.amax(dim=1, keepdim=True)).exp()
    top = z.argmax(dim=1, keepdim=True)
    return e.scatter(1, top, 0.0).sum(dim=1)  # drop the largest term itself, keep the rest


@torch.no_grad()
def runner_up_term(logits: torch.Tensor) -> torch.Tensor:
    """Per sample, the largest non-maximal term ``max_{j != argmax} exp(z_j - max_k z_k)``.

    Together with :func:`absorbed_mass` it brackets Softmax Collapse whatever the order in which
    the denominator is summed: a sample collapses in a format with unit roundoff ``u`` if its
    absorbed mass is ``<= u`` (sufficient) and only if its runner-up term is ``<= u``
    (necessary, since rounding is monotone). Summed term by term, each term below ``u`` is
    absorbed on its own even when their total exceeds ``u``.
    """
    _check_logits(logits)
    z = logits.detach().to(torch.float64)
    e = (z - z.amax(dim=1, keepdim=True)).exp()
    top = z.argmax(dim=1, keepdim=True)
    return e.scatter(1, top, 0.0).amax(dim=1)


def collapse_threshold(bits: int) -> float:
    """Unit roundoff of the ``bits``-bit float format: 2^-11, 2^-24 or 2^-53.

    ``1 + x`` rounds to 1 for ``0 <= x <= u`` (round to nearest, ties to even), so a softmax
    whose :func:`absorbed_mass` is below ``u`` collapses in that format.
    """
    return float(torch.finfo(float_dtype(bits)).eps) / 2


@torch.no_grad()
def zero_loss_fraction(
    logits: torch.Tensor, labels: torch.Tensor, loss: str = "softmax", bits: int = 32
) -> float:
    """Share of samples whose per-sample loss is exactly 0 (``loss`` 'softmax' or 'stablemax').

    StableMax's loss ``log(sum_j s(z_j)) - log s(z_y)`` reaches 0 only if every other ``s(z_j)``
    is absorbed, which with its polynomial tails needs astronomically larger logits.
    """
    if loss == "softmax":
        per = softmax_cross_entropy(logits, labels, bits=bits, reduction="none")
    elif loss == "stablemax":
        per = stablemax_cross_entropy(logits, labels, reduction="none")
    else:
        raise ValueError(f"loss must be 'softmax' or 'stablemax', got {loss!r}")
    return float((per == 0).float().mean()) if per.numel() else 0.0


@torch.no_grad()
def project_out_parallel_(params: Iterable[torch.Tensor], rescale: bool = True) -> None:
    """The perpendicular gradient (the paper's ⊥Grad), in place, per parameter tensor.

    ``g_perp = g - (theta . g / theta . theta) theta`` removes the component of ``g`` that only
    rescales the (flattened) tensor, i.e. naive loss minimisation for a homogeneous network.
    With ``rescale=True`` (the default, as the official ``OrthoGrad`` does) ``g_perp`` is then
    multiplied by ``||g|| / ||g_perp||``, so the optimiser sees a gradient of the original norm
    pointing only in directions that change the predictions; ``rescale=False`` keeps the plain
    projection. Call between ``backward()`` and the optimiser step. Tensors without a gradient,
    or equal to zero (no direction to remove), are left alone; a gradient with no perpendicular
    part (``||g_perp|| <= 1e-12 ||g||``, rounding noise) becomes zero rather than rescaled noise.
    """
    for p in params:
        if p.grad is None:
            continue
        theta = p.detach().reshape(-1).to(torch.float64)
        g = p.grad.reshape(-1).to(torch.float64)
        norm2 = torch.dot(theta, theta)
        if norm2 == 0:
            continue
        g_perp = g - (torch.dot(theta, g) / norm2) * theta
        if rescale:
            g_norm, perp_norm = g.norm(), g_perp.norm()
            if perp_norm <= 1e-12 * g_norm:
                g_perp = torch.zeros_like(g_perp)
            else:
                g_perp = g_perp * (g_norm / perp_norm)
        p.grad.copy_(g_perp.reshape(p.grad.shape).to(p.grad.dtype))


class PerpAdamW(torch.optim.AdamW):
    """⊥AdamW: AdamW on gradients made perpendicular to the weights (the paper's ⊥Grad section).

    Same arguments as :class:`torch.optim.AdamW`, plus ``rescale`` (default True, the official
    ``OrthoGrad``: the perpendicular gradient keeps the full gradient's norm; False: the plain
    projection). With ``weight_decay=0`` this is the paper's fix that forbids naive loss
    minimisation: AdamW's moments only ever see the output of :func:`project_out_parallel_`.
    """

    def __init__(self, params, *args, rescale: bool = True, **kwargs) -> None:  # noqa: D107
        super().__init__(params, *args, **kwargs)
        self.rescale = bool(rescale)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            project_out_parallel_(group["params"], rescale=self.rescale)
        super().step()
        return loss


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 0.0
    return float(torch.dot(a, b) / (na * nb))


@torch.no_grad()
def nlm_cosine(params: Sequence[torch.Tensor] | nn.Module) -> list[float]:
    """Per-tensor cosine of ``-g`` with the weights ``theta`` (the paper's NLM section).

    For a bias-free ReLU network the logits are positively homogeneous in each weight matrix, so
    ``theta`` itself is the naive-loss-minimisation direction: moving along it scales the logits
    and changes no prediction. A cosine near 1 means the gradient step is mostly logit scaling.
    Call after ``backward()``; tensors without a gradient get ``nan``.
    """
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    params = list(params)
    if not params:
        raise ValueError("nlm_cosine needs at least one parameter tensor")
    out = []
    for p in params:
        if p.grad is None:
            out.append(float("nan"))
            continue
        out.append(_cosine(-p.grad.reshape(-1).double(), p.detach().reshape(-1).double()))
    return out
