"""Tests for lib.explain (counterfactuals, Stability, the guarantee) and lib.nn.tabular_mlp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lib.explain.counterfactuals import (
    closest_counterfactual,
    high_confidence_counterfactual,
    outlier_fraction,
    probability,
    stability,
    stability_estimate,
    trex,
    validity,
)
from lib.explain.stability_guarantee import (
    concentration_tail,
    invalidation_bound,
    model_change_spread,
    sampled_local_lipschitz,
)
from lib.nn.tabular_mlp import make_mlp, predict_proba, retrain_family, train_binary_mlp


def linear_model(w: list[float], b: float) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(len(w), 1, dtype=torch.float64))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([w], dtype=torch.float64))
        net[0].bias.fill_(b)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-1.0, 0.6, (60, 2)), rng.normal(1.0, 0.6, (60, 2))])
    y = np.repeat([0, 1], 60)
    return X, y


def test_train_is_seeded_and_accurate(blobs):
    X, y = blobs
    a = train_binary_mlp(X, y, seed=3, hidden=(8,), epochs=100)
    b = train_binary_mlp(X, y, seed=3, hidden=(8,), epochs=100)
    c = train_binary_mlp(X, y, seed=4, hidden=(8,), epochs=100)
    pa, pb, pc = (predict_proba(m, X) for m in (a, b, c))
    assert np.array_equal(pa, pb)
    assert not np.allclose(pa, pc)
    assert ((pa >= 0.5) == y).mean() > 0.95


def test_retrain_family_subsets_differ(blobs):
    X, y = blobs
    full = retrain_family(X, y, seeds=[1, 2], hidden=(8,), epochs=30)
    sub = retrain_family(X, y, seeds=[1], keep_fraction=0.8, hidden=(8,), epochs=30)
    assert len(full) == 2
    assert not np.allclose(predict_proba(full[0], X), predict_proba(sub[0], X))


def test_tabular_bad_input(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="n_features"):
        make_mlp(0)
    with pytest.raises(ValueError, match="both classes"):
        train_binary_mlp(X, np.zeros(len(y), dtype=int), seed=0)
    with pytest.raises(ValueError, match="X must be"):
        train_binary_mlp(X[:, 0], y, seed=0)
    with pytest.raises(ValueError, match="keep_fraction"):
        retrain_family(X, y, seeds=[0], keep_fraction=1.5)
    with pytest.raises(ValueError, match="seeds"):
        retrain_family(X, y, seeds=[])


def test_closest_counterfactual_matches_the_linear_projection():
    # for a linear logit w.x + b the closest boundary point is the orthogonal projection
    model = linear_model([1.0, 2.0], -1.0)
    x = np.array([[-1.0, -1.0], [0.0, -2.0]])
    res = closest_counterfactual(model, x, lr=0.02)
    w = np.array([1.0, 2.0])
    proj = x - ((x @ w - 1.0) / (w @ w))[:, None] * w
    assert res.reached.all()
    assert (x @ w - 1.0 < 0).all() and (res.cfs @ w - 1.0 >= 0).all()
    ratio = np.linalg.norm(res.cfs - x, axis=1) / np.linalg.norm(proj - x, axis=1)
    assert np.abs(ratio - 1).max() < 0.02


def test_closest_counterfactual_rejects_accepted_points():
    model = linear_model([1.0], 0.0)
    with pytest.raises(ValueError, match="rejected"):
        closest_counterfactual(model, np.array([[1.0]]))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        closest_counterfactual(model, np.array([-1.0]))
    with pytest.raises(ValueError, match="NaN"):
        closest_counterfactual(model, np.array([[np.nan]]))


def test_stability_closed_form_for_a_flat_model():
    # a constant model has m(X_i) = m(x') = c everywhere, so R_hat = c exactly
    model = linear_model([0.0, 0.0], 1.5)
    x = torch.zeros(3, 2, dtype=torch.float64)
    noise = torch.randn(3, 50, 2, dtype=torch.float64)
    c = 1 / (1 + np.exp(-1.5))
    assert torch.allclose(stability(model, x, noise, 0.3), torch.full((3,), c, dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma"):
        stability(model, x, noise, 0.0)
    with pytest.raises(ValueError, match="noise"):
        stability(model, x, noise[:, :, :1], 0.3)


def test_stability_is_below_the_model_output_and_estimates_agree():
    model = linear_model([3.0, 0.0], -0.5)
    x = np.array([[0.6, 0.0], [1.0, 1.0]])
    rng = np.random.default_rng(1)
    small = stability_estimate(model, x, sigma=0.3, k=200, rng=rng)
    large = stability_estimate(model, x, sigma=0.3, k=20000, rng=rng)
    with torch.no_grad():
        m = probability(model, torch.from_numpy(x)).numpy()
    assert (large <= m + 1e-12).all()  # R <= m(x') pointwise, hence in mean
    assert np.abs(small - large).max() < 0.05


def test_trex_reaches_tau_and_beats_the_variability_free_walk():
    model = linear_model([2.0, 0.0], 0.0)
    start = np.array([[0.01, 0.0], [0.02, 0.5]])
    rng = np.random.default_rng(2)
    res = trex(model, start, tau=0.8, sigma=0.2, k=200, k_check=500, step=0.05, max_iter=200,
               rng=rng, keep_path=True)  # fmt: skip
    assert res.reached.all() and (res.stability >= 0.8).all()
    assert len(res.path) == res.iterations.max() + 1
    fresh = stability_estimate(model, res.cfs, sigma=0.2, k=20000, rng=rng)
    assert (fresh >= 0.8 - 0.03).all()
    # a rejected start first climbs the logit surrogate
    res2 = trex(model, np.array([[-1.0, 0.0]]), tau=0.7, sigma=0.2, k=100, step=0.1,
                max_iter=200, rng=rng)  # fmt: skip
    assert res2.reached.all() and res2.cfs[0, 0] > 0
    mean_only = trex(model, start, tau=0.8, sigma=0.2, k=200, step=0.05, max_iter=200, rng=rng,
                     variability=False)  # fmt: skip
    # dropping the variability term makes tau easier to reach: the walk stops sooner
    assert mean_only.cfs[:, 0].mean() < res.cfs[:, 0].mean()


def test_trex_bad_input():
    model = linear_model([1.0], 0.0)
    rng = np.random.default_rng(0)
    for bad in (dict(tau=0.5), dict(tau=1.0)):
        with pytest.raises(ValueError, match="tau"):
            trex(model, np.array([[1.0]]), sigma=0.1, k=5, step=0.1, max_iter=5, rng=rng, **bad)
    with pytest.raises(ValueError, match="sigma"):
        trex(model, np.array([[1.0]]), tau=0.7, sigma=-1, k=5, step=0.1, max_iter=5, rng=rng)
    with pytest.raises(ValueError, match="k_check"):
        trex(model, np.array([[1.0]]), tau=0.7, sigma=0.1, k=5, step=0.1, max_iter=5, rng=rng,
             k_check=0)  # fmt: skip
    with pytest.raises(ValueError, match="bounds"):
        trex(model, np.array([[1.0]]), tau=0.7, sigma=0.1, k=5, step=0.1, max_iter=5, rng=rng,
             bounds=(np.array([1.0]), np.array([0.0])))  # fmt: skip


def test_high_confidence_and_validity():
    model = linear_model([1.0, 0.0], 0.0)
    res = high_confidence_counterfactual(model, np.array([[0.0, 0.0]]), target=0.9, step=0.05)
    assert res.reached.all()
    assert 1 / (1 + np.exp(-res.cfs[0, 0])) >= 0.9
    with pytest.raises(ValueError, match="target"):
        high_confidence_counterfactual(model, np.array([[0.0, 0.0]]), target=0.3)
    shifted = linear_model([1.0, 0.0], -1.0)
    v = validity([model, shifted], np.array([[0.5, 0.0], [2.0, 0.0]]))
    assert v.tolist() == [[True, True], [False, True]]
    with pytest.raises(ValueError, match="at least one"):
        validity([], np.array([[0.0, 0.0]]))


def test_outlier_fraction(blobs):
    X, _ = blobs
    assert outlier_fraction(X[:5], X) <= 0.4
    assert outlier_fraction(np.full((3, 2), 50.0), X) == 1.0
    with pytest.raises(ValueError, match="reference"):
        outlier_fraction(X[:2], X[:10])


def test_concentration_tail_and_bound():
    assert concentration_tail(0.0, k=10, sigma=0.1, gamma=1.0) == 1.0
    assert concentration_tail(0.1, k=100, sigma=0.1, gamma=1.0) == pytest.approx(np.exp(-12.5))
    with pytest.raises(ValueError, match="gamma"):
        concentration_tail(0.1, k=10, sigma=0.1, gamma=0.0)
    with pytest.raises(ValueError, match="k must"):
        concentration_tail(0.1, k=0, sigma=0.1, gamma=1.0)
    b = invalidation_bound(np.array([0.4, 0.9, 0.99]), k=1000, sigma=0.1, gamma=1.0, nu=0.01)
    assert b[0] == 1.0 and 0 < b[2] < b[1] < 1
    # with nu = 0 and a large k only the (tiny) concentration term remains
    assert invalidation_bound(np.array([0.9]), k=10**5, sigma=0.1, gamma=1.0, nu=0.0)[0] < 1e-6
    with pytest.raises(ValueError, match="nu"):
        invalidation_bound(np.array([0.9]), k=10, sigma=0.1, gamma=1.0, nu=-1.0)


def test_concentration_tail_holds_for_a_lipschitz_model():
    # empirical tail of R_hat over many independent draws vs the Gaussian concentration bound
    model = linear_model([4.0, 0.0], 0.0)
    x = np.array([[0.3, 0.0]])
    rng = np.random.default_rng(5)
    draws = np.array([stability_estimate(model, x, sigma=0.3, k=20, rng=rng)[0]
                      for _ in range(400)])  # fmt: skip
    mean = stability_estimate(model, x, sigma=0.3, k=200000, rng=rng)[0]
    gamma = 1.0  # sup of |d sigmoid(4 x)/dx| = 4 / 4
    for eps in (0.05, 0.1, 0.15):
        assert np.mean(draws - mean >= eps) <= concentration_tail(eps, k=20, sigma=0.3, gamma=gamma)


def test_lipschitz_estimate_and_model_change_spread():
    model = linear_model([4.0, 0.0], 0.0)
    rng = np.random.default_rng(0)
    gam = sampled_local_lipschitz(model, np.array([[0.0, 0.0], [3.0, 0.0]]), sigma=0.1,
                                  n_samples=50, rng=rng)  # fmt: skip
    assert gam[0] == pytest.approx(1.0)  # the steepest point, sigmoid'(0) * 4, is x' itself
    assert gam[1] < gam[0]
    spread = model_change_spread(model, [model, linear_model([4.0, 0.0], -1.0)],
                                 np.array([[1.0, 0.0]]), sigma=0.2, k=100, rng=rng)  # fmt: skip
    assert spread.shape == (2, 1) and spread[0, 0] == 0.0 and spread[1, 0] < 0
    with pytest.raises(ValueError, match="at least one"):
        model_change_spread(model, [], np.array([[1.0, 0.0]]), sigma=0.2, k=10, rng=rng)
