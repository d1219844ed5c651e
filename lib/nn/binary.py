"""Sign binarisation with surrogate gradients, and the estimator-equilibrium indicators.

Wu, Zheng, Liu, Zheng, *Estimator Meets Equilibrium Perspective: A Rectified Straight Through
Estimator for Binary Neural Networks Training*, ICCV 2023 (arXiv:2308.06689). The forward pass
of a binary layer is always ``sign``; the estimators differ only in the derivative they put in
its place during back-propagation:

* ``"ste"``: the clipped straight-through estimator of BinaryConnect / BNN (derivative 1 on
  ``|x| <= clip``, 0 outside).
* ``"reste"``: the paper's rectified STE, the derivative of the power function
  ``f_o(x) = sign(x) |x|^(1/o)``, clipped to ``|x| <= t`` and replaced by the secant slope of
  ``f_o`` on ``|x| <= interval`` (where the derivative is unbounded), as in the official code
  (``t = 1.5``, ``interval = 0.1``). ``o = 1`` is the STE, ``o -> inf`` is ``sign`` itself.
* ``"ede"``: IR-Net's error-decay estimator, ``k t (1 - tanh^2(t x))`` with ``t`` raised from
  0.1 to 10 during training (Qin et al., CVPR 2020), a hand-designed estimator the paper compares
  with.
* ``"zero"``: the true derivative of ``sign``, zero almost everywhere (nothing upstream learns).

The paper's two indicators (its equilibrium perspective), as the official code's ``--cal_ind``
option computes them on the latent weights of every binary layer:

* estimating error ``||f_o(w) - sign(w)||_2`` (:func:`estimating_error`), and
* gradient (in)stability ``Var(|dL/dw|)`` (:func:`gradient_instability`).

The official code logs both *during training* (:func:`indicator_logger`): after every
optimiser step, the estimating error at ``o_end`` on the current latent weights and the
instability of that step's weight gradients, summed over the binary layers; each epoch keeps
its last mini-batch's values, and a run is summarised by the mean estimating error over epochs
and the total instability (:func:`summarize_indicators`). :func:`equilibrium_indicators`
evaluates the same two quantities after training, for any exponent, on a trained model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

ESTIMATORS = ("ste", "reste", "ede", "zero")


def _check_o(o: float) -> None:
    if not math.isfinite(o) or o < 1:
        raise ValueError(f"the ReSTE exponent o must be a finite number >= 1, got {o}")


def power_forward(x: torch.Tensor, o: float) -> torch.Tensor:
    """The power function ``f_o(x) = sign(x) |x|^(1/o)`` whose derivative ReSTE back-propagates.

    ``o = 1`` is the identity (the function behind STE); as ``o`` grows, ``f_o`` approaches
    ``sign`` pointwise. This is the "equivalent forward" of ReSTE in the paper.
    """
    _check_o(o)
    return torch.sign(x) * x.abs().pow(1.0 / o)


def reste_derivative(
    x: torch.Tensor, o: float, t: float = 1.5, interval: float = 0.1
) -> torch.Tensor:
    """The ReSTE backward factor: ``f_o'(x) = (1/o) |x|^((1-o)/o)`` for ``interval < |x| <= t``,
    the secant slope ``interval^(1/o) / interval`` on ``|x| <= interval`` (where ``f_o'`` is
    unbounded), and 0 for ``|x| > t`` (the official code's rectification; defaults from it).
    """
    _check_o(o)
    if not t > 0:
        raise ValueError(f"the clipping threshold t must be positive, got {t}")
    if not 0 < interval < t:
        raise ValueError(f"interval must satisfy 0 < interval < t = {t}, got {interval}")
    a = x.abs()
    secant = interval ** (1.0 / o) / interval  # a python float: exactly 1.0 when o = 1
    middle = (1.0 / o) * a.clamp_min(interval).pow((1.0 - o) / o)
    out = torch.where(a <= interval, torch.full_like(x, secant), middle)
    return torch.where(a <= t, out, torch.zeros_like(x))


def ste_derivative(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """The clipped straight-through factor: 1 on ``|x| <= clip``, 0 outside."""
    if not clip > 0:
        raise ValueError(f"the STE clip must be positive, got {clip}")
    return (x.abs() <= clip).to(x.dtype)


def ede_derivative(x: torch.Tensor, progress: float) -> torch.Tensor:
    """IR-Net's error-decay estimator: ``k t (1 - tanh^2(t x))`` with
    ``t = 0.1 * 10^(2 * progress)`` (0.1 at the start of training, 10 at the end) and
    ``k = max(1/t, 1)``; ``progress`` is the fraction of training done, in ``[0, 1]``.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must lie in [0, 1], got {progress}")
    t = 0.1 * 10.0 ** (2.0 * progress)
    k = max(1.0 / t, 1.0)
    return k * t * (1.0 - torch.tanh(t * x) ** 2)


def surrogate_derivative(x: torch.Tensor, estimator: str, **params: float) -> torch.Tensor:
    """The backward factor of ``estimator`` at ``x`` (see the module docstring).

    ``params``: ``o``, ``t``, ``interval`` for ``"reste"``; ``clip`` for ``"ste"``;
    ``progress`` for ``"ede"``; none for ``"zero"``.
    """
    if estimator == "reste":
        return reste_derivative(x, params.get("o", 1.0), params.get("t", 1.5),
                                params.get("interval", 0.1))
    if estimator == "ste":
        return ste_derivative(x, params.get("clip", 1.0))
    if estimator == "ede":
        return ede_derivative(x, params.get("progress", 0.0))
    if estimator == "zero":
        return torch.zeros_like(x)
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")


class SignWithSurrogate(torch.autograd.Function):
    """``sign`` forward; backward multiplies the incoming gradient by a surrogate derivative."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, estimator: str, params: dict) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.estimator, ctx.params = estimator, params
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad_output * surrogate_derivative(x, ctx.estimator, **ctx.params), None, None


def binarize(x: torch.Tensor, estimator: str = "reste", **params: float) -> torch.Tensor:
    """``sign(x)`` whose gradient is the chosen estimator's (``"ste"``, ``"reste"``, ``"ede"``,
    ``"zero"``); ``params`` as in :func:`surrogate_derivative`."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    return SignWithSurrogate.apply(x, estimator, dict(params))


