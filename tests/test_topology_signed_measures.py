"""Signed barcodes as measures: Möbius inversion, Hilbert/Euler measures, KR and sliced
Wasserstein distances, convolution features, bad inputs, and the multipers route (subprocess)."""

import subprocess
import sys
import textwrap

import gudhi
import numpy as np
import pytest

from lib.topology.signed_measures import (
    convolution_features,
    euler_signed_measure,
    gaussian_lipschitz,
    hilbert_function,
    hilbert_signed_measure,
    hilbert_signed_measures,
    kr_distance,
    measure_cdf,
    merge_atoms,
    mobius_inversion,
    one_parameter_features,
    positive_part,
    random_directions,
    rank_invariant,
    rank_mobius_inversion,
    rank_signed_measure,
    rectangles_rank,
    regular_grid,
    rescale,
    sliced_wasserstein_distance,
    sliced_wasserstein_kernel,
    sliced_wasserstein_matrix,
    snap_up,
    with_zero_mass,
)


def square_bifiltration():
    """A 4-cycle whose last edge enters at (2, 1) and whose two filling triangles enter at
    (3, 1) and (2, 3): H1 lives exactly on {x >= (2, 1)} minus the up-sets of the fillings."""
    simplices = [(0,), (1,), (2,), (3,), (0, 1), (1, 2), (2, 3), (0, 3), (0, 2),
                 (0, 1, 2), (0, 2, 3)]
    values = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [1, 0], [1, 0], [1, 0], [2, 1],
                       [3, 1], [3, 1], [3, 1]], dtype=float)
    return simplices, values


def grades(X, f, simplices):
    dist = np.linalg.norm(X[:, None] - X[None], axis=-1)
    return np.array([[max((dist[a, b] for a in s for b in s), default=0.0), f[list(s)].max()]
                     for s in simplices])


def random_cloud_bifiltration(seed, n=18, r_max=0.9):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 2))
    f = rng.random(n)
    tree = gudhi.RipsComplex(points=X, max_edge_length=r_max).create_simplex_tree(max_dimension=2)
    simplices = sorted((tuple(s) for s, _ in tree.get_simplices()), key=len)
    return X, f, simplices, grades(X, f, simplices)


@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2)])
def test_mobius_inversion_round_trip(shape):
    rng = np.random.default_rng(0)
    H = rng.integers(-3, 4, size=shape)
    grid = [np.sort(rng.random(s)) + np.arange(s) for s in shape]
    mu = mobius_inversion(H, grid)
    np.testing.assert_array_equal(measure_cdf(mu, grid), H)


def test_mobius_inversion_of_an_upset_indicator_is_one_atom():
    grid = [np.arange(5.0), np.arange(4.0)]
    H = np.zeros((5, 4), dtype=int)
    H[2:, 1:] = 1
    points, weights = mobius_inversion(H, grid)
    np.testing.assert_array_equal(points, [[2.0, 1.0]])
    np.testing.assert_array_equal(weights, [1])


def test_hilbert_function_of_the_square_by_hand():
    simplices, values = square_bifiltration()
    grid = [np.arange(5.0), np.arange(4.0)]
    H1 = hilbert_function(simplices, values, grid, degree=1)
    expected = np.zeros((5, 4), dtype=int)
    expected[2, 1:] = 1  # cycle born at (2, 1), filled at x = 3 by both triangles
    np.testing.assert_array_equal(H1, expected)
    points, weights = hilbert_signed_measure(simplices, values, grid, degree=1)
    assert sorted(zip(map(tuple, points), weights)) == [((2.0, 1.0), 1), ((3.0, 1.0), -1)]
    H0 = hilbert_function(simplices, values, grid, degree=0)
    np.testing.assert_array_equal(H0[:, 0], [4, 1, 1, 1, 1])


