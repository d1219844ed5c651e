"""Local Lipschitz bounds by bound propagation: soundness, exactness and input checks."""

import itertools

import numpy as np
import pytest

from lib.verification.bounds import (
    ReluNet,
    crown_preactivation_bounds,
    interval_preactivation_bounds,
)
from lib.verification.lipschitz import (
    _pattern_feasible,
    _product_relaxation,
    abs_upper_relaxation,
    bab_lipschitz_bound,
    exact_lipschitz_milp,
    interval_lipschitz_bound,
    lbp_lipschitz_bound,
    naive_lipschitz_bound,
    sampled_lipschitz_lower_bound,
)

RTOL = 1e-7


def random_net(seed: int, sizes=(2, 6, 5, 1)) -> ReluNet:
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=(m, n)) / np.sqrt(n) for n, m in zip(sizes[:-1], sizes[1:])]
    biases = [0.3 * rng.normal(size=m) for m in sizes[1:]]
    return ReluNet.from_arrays(weights, biases)


def brute_force_lipschitz(net: ReluNet, x0: np.ndarray, eps: float) -> float:
    """Enumerate the phases of every unstable neuron; keep the realisable ones."""
    bounds = crown_preactivation_bounds(net, x0, eps)
    unstable = [(i, j) for i in range(len(bounds.lower))
                for j in np.flatnonzero(bounds.status(i) == 0)]
    best = 0.0
    for signs in itertools.product((1, -1), repeat=len(unstable)):
        splits = dict(zip(unstable, signs))
        status = [bounds.status(i).copy() for i in range(len(bounds.lower))]
        for (i, j), s in splits.items():
            status[i][j] = s
        if not _pattern_feasible(net, x0, eps, splits, status):
            continue
        g = net.weights[-1][0]
        for w, st in zip(net.weights[-2::-1], status[::-1]):
            g = (g * (st == 1)) @ w
        best = max(best, float(np.abs(g).sum()))
    return best


def test_gradient_matches_finite_differences():
    net = random_net(0, (3, 7, 6, 1))
    x = np.random.default_rng(1).normal(size=(5, 3))
    h = 1e-6
    numeric = np.stack([(net(x + h * e) - net(x - h * e)) / (2 * h) for e in np.eye(3)], axis=1)
    np.testing.assert_allclose(net.gradient(x), numeric, atol=1e-6)


