"""Tests for lib.causal: the SCM, stable predictors, worst-case risk and the class search."""

from itertools import chain, combinations

import networkx as nx
import numpy as np
import pytest
import torch

from lib.causal import (
    AdditiveNoiseSCM,
    Mechanism,
    PolynomialRidge,
    equivalence_classes,
    estimate_worst_case_risk,
    fit_stable_predictor,
    grid_environment_risks,
    interventional_resample,
    mag_neighbours,
    markov_boundary,
    published_simulation_scm,
    select_minimax_subset,
    whole_stable_set_optimal,
)
from lib.causal.stable_predictors import PolynomialEnsemble

# The official code's equivalence-class representatives on its stable graph
# (cache/eqsubsets.json of github.com/lmz123321/which_invariance, computed with R's ggm).
OFFICIAL_REPRESENTATIVES = sorted(tuple(s.split()) for s in [
    "X4 X6 X7", "X4 X5 X7", "X3 X5 X6", "X2 X4 X6", "X2 X6 X7", "X4 X6 X8", "X4", "X2 X5 X6 X8",
    "X1 X6", "X2 X7", "X2 X8", "X4 X5", "X4 X8", "X1", "X3 X6", "X2", "", "X4 X5 X6 X7",
    "X4 X6 X7 X8", "X4 X5 X6", "X4 X6", "X4 X5 X6 X7 X8", "X4 X7 X8", "X2 X4 X5 X6",
    "X2 X5 X6 X7", "X2 X5 X8", "X3 X5", "X4 X5 X7 X8", "X4 X7", "X2 X4 X5 X6 X7", "X2 X4 X5 X7",
    "X1 X5", "X2 X4 X6 X7", "X2 X5 X6", "X1 X5 X6", "X2 X4", "X2 X4 X5", "X2 X6", "X2 X5 X7",
    "X3", "X4 X5 X8", "X2 X4 X7", "X2 X5", "X2 X6 X8", "X4 X5 X6 X8",
])


def _subsets(items):
    items = sorted(items)
    return [frozenset(c) for c in chain.from_iterable(combinations(items, r)
                                                      for r in range(len(items) + 1))]


def _do_graph(scm):
    g = scm.graph()
    g.remove_edges_from([(p, m) for m in scm.mutable for p in list(g.predecessors(m))])
    return g


def test_mechanism_and_scm_errors():
    with pytest.raises(ValueError, match="weights"):
        Mechanism(("A",), (), "tanh")
    with pytest.raises(ValueError, match="nonlinearity"):
        Mechanism((), (), "relu")
    with pytest.raises(ValueError, match="noise_std"):
        Mechanism((), (), "tanh", -1.0)
    with pytest.raises(ValueError, match="cycle"):
        AdditiveNoiseSCM({"Y": Mechanism(("A",), (1.0,)), "A": Mechanism(("Y",), (1.0,))})
    with pytest.raises(ValueError, match="target"):
        AdditiveNoiseSCM({"A": Mechanism()}, target="Y")
    with pytest.raises(ValueError, match="mutable"):
        AdditiveNoiseSCM({"Y": Mechanism()}, mutable=("Y",))
    with pytest.raises(ValueError, match="m1_parent"):
        published_simulation_scm(m1_parent="X1")
    scm = published_simulation_scm()
    with pytest.raises(ValueError, match="not a mutable"):
        scm.sample(5, np.random.default_rng(0), scales={"X1": 2.0})
    with pytest.raises(ValueError, match="n must be"):
        scm.sample(0, np.random.default_rng(0))


def test_sampling_abduction_and_scaling():
    scm = published_simulation_scm(y_noise_std=1.0)
    rng = np.random.default_rng(0)
    noise = scm.noise(500, rng)
    data = scm.propagate(noise, scales={"M1": 3.0})
    back = scm.abduct(data, scales={"M1": 3.0})
    for v in scm.order:
        assert torch.allclose(back[v], noise[v])
    # the scaled mechanism: M1 = 3 tanh(1.91 Y) + U
    assert torch.allclose(data["M1"], 3.0 * torch.tanh(1.91 * data["Y"]) + noise["M1"])
    assert scm.stable == tuple(f"X{i}" for i in range(1, 9))


def test_interventional_resample_breaks_dependence_on_y():
    scm = published_simulation_scm(y_noise_std=1.0)
    rng = np.random.default_rng(1)
    data = scm.sample(4000, rng, scales={"M1": 5.0, "M2": 5.0})
    inter = interventional_resample(scm, data, rng)
    corr_obs = np.corrcoef(data["Y"], data["M1"])[0, 1]
    corr_int = np.corrcoef(inter["Y"], inter["M1"])[0, 1]
    assert abs(corr_obs) > 0.8 and abs(corr_int) < 0.05
    # descendants regenerated through the stable mechanism with the same noise
    noise = scm.abduct(data)
    x1 = scm.mechanisms["X1"].mean(inter, 4000) + noise["X1"]
    assert torch.allclose(inter["X1"], x1)
    assert torch.equal(inter["Y"], data["Y"]) and torch.equal(inter["X6"], data["X6"])
    with pytest.raises(ValueError, match="target"):
        interventional_resample(scm, data, rng, do=["Y"])
    with pytest.raises(ValueError, match="copies"):
        interventional_resample(scm, data, rng, copies=0)
    with pytest.raises(ValueError, match="mutable descendants"):
        interventional_resample(scm, data, rng, do=["M1"])
    assert len(interventional_resample(scm, data, rng, copies=3)["Y"]) == 3 * 4000