@pytest.mark.parametrize("seed", range(3))
def test_hilbert_measure_matches_gudhi_rips_on_every_grid_point(seed):
    X, f, simplices, values = random_cloud_bifiltration(seed)
    grid = [np.linspace(0, 0.9, 9), np.quantile(f, np.linspace(0, 1, 7))]
    measures = hilbert_signed_measures(simplices, values, grid, (0, 1))
    for degree, mu in zip((0, 1), measures):
        F = measure_cdf(mu, grid)
        for j, f0 in enumerate(grid[1]):
            tree = gudhi.RipsComplex(points=X[f <= f0], max_edge_length=0.9).create_simplex_tree(
                max_dimension=2)
            tree.compute_persistence(persistence_dim_max=True)  # else a 0-d complex gets no H0
            bars = np.asarray(tree.persistence_intervals_in_dimension(degree)).reshape(-1, 2)
            betti = ((bars[:, 0] <= grid[0][:, None]) & (grid[0][:, None] < bars[:, 1])).sum(1)
            np.testing.assert_array_equal(F[:, j], betti)


def test_euler_measure_counts_the_euler_characteristic():
    _, _, simplices, values = random_cloud_bifiltration(4)
    mu = euler_signed_measure(simplices, values)
    grid = regular_grid(values, 6)
    dims = np.array([len(s) - 1 for s in simplices])
    F = measure_cdf(mu, grid)
    for i, x in enumerate(grid[0]):
        for j, y in enumerate(grid[1]):
            present = (values[:, 0] <= x) & (values[:, 1] <= y)
            assert F[i, j] == ((-1.0) ** dims[present]).sum()


def test_snap_up_preserves_sublevel_sets_at_grid_points():
    rng = np.random.default_rng(1)
    values = rng.random((50, 2))
    grid = [np.linspace(0, 1, 7), np.linspace(0, 1, 5)]
    snapped = snap_up(values, grid)
    for k, g in enumerate(grid):
        for x in g:
            np.testing.assert_array_equal(values[:, k] <= x, snapped[:, k] <= x)


def test_kr_distance_closed_forms():
    a, b = np.array([[0.0, 0.0]]), np.array([[1.0, 2.0]])
    assert kr_distance((a, np.array([1])), (b, np.array([1]))) == pytest.approx(3.0)
    # a signed measure against itself plus a cancelling pair: distance zero
    mu = (np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([1, -1]))
    nu = (np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0], [5.0, 5.0]]), np.array([1, -1, 2, -2]))
    assert kr_distance(mu, nu) == pytest.approx(0.0)
    # moving a +1 atom by d and a -1 atom by e costs at most d + e
    mu2 = (np.array([[0.5, 0.0], [1.0, 1.5]]), np.array([1, -1]))
    assert kr_distance(mu, mu2) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(3))
def test_euler_measure_is_l1_stable(seed):
    X, f, simplices, values = random_cloud_bifiltration(seed)
    rng = np.random.default_rng(seed + 7)
    moved = grades(X + 0.03 * rng.normal(size=X.shape), f + 0.03 * rng.normal(size=f.shape),
                   simplices)
    bound = np.abs(values - moved).sum()
    assert kr_distance(euler_signed_measure(simplices, values),
                       euler_signed_measure(simplices, moved)) <= bound + 1e-9


def test_sliced_wasserstein_in_one_dimension_is_w1_and_below_kr():
    rng = np.random.default_rng(2)
    mu = (rng.random((6, 1)), np.ones(6))
    nu = (rng.random((6, 1)), np.ones(6))
    w1 = np.abs(np.sort(mu[0].ravel()) - np.sort(nu[0].ravel())).sum()
    assert sliced_wasserstein_distance(mu, nu, np.array([[1.0], [-1.0]])) == pytest.approx(w1)
    assert kr_distance(mu, nu) == pytest.approx(w1)
    measures = [with_zero_mass((rng.random((k, 2)), rng.integers(-2, 3, k)), [1, 1])
                for k in (1, 3, 5, 8)]
    dirs = random_directions(16, rng)
    D = sliced_wasserstein_matrix(measures, dirs)
    for i, m in enumerate(measures):
        for j, n in enumerate(measures):
            assert D[i, j] == pytest.approx(sliced_wasserstein_distance(m, n, dirs))
            assert D[i, j] <= kr_distance(m, n) + 1e-9
    K = sliced_wasserstein_kernel(D, 0.5)
    np.testing.assert_allclose(np.diag(K), 1.0)


