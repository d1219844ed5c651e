"""Monotone submodular maximisation under a cardinality constraint: objectives with an
oracle-query counter, static greedy baselines and brute force, an insertion-only streaming
method, and the fully dynamic threshold/level algorithm with lazy rebuilds."""

from lib.submodular.dynamic_threshold import DynamicSubmodular, ThresholdCopy, opt_guesses
from lib.submodular.objectives import (
    FacilityLocation,
    OracleCounter,
    digits_facility_location,
    random_coverage,
)
from lib.submodular.sieve_streaming import SieveStreaming
from lib.submodular.static import brute_force_opt, greedy, greedy_query_count, lazy_greedy
from lib.submodular.update_streams import Update, oblivious_stream, run_updates

__all__ = [
    "DynamicSubmodular",
    "FacilityLocation",
    "OracleCounter",
    "SieveStreaming",
    "ThresholdCopy",
    "Update",
    "brute_force_opt",
    "digits_facility_location",
    "greedy",
    "greedy_query_count",
    "lazy_greedy",
    "oblivious_stream",
    "random_coverage",
    "opt_guesses",
    "run_updates",
]
