"""Optimal transport: entropic OT (Sinkhorn) and its sparse-Newton acceleration."""

from lib.ot.entropic import (
    OTTrace,
    lyapunov,
    lyapunov_gradient,
    lyapunov_hessian,
    marginal_error,
    sinkhorn,
    transport_cost,
    transport_plan,
    validate_problem,
)
from lib.ot.problems import digits_problem, point_cloud_problem, random_assignment_problem
from lib.ot.sparse_newton import newton_ot, sinkhorn_newton_sparse, sparsify_plan

__all__ = [
    "OTTrace",
    "digits_problem",
    "lyapunov",
    "lyapunov_gradient",
    "lyapunov_hessian",
    "marginal_error",
    "newton_ot",
    "point_cloud_problem",
    "random_assignment_problem",
    "sinkhorn",
    "sinkhorn_newton_sparse",
    "sparsify_plan",
    "transport_cost",
    "transport_plan",
    "validate_problem",
]