def test_polynomial_ridge_and_ensemble_agree():
    rng = np.random.default_rng(2)
    x = {k: torch.from_numpy(rng.normal(size=300)) for k in "abc"}
    y = x["a"] ** 2 - 2 * x["b"] * x["c"] + 0.5
    full = PolynomialRidge(("a", "b", "c"), degree=2, ridge=1e-8).fit(x, y)
    assert float(((full(x) - y) ** 2).mean()) < 1e-10
    part = PolynomialRidge(("b",), degree=2).fit(x, y)
    ens = PolynomialEnsemble([full, part])
    out = ens(x)
    assert torch.allclose(out[0], full(x)) and torch.allclose(out[1], part(x))
    with pytest.raises(ValueError, match="degree"):
        PolynomialRidge(("a",), degree=0)
    with pytest.raises(ValueError, match="fit"):
        PolynomialRidge(("a",))(x)
    with pytest.raises(ValueError, match="standardisation"):
        other = {k: v + 1 for k, v in x.items()}
        PolynomialEnsemble([full, PolynomialRidge(("b",)).fit(other, y)])


def test_mag_neighbours_match_brute_force_separation():
    scm = published_simulation_scm()
    g = _do_graph(scm)
    rng = np.random.default_rng(3)
    stable = list(scm.stable)
    for _ in range(25):
        sel = set(rng.choice(stable, size=rng.integers(0, 3), replace=False)) | set(scm.mutable)
        observed = [v for v in stable if v not in sel and rng.random() < 0.6]
        got = mag_neighbours(g, "Y", observed, sel)
        # brute force: adjacent iff no subset Z of the other observed nodes separates them
        want = set()
        for v in observed:
            others = [u for u in observed if u != v]
            if not any(nx.is_d_separator(g, {"Y"}, {v}, set(z) | sel) for z in _subsets(others)):
                want.add(v)
        assert got == want


def test_equivalence_classes_partition_and_boundaries():
    scm = published_simulation_scm()
    g = _do_graph(scm)
    classes = equivalence_classes(g, "Y", scm.stable, selected=scm.mutable)
    members = [m for c in classes for m in c.members()]
    assert len(members) == 2 ** 8 == len(set(members))
    for c in classes:
        for m in c.members():
            assert markov_boundary(g, "Y", m, scm.mutable) == c.core
    with pytest.raises(ValueError, match="both"):
        equivalence_classes(g, "Y", ["X1"], selected=["X1"])
    with pytest.raises(ValueError, match="not in the graph"):
        equivalence_classes(g, "Y", ["Z"])


def test_equivalence_classes_reproduce_official_search():
    scm = published_simulation_scm()
    stable_graph = scm.graph().subgraph(["Y", *scm.stable])
    classes = equivalence_classes(stable_graph, "Y", scm.stable)
    assert sorted(tuple(sorted(c.core)) for c in classes) == OFFICIAL_REPRESENTATIVES


def test_graphical_condition():
    assert not whole_stable_set_optimal(published_simulation_scm().graph(), "Y", ("M1", "M2"))
    moved = published_simulation_scm(m1_parent="X6", y_to_m1=19.1)
    assert whole_stable_set_optimal(moved.graph(), "Y", moved.mutable)


def test_worst_case_at_least_grid_and_errors():
    scm = published_simulation_scm(y_noise_std=1.0)
    rng = np.random.default_rng(4)
    data = scm.sample(600, rng, scales={"M1": 4.0, "M2": -4.0})
    inter = interventional_resample(scm, data, rng)
    f = fit_stable_predictor(scm, inter, ["X1", "X5", "X6"])
    wc = estimate_worst_case_risk(scm, data, f, bound=4.0, steps=40, restarts=3, seed=0)
    assert wc.trace.shape == (40, 1, 9) and wc.risk.shape == (1,)
    # the J class contains every scaled mechanism with |alpha| <= bound: on the training
    # noises the ascent should not end below the best of a few scaled mechanisms
    noise = scm.abduct(data)
    grid = [scm.propagate(noise, scales={"M1": a, "M2": b}) for a in (-4, 4) for b in (-4, 4)]
    best_grid = max(float(((w["Y"] - f(w)) ** 2).mean()) for w in grid)
    assert wc.risk[0] >= 0.9 * best_grid
    risks = grid_environment_risks(scm, {"f": f}, [{"M1": 1.0}, {"M1": -4.0}], 500, rng)
    assert risks["f"].shape == (2,)
    mlp = estimate_worst_case_risk(scm, data, f, bound=4.0, family="mlp", steps=40, restarts=3)
    assert mlp.trace.shape == (40, 1, 3) and np.isfinite(mlp.risk).all()
    with pytest.raises(ValueError, match="family"):
        estimate_worst_case_risk(scm, data, f, bound=4.0, family="linear")
    with pytest.raises(ValueError, match="bound"):
        estimate_worst_case_risk(scm, data, f, bound=0.0)
    with pytest.raises(ValueError, match="stable covariate"):
        fit_stable_predictor(scm, inter, ["M1"])
    with pytest.raises(ValueError, match="no subsets"):
        select_minimax_subset({})
    assert select_minimax_subset({frozenset({"X1"}): 1.0, frozenset(): 1.0}) == frozenset()
