"""Facility location, greedy baselines, sieve streaming and the dynamic threshold algorithm."""

from itertools import combinations

import numpy as np
import pytest

from lib.submodular import (
    DynamicSubmodular,
    FacilityLocation,
    OracleCounter,
    SieveStreaming,
    ThresholdCopy,
    brute_force_opt,
    greedy,
    greedy_query_count,
    lazy_greedy,
    oblivious_stream,
    opt_guesses,
    random_coverage,
    run_updates,
)
from lib.submodular.dynamic_threshold import opt_range_from_singletons


def small_objective(seed=0, m=25, n=12):
    rng = np.random.default_rng(seed)
    return FacilityLocation(rng.random((m, n)) ** 3, rng.uniform(0.5, 1.5, m))


def test_facility_location_gains_and_bad_input():
    f = small_objective()
    state = f.state_of([1, 4])
    for e in (0, 5, 11):
        assert f.gain(state, e) == pytest.approx(f.evaluate([1, 4, e]) - f.evaluate([1, 4]))
    assert np.allclose(f.gains(f.empty_state(), np.arange(12)),
                       [f.evaluate([e]) for e in range(12)])
    assert f.evaluate([]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        FacilityLocation(-np.ones((3, 3)))
    with pytest.raises(ValueError, match="weights"):
        FacilityLocation(np.ones((3, 3)), np.ones(2))
    with pytest.raises(ValueError, match="matrix"):
        FacilityLocation(np.ones(3))
    with pytest.raises(ValueError, match="elements must be"):
        f.gains(state, np.array([12]))
    with pytest.raises(ValueError, match="element must be"):
        f.gain(state, -1)
    with pytest.raises(ValueError, match="density"):
        random_coverage(5, 5, 0.0, np.random.default_rng(0))


def test_oracle_counter_charges():
    oc = OracleCounter(small_objective())
    s = oc.empty_state()
    oc.gains(s, np.arange(5))
    oc.gain(s, 3)
    s = oc.add(s, 3)
    oc.value(s)
    oc.evaluate([1, 2])
    assert oc.queries == 5 + 1 + 1
    oc.reset()
    assert oc.queries == 0


def test_greedy_lazy_greedy_agree_and_counts():
    f = small_objective(1, n=40)
    g, lz = OracleCounter(f), OracleCounter(f)
    S, v = greedy(g, range(40), 6)
    S2, v2 = lazy_greedy(lz, range(40), 6)
    assert S == S2 and v == pytest.approx(v2)
    assert v == pytest.approx(f.evaluate(S))
    assert g.queries == greedy_query_count(40, 6)
    assert lz.queries < g.queries
    assert greedy_query_count(3, 6) == 3 + 2 + 1
    with pytest.raises(ValueError, match="positive integer"):
        greedy(g, range(5), 0)
    with pytest.raises(ValueError):
        greedy_query_count(-1, 2)


def test_brute_force_matches_enumeration_and_bounds_greedy():
    f = small_objective(2)
    opt, best = brute_force_opt(f, range(12), 3, chunk=17)
    manual = max(f.evaluate(c) for c in combinations(range(12), 3))
    assert opt == pytest.approx(manual) and f.evaluate(best) == pytest.approx(opt)
    _, v = greedy(OracleCounter(f), range(12), 3)
    assert (1 - 1 / np.e) * opt <= v + 1e-12 <= opt + 1e-9
    assert brute_force_opt(f, [], 3) == (0.0, ())


def test_opt_guesses_cover_range():
    grid = opt_guesses(1.0, 10.0, 0.1)
    assert grid[0] == 1.0 and grid[-1] >= 10.0 and grid[-2] < 10.0
    for opt in np.linspace(1.0, 10.0, 50):
        assert np.any((grid <= opt + 1e-12) & (grid >= opt / 1.1 - 1e-12))
    with pytest.raises(ValueError, match="eps"):
        opt_guesses(1.0, 2.0, 1.5)
    with pytest.raises(ValueError, match="lo"):
        opt_guesses(2.0, 1.0, 0.1)


def check_invariant(objective, alg):
    """Recompute, from the matrix, the invariant every copy must keep."""
    for c in alg.copies:
        if len(c.solution) < alg.k:
            live = np.array(sorted(alg.live - set(c.solution)), dtype=int)
            if live.size:
                assert objective.gains(objective.state_of(c.solution), live).max() < c.tau
        assert set(c.solution) <= alg.live and len(c.solution) <= alg.k
        assert c.value == pytest.approx(objective.evaluate(c.solution))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dynamic_keeps_half_approximation_and_invariant(seed):
    rng = np.random.default_rng(seed)
    f = random_coverage(40, 13, 0.12, rng)
    k, eps = 3, 0.1
    oc = OracleCounter(f)
    alg = DynamicSubmodular(oc, k, eps, opt_range_from_singletons(oc, range(13), k), rng)
    updates = oblivious_stream(range(13), 120, 0.35, rng)

    def after(t, a):
        check_invariant(f, a)
        if a.live:
            opt, _ = brute_force_opt(f, a.live, k)
            assert a.solution()[1] >= opt / (2 * (1 + eps)) - 1e-9

    spent = run_updates(alg, updates, after=after)
    assert spent.sum() == oc.queries - 13  # every query charged to some update (+ singletons)
    assert alg.rebuilds > 0


def test_dynamic_bad_input():
    f = small_objective()
    oc = OracleCounter(f)
    alg = DynamicSubmodular(oc, 2, 0.2, (0.5, 5.0), np.random.default_rng(0))
    alg.insert(3)
    with pytest.raises(ValueError, match="already present"):
        alg.insert(3)
    with pytest.raises(ValueError, match="not present"):
        alg.delete(4)
    with pytest.raises(ValueError, match="ground set"):
        alg.insert(99)
    with pytest.raises(ValueError, match="k must"):
        DynamicSubmodular(oc, 0, 0.2, (0.5, 5.0), np.random.default_rng(0))
    with pytest.raises(ValueError, match="tau"):
        ThresholdCopy(oc, 2, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rebuild_factor"):
        ThresholdCopy(oc, 2, 1.0, np.random.default_rng(0), rebuild_factor=1.0)
    with pytest.raises(ValueError, match="f\\(\\{e\\}\\) > 0"):
        opt_range_from_singletons(OracleCounter(FacilityLocation(np.zeros((2, 2)))), [0], 2)


def test_oblivious_stream_is_consistent_and_validated():
    updates = oblivious_stream(range(30), 300, 0.4, np.random.default_rng(0))
    live = set()
    for u in updates:
        if u.kind == "insert":
            assert u.element not in live
            live.add(u.element)
        else:
            assert u.element in live
            live.discard(u.element)
    assert 0.3 < np.mean([u.kind == "delete" for u in updates]) < 0.5
    with pytest.raises(ValueError, match="distinct"):
        oblivious_stream([1, 1], 5, 0.2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="delete_fraction"):
        oblivious_stream([1, 2], 5, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_updates"):
        oblivious_stream([1, 2], 0, 0.2, np.random.default_rng(0))


def test_sieve_streaming_insertion_only_guarantee_and_deletions():
    rng = np.random.default_rng(4)
    f = random_coverage(60, 30, 0.08, rng)
    sieve = SieveStreaming(OracleCounter(f), 4, 0.1)
    for e in rng.permutation(30):
        sieve.insert(int(e))
    opt, _ = brute_force_opt(f, range(30), 4)
    S, v = sieve.solution()
    assert v >= (0.5 - 0.1) * opt and len(S) <= 4 and v == pytest.approx(f.evaluate(S))
    sieve.delete(S[0])
    S2, v2 = sieve.solution()
    assert S[0] not in S2 and v2 == pytest.approx(f.evaluate(S2))
    with pytest.raises(ValueError, match="not present"):
        sieve.delete(S[0])
    with pytest.raises(ValueError, match="eps"):
        SieveStreaming(OracleCounter(f), 4, 0.0)


def test_run_updates_adaptive_needs_rng_and_hits_solution():
    f = small_objective(3)
    oc = OracleCounter(f)
    alg = DynamicSubmodular(oc, 2, 0.2, opt_range_from_singletons(oc, range(12), 2),
                            np.random.default_rng(0))
    updates = oblivious_stream(range(12), 60, 0.3, np.random.default_rng(1))
    with pytest.raises(ValueError, match="rng"):
        run_updates(alg, updates, adaptive_deletions=True)
    spent = run_updates(alg, updates, adaptive_deletions=True, rng=np.random.default_rng(2))
    assert spent.shape == (60,) and spent.min() >= 0
