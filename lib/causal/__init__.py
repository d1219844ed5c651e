"""Causal models with environments: additive-noise SCMs, stable (do-)predictors, worst-case
risk over mutable mechanisms and the equivalence-class search over stable subsets."""

from lib.causal.equivalence import (
    equivalence_classes,
    mag_neighbours,
    markov_boundary,
    whole_stable_set_optimal,
)
from lib.causal.scm import AdditiveNoiseSCM, Mechanism, published_simulation_scm
from lib.causal.stable_predictors import (
    PolynomialRidge,
    fit_stable_predictor,
    interventional_resample,
)
from lib.causal.worst_case import (
    estimate_worst_case_risk,
    grid_environment_risks,
    select_minimax_subset,
)

__all__ = [
    "AdditiveNoiseSCM",
    "Mechanism",
    "PolynomialRidge",
    "equivalence_classes",
    "estimate_worst_case_risk",
    "fit_stable_predictor",
    "grid_environment_risks",
    "interventional_resample",
    "mag_neighbours",
    "markov_boundary",
    "published_simulation_scm",
    "select_minimax_subset",
    "whole_stable_set_optimal",
]