class BinaryLinear(nn.Linear):
    """A 1-bit linear layer (1W/1A): ``sign(a) @ (alpha sign(W))^T + b`` with
    ``alpha = mean|W|`` over the whole weight tensor, as in the official ReSTE layers.

    The estimator and its parameters are attributes, so a schedule can change them between
    epochs (``layer.params["o"] = ...``); weights use ``params`` and activations
    ``act_params`` (the official code keeps separate ``o``/``t`` for the two, equal by
    default). With ``binary_input=False`` the input is not binarised (1W/32A).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        estimator: str = "reste",
        bias: bool = False,
        binary_input: bool = True,
        **params: float,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
        self.estimator = estimator
        self.params = dict(params)
        self.act_params = dict(params)
        self.binary_input = binary_input

    def forward(self, a: torch.Tensor) -> torch.Tensor:  # noqa: D102
        w = binarize(self.weight, self.estimator, **self.params)
        w = w * self.weight.abs().mean()
        if self.binary_input:
            a = binarize(a, self.estimator, **self.act_params)
        return F.linear(a, w, self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, estimator={self.estimator}, params={self.params}"


def binary_layers(model: nn.Module) -> list[BinaryLinear]:
    """The :class:`BinaryLinear` layers of ``model``, in order."""
    return [m for m in model.modules() if isinstance(m, BinaryLinear)]


def set_estimator(model: nn.Module, estimator: str | None = None, **params: float) -> None:
    """Set the estimator (if given) and update its parameters in every binary layer, for
    weights and activations alike."""
    if estimator is not None and estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    layers = binary_layers(model)
    if not layers:
        raise ValueError("the model has no BinaryLinear layer")
    for layer in layers:
        if estimator is not None:
            layer.estimator = estimator
        layer.params.update(params)
        layer.act_params.update(params)


def o_schedule(epoch: int, epochs: int, o_end: float = 3.0, o_start: float = 1.0) -> float:
    """The official ReSTE schedule of the exponent: ``o = o_start + (1 - cos(pi/2 * e/E))
    (o_end - o_start)``, rising from ``o_start`` (STE) at epoch 0 towards ``o_end``."""
    if epochs < 1 or not 0 <= epoch <= epochs:
        raise ValueError(f"need epochs >= 1 and 0 <= epoch <= epochs, got {epoch}, {epochs}")
    _check_o(o_start)
    _check_o(o_end)
    beta = 1.0 - math.cos(0.5 * math.pi * epoch / epochs)
    return o_start + beta * (o_end - o_start)


def estimating_error(w: torch.Tensor, o: float) -> float:
    """The paper's estimating-error indicator for one tensor: ``||f_o(w) - sign(w)||_2``
    (the official ``--cal_ind`` "fitting error"); 0 only when ``f_o = sign`` on ``w``."""
    return float(torch.linalg.vector_norm(power_forward(w.detach(), o) - torch.sign(w.detach())))


def gradient_instability(grad: torch.Tensor) -> float:
    """The paper's gradient-stability indicator for one tensor, ``Var(|g|)`` over its entries
    (the official ``--cal_ind`` "stability"): larger means less stable gradients."""
    if grad.numel() < 2:
        raise ValueError("the variance of a gradient needs at least two entries")
    return float(grad.detach().abs().flatten().var())


def training_indicators(model: nn.Module, o: float) -> tuple[float, float]:
    """The two indicators of ``model`` as it stands, summed over its binary layers: the
    estimating error at exponent ``o`` on the latent weights, and ``Var(|grad|)`` of the
    gradients currently stored in the weights' ``.grad`` (the official ``--cal_ind`` step,
    ``get_fitting_error`` and ``get_stability_var``, called right after ``optimizer.step()``)."""
    _check_o(o)
    layers = binary_layers(model)
    if not layers:
        raise ValueError("the model has no BinaryLinear layer")
    if any(m.weight.grad is None for m in layers):
        raise ValueError("a binary layer has no gradient: call after backward()")
    error = sum(estimating_error(m.weight, o) for m in layers)
    instability = sum(gradient_instability(m.weight.grad) for m in layers)
    return float(error), float(instability)


def indicator_logger(o_end: float) -> Callable[[int, nn.Module], dict[str, float]]:
    """An ``on_epoch_end(epoch, model)`` hook for :func:`lib.nn.digits.train_classifier` that
    logs the paper's indicators during training as the official code does: at the end of each
    epoch (after its last optimiser step, whose gradient is still stored) the estimating error
    at the schedule's final exponent ``o_end`` and the gradient instability, as
    ``"estimating_error"`` and ``"instability"`` in ``TrainLog.extra``."""
    _check_o(o_end)

    def hook(epoch: int, model: nn.Module) -> dict[str, float]:
        error, instability = training_indicators(model, o_end)
        return {"estimating_error": error, "instability": instability}

    return hook


def summarize_indicators(extra: dict[str, list[float]]) -> tuple[float, float]:
    """A run's summary of the logged indicators, as the official code reports it: the mean of
    the per-epoch estimating errors and the *sum* of the per-epoch instabilities."""
    if not extra.get("estimating_error") or not extra.get("instability"):
        raise ValueError("no logged indicators: train with on_epoch_end=indicator_logger(o_end)")
    errors, instabilities = extra["estimating_error"], extra["instability"]
    return float(sum(errors) / len(errors)), float(sum(instabilities))


def equilibrium_indicators(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    o: float,
    t: float = 1.5,
    loss_fn: nn.Module | None = None,
) -> tuple[float, float]:
    """Both indicators of a model with binary layers, at ReSTE exponent ``o`` and clip ``t``.

    The estimating error is summed over the binary layers' latent weights; the instability is
    ``Var(|dL/dW|)`` summed over the same layers, averaged over ``batches`` (each a mini-batch
    ``(X, y)``, back-propagated with ReSTE at ``(o, t)`` in training mode). The model's estimator
    settings and gradients are restored afterwards; its weights are not changed.
    """
    _check_o(o)
    layers = binary_layers(model)
    if not layers:
        raise ValueError("the model has no BinaryLinear layer")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    saved = [(m.estimator, dict(m.params), dict(m.act_params)) for m in layers]
    saved_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    was_training = model.training
    bn_state = {
        k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k
    }
    error = sum(estimating_error(m.weight, o) for m in layers)
    set_estimator(model, "reste", o=o, t=t)
    model.train()
    instabilities = []
    try:
        for X, y in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model(X), y).backward()
            instabilities.append(sum(gradient_instability(m.weight.grad) for m in layers))
    finally:
        for m, (est, p, ap) in zip(layers, saved):
            m.estimator, m.params, m.act_params = est, p, ap
        for p, g in zip(model.parameters(), saved_grads):
            p.grad = g
        model.load_state_dict(bn_state, strict=False)
        model.train(was_training)
    if not instabilities:
        raise ValueError("batches is empty: the instability needs at least one mini-batch")
    return float(error), float(sum(instabilities) / len(instabilities))


def binary_mlp(
    n_in: int,
    n_classes: int,
    hidden: int = 256,
    n_binary: int = 2,
    estimator: str = "reste",
    **params: float,
) -> nn.Sequential:
    """A BNN in the usual layout: a full-precision first layer, ``n_binary`` 1W/1A
    :class:`BinaryLinear` blocks each followed by BatchNorm, and a full-precision classifier
    (first and last layers stay real-valued, as in the paper and its baselines)."""
    if n_in < 1 or n_classes < 2 or hidden < 1 or n_binary < 1:
        raise ValueError("need n_in >= 1, n_classes >= 2, hidden >= 1 and n_binary >= 1")
    layers: list[nn.Module] = [nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden)]
    for _ in range(n_binary):
        layers += [BinaryLinear(hidden, hidden, estimator, **params), nn.BatchNorm1d(hidden)]
    layers.append(nn.Linear(hidden, n_classes))
    return nn.Sequential(*layers)