def test_gaussian_lipschitz_constant_by_finite_differences():
    sigma = 0.3
    r = np.linspace(0, 2, 20001)
    slope = np.abs(np.diff(np.exp(-(r**2) / (2 * sigma**2))) / np.diff(r)).max()
    assert slope == pytest.approx(gaussian_lipschitz(sigma), rel=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_convolution_is_lipschitz_in_kr(seed):
    rng = np.random.default_rng(seed)
    mu = with_zero_mass((rng.random((5, 2)), rng.integers(-2, 3, 5)), [1, 1])
    nu = with_zero_mass((rng.random((4, 2)), rng.integers(-2, 3, 4)), [1, 1])
    grid = [np.linspace(0, 1, 25)] * 2
    sigma = 0.1
    gap = np.abs(convolution_features(mu, grid, sigma) - convolution_features(nu, grid, sigma))
    gap = gap.max()
    assert gap <= gaussian_lipschitz(sigma) * kr_distance(mu, nu) + 1e-12
    single = convolution_features((np.array([[0.5, 0.5]]), np.array([2])), grid, sigma)
    assert single.max() == pytest.approx(2 * np.exp(0.0), rel=1e-2)


def test_helpers():
    mu = (np.array([[0.2, 0.1], [0.2, 0.1], [0.5, 0.5]]), np.array([1, 1, -3]))
    points, weights = merge_atoms(mu)
    assert weights.tolist() == [2, -3]
    assert positive_part(mu)[1].tolist() == [2]
    zero = with_zero_mass(mu, [1.0, 1.0])
    assert zero[1].sum() == 0
    scaled = rescale(mu, np.array([[0.0, 0.0], [2.0, 4.0]]))
    np.testing.assert_allclose(scaled[0][2], [0.25, 0.125])
    feats = one_parameter_features(np.array([[0.0, 0.5], [0.1, 0.3]]), np.array([0.0, 0.2, 0.4]),
                                   top_k=3)
    np.testing.assert_allclose(feats, [1, 2, 1, 0.5, 0.2, 0.0])


def test_bad_inputs():
    simplices, values = square_bifiltration()
    grid = [np.arange(5.0), np.arange(4.0)]
    with pytest.raises(ValueError, match="degree"):
        hilbert_function(simplices, values, grid, degree=-1)
    with pytest.raises(ValueError, match="filtration values"):
        hilbert_function(simplices[:-1], values, grid, degree=1)
    with pytest.raises(ValueError, match="increasing"):
        hilbert_function(simplices, values, [np.arange(5.0)[::-1], np.arange(4.0)], degree=1)
    with pytest.raises(ValueError, match="two parameters"):
        hilbert_function(simplices, np.c_[values, values[:, 0]], grid + [grid[0]], degree=1)
    with pytest.raises(ValueError, match="does not match"):
        mobius_inversion(np.zeros((3, 3)), grid)
    with pytest.raises(ValueError, match="equal total masses"):
        kr_distance((np.zeros((1, 2)), np.array([1])), (np.zeros((0, 2)), np.array([], int)))
    with pytest.raises(ValueError, match="equal total masses"):
        sliced_wasserstein_matrix([(np.zeros((1, 2)), np.array([1])),
                                   (np.zeros((1, 2)), np.array([2]))], np.eye(2))
    with pytest.raises(ValueError, match="sigma"):
        convolution_features((np.zeros((1, 2)), np.array([1])), grid, 0.0)
    with pytest.raises(ValueError, match="above every atom"):
        with_zero_mass((np.ones((1, 2)), np.array([1])), [0.5, 0.5])
    with pytest.raises(ValueError, match="pair"):
        merge_atoms(np.zeros(3))
    with pytest.raises(ValueError, match="resolution"):
        regular_grid(values, 1)
    with pytest.raises(ValueError, match="finite"):
        euler_signed_measure(simplices, np.full_like(values, np.nan))


def test_rank_barcode_of_the_square_is_one_rectangle():
    simplices, values = square_bifiltration()
    grid = [np.arange(4.0), np.arange(2.0)]
    points, weights = rank_signed_measure(simplices, values, grid, 1)
    # the loop is born at (2, 1) and filled at (3, 1): one rectangle [(2, 1), (2, 1)]
    np.testing.assert_array_equal(points, [[2.0, 1.0, 2.0, 1.0]])
    np.testing.assert_array_equal(weights, [1])


def test_rank_invariant_of_a_persisting_vertex():
    # two vertices merge at x = 2: H0 ranks from (0, 0) are 2 before x = 2, then 1
    simplices = [(0,), (1,), (0, 1)]
    values = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    grid = [np.arange(4.0), np.arange(2.0)]
    rk = rank_invariant(simplices, values, grid, 0)
    np.testing.assert_array_equal(rk[0, 0, :, 1], [2, 2, 1, 1])
    assert rk[1, 0, 0, 0] == 0  # s > t: no map
    points, weights = rank_mobius_inversion(rk, grid)
    # one bar to the top of the grid and one that ends just before x = 2
    order = np.lexsort(points.T[::-1])
    np.testing.assert_array_equal(points[order], [[0, 0, 1, 1], [0, 0, 3, 1]])
    np.testing.assert_array_equal(weights[order], [1, 1])


@pytest.mark.parametrize("degree", [0, 1])
def test_rank_barcode_round_trip_and_hilbert_diagonal(degree):
    X, f, simplices, values = random_cloud_bifiltration(3, n=14)
    grid = [np.linspace(0, 0.9, 6), np.quantile(f, np.linspace(0, 1, 5))]
    rk = rank_invariant(simplices, values, grid, degree)
    measure = rank_mobius_inversion(rk, grid)
    np.testing.assert_array_equal(rectangles_rank(measure, grid), rk)
    H = hilbert_function(simplices, values, grid, degree)
    np.testing.assert_array_equal(np.einsum("abab->ab", rk), H)
    # the rank from s to t never exceeds the Betti numbers at either end
    for a, b, c, e in np.argwhere(rk > 0):
        assert rk[a, b, c, e] <= min(H[a, b], H[c, e])


def test_rank_bad_inputs():
    simplices, values = square_bifiltration()
    grid = [np.arange(4.0), np.arange(2.0)]
    with pytest.raises(ValueError, match="two parameters"):
        rank_invariant(simplices, np.c_[values, values[:, :1]], grid + [np.arange(2.0)], 1)
    with pytest.raises(ValueError, match="degree"):
        rank_invariant(simplices, values, grid, -1)
    with pytest.raises(ValueError, match="does not match the grid"):
        rank_mobius_inversion(np.zeros((4, 2, 4, 3)), grid)
    with pytest.raises(ValueError, match="4 coordinates"):
        rectangles_rank((np.zeros((1, 2)), np.array([1])), grid)


MULTIPERS_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from tests.test_topology_signed_measures import random_cloud_bifiltration
    from lib.topology.signed_measures import (
        euler_signed_measure, hilbert_signed_measure, multipers_signed_measure,
        rank_signed_measure)
    X, f, simplices, values = random_cloud_bifiltration(5, n=22)
    grid = [np.linspace(0, 0.9, 11), np.quantile(f, np.linspace(0, 1, 9))]
    for degree in (0, 1):
        ours = hilbert_signed_measure(simplices, values, grid, degree)
        theirs = multipers_signed_measure(simplices, values, grid, degree)
        assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1]), degree
    exact = [np.unique(values[:, 0]), np.unique(values[:, 1])]
    ours = euler_signed_measure(simplices, values)
    theirs = multipers_signed_measure(simplices, values, exact, None)
    assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])
    small = [np.linspace(0, 0.9, 6), np.quantile(f, np.linspace(0, 1, 5))]
    for degree in (0, 1):
        ours = rank_signed_measure(simplices, values, small, degree)
        theirs = multipers_signed_measure(simplices, values, small, degree, invariant="rank")
        assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1]), degree
    try:
        multipers_signed_measure(simplices, values, small, 1, invariant="landscape")
    except ValueError:
        pass
    else:
        raise AssertionError("an unknown invariant must raise")
    print("OK")
    """
)


def test_multipers_route_in_a_subprocess():
    """The exact multipers calls the chapter makes (insert simplices one by one, then
    ``signed_measure``) run in a child process: a crash there fails this test, not pytest."""
    from lib.book.papers import REPO_ROOT

    result = subprocess.run([sys.executable, "-c", MULTIPERS_SCRIPT], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("OK")
    assert "KeOps" not in result.stdout  # import_multipers swallows pykeops' CUDA notice