def test_from_torch_matches_forward_pass():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    net = ReluNet.from_torch(model, output_row=[1.0, -1.0])
    x = np.random.default_rng(0).normal(size=(4, 3))
    out = model(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(net(x), out[:, 0] - out[:, 1], atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_preactivation_bounds_contain_samples_and_crown_is_tighter(seed):
    net = random_net(seed, (3, 8, 8, 6, 1))
    rng = np.random.default_rng(seed)
    x0, eps = rng.normal(size=3), 0.4
    ibp = interval_preactivation_bounds(net, x0, eps)
    crown = crown_preactivation_bounds(net, x0, eps)
    zs = net.preactivations(x0 + eps * rng.uniform(-1, 1, size=(3000, 3)))
    for i, z in enumerate(zs):
        assert np.all(z >= crown.lower[i] - 1e-9) and np.all(z <= crown.upper[i] + 1e-9)
        assert np.all(crown.lower[i] >= ibp.lower[i] - 1e-12)
        assert np.all(crown.upper[i] <= ibp.upper[i] + 1e-12)


def test_abs_chord_is_an_upper_bound_touching_at_the_ends():
    lo, up = np.array([-2.0, 0.5, -3.0]), np.array([1.0, 2.0, -1.0])
    a, c = abs_upper_relaxation(lo, up)
    for t in np.linspace(0, 1, 101):
        x = lo + t * (up - lo)
        assert np.all(a * x + c >= np.abs(x) - 1e-12)
    np.testing.assert_allclose(a * lo + c, np.abs(lo))
    np.testing.assert_allclose(a * up + c, np.abs(up))


@pytest.mark.parametrize("recurjac", [False, True])
def test_product_relaxation_covers_the_clarke_gradient(recurjac):
    lo, up = np.array([-2.0, 0.5, -3.0, -1.0]), np.array([1.0, 2.0, -1.0, 4.0])
    a_u, c_u, a_l, c_l = _product_relaxation(lo, up, recurjac)
    for t in np.linspace(0, 1, 51):
        u = lo + t * (up - lo)
        for slope in (0.0, 0.3, 1.0):  # every element of the Clarke gradient [0, 1]
            v = slope * u
            assert np.all(a_u * u + c_u >= v - 1e-12)
            assert np.all(a_l * u + c_l <= v + 1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_ordering_sampled_exact_lbp_interval_naive(seed):
    sizes = (2, 6, 5, 1) if seed % 2 == 0 else (3, 5, 4, 4, 1)
    net = random_net(seed, sizes)
    rng = np.random.default_rng(100 + seed)
    x0 = rng.normal(size=sizes[0])
    for eps in (0.05, 0.3, 1.0):
        bounds = crown_preactivation_bounds(net, x0, eps)
        sampled, _ = sampled_lipschitz_lower_bound(net, x0, eps, 3000, rng)
        exact = exact_lipschitz_milp(net, x0, eps, bounds)
        assert exact.optimal
        lbp = lbp_lipschitz_bound(net, bounds)
        recurjac = lbp_lipschitz_bound(net, bounds, recurjac=True)
        interval = interval_lipschitz_bound(net, bounds)
        naive = naive_lipschitz_bound(net)
        assert sampled <= exact.value * (1 + RTOL)
        assert exact.value <= lbp * (1 + RTOL)
        assert lbp <= recurjac * (1 + RTOL)
        assert recurjac <= interval * (1 + RTOL)
        assert interval <= naive * (1 + RTOL)
        # the maximiser returned by the MILP lies in the box
        assert np.all(np.abs(exact.x - x0) <= eps + 1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_milp_matches_brute_force_enumeration(seed):
    net = random_net(seed, (2, 4, 4, 1))
    x0 = np.random.default_rng(seed).normal(size=2)
    for eps in (0.2, 0.8):
        exact = exact_lipschitz_milp(net, x0, eps).value
        assert exact == pytest.approx(brute_force_lipschitz(net, x0, eps), rel=1e-7)


def test_all_methods_agree_when_every_neuron_is_stable():
    net = random_net(3)
    x0 = np.array([0.2, -0.1])
    bounds = crown_preactivation_bounds(net, x0, 1e-4)
    if bounds.n_unstable():
        pytest.skip("a neuron sits at the box by chance")
    grad = np.abs(net.gradient(x0[None])[0]).sum()
    assert lbp_lipschitz_bound(net, bounds) == pytest.approx(grad)
    assert interval_lipschitz_bound(net, bounds) == pytest.approx(grad)
    assert exact_lipschitz_milp(net, x0, 1e-4, bounds).value == pytest.approx(grad)


@pytest.mark.parametrize("seed", range(3))
def test_bab_is_sound_monotone_and_reaches_the_exact_value(seed):
    net = random_net(seed, (2, 6, 5, 1))
    x0 = np.random.default_rng(seed).normal(size=2)
    eps = 0.8
    exact = exact_lipschitz_milp(net, x0, eps).value
    result = bab_lipschitz_bound(net, x0, eps, max_branches=500)
    assert np.all(np.diff(result.history) <= 1e-9)
    assert result.upper >= exact * (1 - RTOL)
    assert result.converged
    assert result.upper == pytest.approx(exact, rel=1e-6)
    short = bab_lipschitz_bound(net, x0, eps, max_branches=0)
    assert short.upper == pytest.approx(lbp_lipschitz_bound(
        net, crown_preactivation_bounds(net, x0, eps)))


def test_bad_inputs_raise():
    net = random_net(0)
    x0 = np.zeros(2)
    with pytest.raises(ValueError, match="eps"):
        crown_preactivation_bounds(net, x0, -0.1)
    with pytest.raises(ValueError, match="x0 has 3 entries"):
        interval_preactivation_bounds(net, np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="names no hidden neuron"):
        crown_preactivation_bounds(net, x0, 0.1, splits={(5, 0): 1})
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        crown_preactivation_bounds(net, x0, 0.1, splits={(0, 0): 2})
    with pytest.raises(ValueError, match="must be >= 1"):
        sampled_lipschitz_lower_bound(net, x0, 0.1, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_branches"):
        bab_lipschitz_bound(net, x0, 0.1, max_branches=-1)
    with pytest.raises(ValueError, match="one output"):
        ReluNet.from_arrays([np.ones((3, 2)), np.ones((2, 3))], [np.ones(3), np.ones(2)])
    with pytest.raises(ValueError, match="do not match"):
        ReluNet.from_arrays([np.ones((3, 2)), np.ones((1, 3))], [np.ones(2), np.ones(1)])
    with pytest.raises(ValueError, match="hidden sizes"):
        lbp_lipschitz_bound(random_net(1, (2, 3, 3, 1)), crown_preactivation_bounds(net, x0, 0.1))
