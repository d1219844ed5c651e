"""Hessian sharpness estimators for torch models: trace (Hutchinson) and top eigenvalues.

Every estimator works from Hessian-vector products (Pearlmutter's trick: differentiate the
gradient along a direction), so it never forms the Hessian and costs a few backward passes per
product. The loss is given as a closure ``loss_fn() -> scalar tensor`` over a list of parameter
tensors that require gradients; this keeps the module independent of how a model is built.

* :func:`hutchinson_trace`: tr(H) = E[z^T H z] for random z with E[z z^T] = I (Hutchinson 1989);
  Rademacher probes give the smallest variance among i.i.d. probes.
* :func:`power_iteration`: the eigenvalue of largest magnitude, lambda_max(H) at a minimum
  (where H is positive semi-definite).
* :func:`lanczos_top_eigenvalues`: the k largest eigenvalues by implicitly restarted Lanczos
  (ARPACK through ``scipy.sparse.linalg.eigsh``), faster and more reliable than the power method
  when the top eigenvalues are close.
* :func:`exact_hessian`: the dense Hessian, for small models and for testing the estimators.

The sharpness measures are those of Wu & Su (2023, Section 3): gradient descent's linear stability
constrains lambda_max(H), single-sample SGD's constrains tr(H).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

LossFn = Callable[[], torch.Tensor]


def _check_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    params = list(params)
    if not params:
        raise ValueError("params must contain at least one tensor")
    for p in params:
        if not isinstance(p, torch.Tensor) or not p.requires_grad:
            raise ValueError("every parameter must be a torch tensor with requires_grad=True")
    return params


def _scalar_loss(loss_fn: LossFn) -> torch.Tensor:
    loss = loss_fn()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor")
    return loss.reshape(())


class HessianOperator:
    """The Hessian of ``loss_fn`` at the current ``params``, applied to flat vectors.

    The gradient graph is built once (``create_graph=True``) and each product differentiates it
    again, so a product costs about one extra backward pass. Vectors are flat tensors of length
    :attr:`dim` (the parameters concatenated in order).
    """

    def __init__(self, loss_fn: LossFn, params: Sequence[torch.Tensor]) -> None:
        self.params = _check_params(params)
        self.dim = int(sum(p.numel() for p in self.params))
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        loss = _scalar_loss(loss_fn)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self._grads = [
            g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)
        ]
        self._grad_flat = torch.cat([g.reshape(-1) for g in self._grads])
        self.n_products = 0

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v (no graph is kept on the result)."""
        vector = torch.as_tensor(vector, dtype=self.dtype, device=self.device).reshape(-1)
        if vector.numel() != self.dim:
            raise ValueError(f"vector has {vector.numel()} entries, the parameters {self.dim}")
        if not self._grad_flat.requires_grad:  # the loss is linear in params: H = 0
            return torch.zeros_like(vector)
        hv = torch.autograd.grad(
            self._grad_flat @ vector, self.params, retain_graph=True, allow_unused=True
        )
        self.n_products += 1
        return torch.cat([
            (h if h is not None else torch.zeros_like(p)).reshape(-1)
            for h, p in zip(hv, self.params)
        ]).detach()

    __call__ = matvec


def hessian_vector_product(
    loss_fn: LossFn, params: Sequence[torch.Tensor], vector: torch.Tensor
) -> torch.Tensor:
    """One Hessian-vector product H v (Pearlmutter 1994), v flat over ``params``."""
    return HessianOperator(loss_fn, params).matvec(vector)


def exact_hessian(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The dense Hessian (dim x dim), one product per basis vector: for small models only."""
    op = HessianOperator(loss_fn, params)
    eye = torch.eye(op.dim, dtype=op.dtype, device=op.device)
    H = torch.stack([op.matvec(eye[i]) for i in range(op.dim)])
    return 0.5 * (H + H.T)


@dataclass
class TraceEstimate:
    """A Hutchinson estimate: the mean of the probes, its standard error, the probe values."""

    value: float
    stderr: float
    samples: np.ndarray


def hutchinson_trace(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    n_samples: int = 100,
    *,
    distribution: str = "rademacher",
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    """Estimate tr(H) by Hutchinson's estimator, the mean of z^T H z over random probes z.

    ``distribution`` is ``"rademacher"`` (entries +-1, the minimum-variance choice) or
    ``"gaussian"``. The estimate is unbiased; its standard error shrinks as 1/sqrt(n_samples).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples}")
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
    op = HessianOperator(loss_fn, params)
    values = np.empty(n_samples)
    for s in range(n_samples):
        if distribution == "rademacher":
            z = torch.randint(0, 2, (op.dim,), generator=generator).to(op.dtype) * 2 - 1
        else:
            z = torch.randn(op.dim, generator=generator, dtype=op.dtype)
        z = z.to(op.device)
        values[s] = float(z @ op.matvec(z))
    stderr = float(values.std(ddof=1) / np.sqrt(n_samples)) if n_samples > 1 else float("nan")
    return TraceEstimate(float(values.mean()), stderr, values)


@dataclass
class EigenEstimate:
    """An eigenvalue estimate with its (unit) eigenvector and the Hessian products it took."""

    value: float
    vector: torch.Tensor
    iterations: int
    converged: bool


def power_iteration(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    *,
    max_iter: int = 200,
    tol: float = 1e-7,
    generator: torch.Generator | None = None,
) -> EigenEstimate:
    """The Hessian eigenvalue of largest magnitude by the power method.

    At a minimum the Hessian is positive semi-definite, so this is lambda_max(H), the sharpness
    that gradient descent's stability bounds by 2/eta. Stops when the Rayleigh quotient changes
    by less than ``tol`` relative to its size.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    op = HessianOperator(loss_fn, params)
    v = torch.randn(op.dim, generator=generator, dtype=op.dtype).to(op.device)
    v = v / v.norm()
    value, converged, it = 0.0, False, 0
    for it in range(1, max_iter + 1):
        hv = op.matvec(v)
        new_value = float(v @ hv)
        norm = hv.norm()
        if norm == 0:  # v lies in the null space: H = 0 along everything we can reach
            value, converged = 0.0, True
            break
        v = hv / norm
        if it > 1 and abs(new_value - value) <= tol * max(abs(new_value), 1e-30):
            value, converged = new_value, True
            break
        value = new_value
    return EigenEstimate(value, v, it, converged)


def lanczos_top_eigenvalues(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    k: int = 1,
    *,
    tol: float = 1e-8,
    max_iter: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The k algebraically largest Hessian eigenvalues (descending) by Lanczos (ARPACK).

    Wraps the Hessian-vector product in a ``scipy.sparse.linalg.LinearOperator`` and calls
    ``eigsh(which="LA")``; the products run in torch (on the parameters' device), the Lanczos
    recurrence in float64 numpy.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    op = HessianOperator(loss_fn, params)
    if not (1 <= k < op.dim):
        raise ValueError(f"k must satisfy 1 <= k < number of parameters ({op.dim}), got {k}")

    def matvec(x: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(x.reshape(-1), dtype=np.float64))
        return op.matvec(v.to(op.dtype)).double().cpu().numpy()

    linear = LinearOperator((op.dim, op.dim), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).normal(size=op.dim)
    try:
        values = eigsh(linear, k=k, which="LA", tol=tol, maxiter=max_iter, v0=v0,
                       return_eigenvectors=False)
    except ArpackNoConvergence as err:  # keep what converged, say so
        raise RuntimeError(
            f"Lanczos did not converge: {len(err.eigenvalues)} of {k} eigenvalues found"
        ) from err
    return np.sort(values)[::-1]
