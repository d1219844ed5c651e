"""Laplacian positional encodings: closed forms, symmetries, stability, and input checks."""

import networkx as nx
import numpy as np
import pytest
import torch

from lib.graphs.positional_encodings import (
    ENCODINGS,
    SPE,
    PEGraphRegressor,
    SignNetPE,
    canonical_signs,
    cycle_counts,
    encode_graph,
    evaluate_mae,
    lap_pe,
    laplacian,
    laplacian_eigs,
    mlp,
    pack_graphs,
    random_edge_perturbation,
    random_regular_graphs,
    sensitivity,
    spe_projections,
    train_regressor,
)

CYCLE12 = nx.to_numpy_array(nx.cycle_graph(12))


def weighted_graph(seed: int, n: int = 9) -> np.ndarray:
    """A connected graph with random positive weights (distinct eigenvalues almost surely)."""
    rng = np.random.default_rng(seed)
    G = nx.connected_watts_strogatz_graph(n, 4, 0.3, seed=seed)
    A = nx.to_numpy_array(G)
    W = np.triu(rng.uniform(0.5, 1.5, A.shape), 1)
    return A * (W + W.T)


def test_laplacian_closed_forms():
    A = weighted_graph(0)
    L = laplacian(A)
    np.testing.assert_allclose(L.sum(axis=1), 0, atol=1e-12)
    assert np.linalg.eigvalsh(L).min() > -1e-12
    # On a k-regular graph the normalized Laplacian is L / k.
    R = nx.to_numpy_array(nx.random_regular_graph(3, 10, seed=1))
    np.testing.assert_allclose(laplacian(R, normalized=True), laplacian(R) / 3, atol=1e-12)
    # The cycle C_12 has eigenvalues 2 - 2 cos(2 pi k / 12).
    expected = np.sort(2 - 2 * np.cos(2 * np.pi * np.arange(12) / 12))
    np.testing.assert_allclose(np.linalg.eigvalsh(laplacian(CYCLE12)), expected, atol=1e-12)


def test_soft_projections_reduce_to_the_laplacian_and_projector():
    """With phi(lambda) = lambda and all n eigenpairs, V diag(phi) V^T is L itself; with phi = 1
    and d eigenpairs it is the orthogonal projector onto their span."""
    A = weighted_graph(1)
    n = len(A)
    lam, V = laplacian_eigs(A, n)
    lam_t, V_t = torch.from_numpy(lam)[None], torch.from_numpy(V)[None]
    W = spe_projections(lam_t[..., None], V_t)[0, ..., 0].numpy()
    np.testing.assert_allclose(W, laplacian(A), atol=1e-12)
    lam5, V5 = laplacian_eigs(A, 5)
    P = spe_projections(torch.ones(1, 5, 1, dtype=torch.float64), torch.from_numpy(V5)[None])
    P = P[0, ..., 0].numpy()
    np.testing.assert_allclose(P @ P, P, atol=1e-12)
    assert np.isclose(np.trace(P), 5)


@pytest.mark.parametrize("rho", ["mlp", "gin"])
def test_spe_is_permutation_equivariant(rho):
    torch.manual_seed(0)
    model = SPE(m=3, out_dim=4, hidden=8, rho=rho)
    A = weighted_graph(2)
    perm = np.random.default_rng(2).permutation(len(A))
    out = encode_graph(model, A, 5)
    out_perm = encode_graph(model, A[np.ix_(perm, perm)], 5)
    np.testing.assert_allclose(out_perm, out[perm], atol=1e-10)


def test_signnet_is_permutation_equivariant_and_sign_invariant():
    torch.manual_seed(1)
    model = SignNetPE(4, out_dim=3, hidden=8).double()
    A = weighted_graph(3)
    perm = np.random.default_rng(3).permutation(len(A))
    out = encode_graph(model, A, 4)
    np.testing.assert_allclose(encode_graph(model, A[np.ix_(perm, perm)], 4), out[perm],
                               atol=1e-10)
    lam, V = laplacian_eigs(A, 4)
    flips = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    At = torch.from_numpy(A)[None]
    with torch.no_grad():
        a = model(torch.from_numpy(lam)[None], torch.from_numpy(V)[None], At)
        b = model(torch.from_numpy(lam)[None], torch.from_numpy(V)[None] * flips, At)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)


def rotate_within_eigenspaces(lam: np.ndarray, V: np.ndarray, rng) -> np.ndarray:
    """Another orthonormal eigenbasis: a random rotation inside every repeated eigenvalue."""
    V = V.copy()
    groups = np.split(np.arange(len(lam)), np.nonzero(np.diff(lam) > 1e-9)[0] + 1)
    for g in groups:
        Q, _ = np.linalg.qr(rng.standard_normal((len(g), len(g))))
        V[:, g] = V[:, g] @ Q
    return V


def test_spe_is_basis_invariant_but_signnet_is_not():
    """C_12 with d = 5 has two repeated eigenvalues (2 x 2 eigenspaces); any basis of them must
    give SPE the same output, while a network reading single eigenvectors changes."""
    torch.manual_seed(2)
    rng = np.random.default_rng(4)
    spe, sign = SPE(m=4, out_dim=6, hidden=16).double(), SignNetPE(5).double()
    lam, V = laplacian_eigs(CYCLE12, 5)
    V2 = rotate_within_eigenspaces(lam, V, rng)
    np.testing.assert_allclose(V2.T @ laplacian(CYCLE12) @ V2, np.diag(lam), atol=1e-12)
    At = torch.from_numpy(CYCLE12)[None]
    lam_t = torch.from_numpy(lam)[None]
    with torch.no_grad():
        s1, s2 = (spe(lam_t, torch.from_numpy(W)[None], At) for W in (V, V2))
        g1, g2 = (sign(lam_t, torch.from_numpy(W)[None], At) for W in (V, V2))
    np.testing.assert_allclose(s1.numpy(), s2.numpy(), atol=1e-10)
    assert (g1 - g2).abs().max() > 1e-3


def test_stability_depends_on_the_gap_at_the_cut():
    """On C_12 the bottom five eigenvalues end at a gap (1 -> 2); four cut the pair at 1.
    SPE's output change per Laplacian change stays bounded at d = 5 as eps -> 0, grows like
    1/eps at d = 4, and the raw eigenvectors jump either way."""
    torch.manual_seed(3)
    spe = SPE(m=4, out_dim=8, hidden=16)
    rng = np.random.default_rng(5)
    E = random_edge_perturbation(CYCLE12, rng)
    ratio = {
        (d, eps): sensitivity(lambda B, d=d: encode_graph(spe, B, d), CYCLE12, E, eps)
        for d in (4, 5) for eps in (1e-6, 1e-3)
    }
    assert ratio[5, 1e-6] < 1 and ratio[5, 1e-6] < 2 * ratio[5, 1e-3]
    assert ratio[4, 1e-6] > 10 * ratio[4, 1e-3]
    assert ratio[4, 1e-6] > 1e3 * ratio[5, 1e-6]
    lap = sensitivity(lambda B: lap_pe(B, 5), CYCLE12, E, 1e-6, align=True)
    assert lap > 1e4


def test_spe_is_locally_lipschitz_on_a_graph_with_distinct_eigenvalues():
    torch.manual_seed(4)
    spe = SPE(m=3, out_dim=4, hidden=8, rho="gin")
    A = weighted_graph(6)
    E = random_edge_perturbation(A, np.random.default_rng(6))
    small, smaller = (sensitivity(lambda B: encode_graph(spe, B, 4), A, E, eps)
                      for eps in (1e-5, 1e-7))
    assert np.isclose(small, smaller, rtol=1e-2)


def test_canonical_signs_and_lap_pe():
    V = np.array([[0.1, -0.9], [-0.8, 0.2]])
    np.testing.assert_allclose(canonical_signs(V), [[-0.1, 0.9], [0.8, -0.2]])
    pe = lap_pe(weighted_graph(7), 3)
    assert pe.shape == (9, 3)
    np.testing.assert_allclose(pe.T @ pe, np.eye(3), atol=1e-12)


def test_cycle_counts_small_cases_and_trace_formulas():
    K4 = nx.to_numpy_array(nx.complete_graph(4))
    np.testing.assert_array_equal(cycle_counts(K4, (3, 4, 5)), [4, 3, 0])
    C5 = nx.to_numpy_array(nx.cycle_graph(5))
    np.testing.assert_array_equal(cycle_counts(C5, (3, 4, 5)), [0, 0, 1])
    for seed in range(3):
        A = nx.to_numpy_array(nx.gnp_random_graph(10, 0.4, seed=seed))
        deg, m = A.sum(1), A.sum() / 2
        A3, A4 = np.linalg.matrix_power(A, 3), np.linalg.matrix_power(A, 4)
        c3 = np.trace(A3) / 6
        c4 = (np.trace(A4) - 2 * np.sum(deg**2) + 2 * m) / 8
        np.testing.assert_allclose(cycle_counts(A, (3, 4)), [c3, c4])


def test_packing_and_a_short_training_run():
    rng = np.random.default_rng(8)
    graphs = random_regular_graphs(12, (6, 9), (3,), rng)
    assert all(np.allclose(A.sum(1), 3) for A in graphs)
    y = [cycle_counts(A, (4,))[0] for A in graphs]
    data = pack_graphs(graphs, y, d=9)
    for g, A in enumerate(graphs):
        n = len(A)
        assert data.mask[g].sum() == n
        assert torch.all(data.V[g, n:] == 0) and torch.all(data.A[g, n:] == 0)
    for enc in ENCODINGS:
        torch.manual_seed(0)
        model = PEGraphRegressor(enc, d=9, hidden=8, pe_dim=4, spe_m=4)
        losses = train_regressor(model, data, epochs=2, batch_size=6)
        assert len(losses) == 2 and np.all(np.isfinite(losses))
        assert np.isfinite(evaluate_mae(model, data))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="square"):
        laplacian(np.ones((3, 4)))
    with pytest.raises(ValueError, match="symmetric"):
        laplacian(np.triu(np.ones((3, 3)), 1))
    with pytest.raises(ValueError, match="non-negative"):
        laplacian(-CYCLE12)
    bad = CYCLE12.copy()
    bad[0, 1] = bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        laplacian(bad)
    with pytest.raises(ValueError, match="at least 2 nodes"):
        laplacian(np.zeros((1, 1)))
    for d in (0, 13, 2.5):
        with pytest.raises(ValueError, match="number of eigenpairs"):
            laplacian_eigs(CYCLE12, d)
    with pytest.raises(ValueError, match="no edges"):
        random_edge_perturbation(np.zeros((3, 3)), np.random.default_rng(0))
    E = random_edge_perturbation(CYCLE12, np.random.default_rng(0))
    with pytest.raises(ValueError, match="eps must be positive"):
        sensitivity(lambda B: lap_pe(B, 3), CYCLE12, E, 0.0)
    with pytest.raises(ValueError, match="rho must be"):
        SPE(rho="transformer")
    with pytest.raises(ValueError, match="needs the adjacency"):
        SPE(rho="gin")(torch.zeros(1, 3), torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="lam"):
        SPE()(torch.zeros(1, 4), torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="shape"):
        SignNetPE(3)(torch.zeros(1, 4), torch.zeros(1, 5, 4), torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match="activation"):
        mlp([2, 3], activation="gelu")
    with pytest.raises(ValueError, match="encoding"):
        PEGraphRegressor("RWSE", d=4)
    with pytest.raises(ValueError, match="at least 3"):
        cycle_counts(CYCLE12, (2,))
    with pytest.raises(ValueError, match="as many targets"):
        pack_graphs([CYCLE12], [1.0, 2.0], d=3)


# ---------------------------------------------------------------------------------------------
# BasisNet baseline and the numeric stability bound (lib.graphs.spe_stability_bound)
# ---------------------------------------------------------------------------------------------


def test_basisnet_groups_eigenspaces_and_is_basis_invariant_but_jumps_when_they_split():
    from lib.graphs.positional_encodings import BasisNetPE

    torch.manual_seed(0)
    A = nx.to_numpy_array(nx.cycle_graph(12))
    net = BasisNetPE(5, out_dim=4, hidden=8)
    lam, V = laplacian_eigs(A, 5)
    groups = net.eigenspaces(lam)
    assert [len(g) for g in groups] == [1, 2, 2]
    rng = np.random.default_rng(0)
    R = V.copy()
    for block in ([1, 2], [3, 4]):
        Q, _ = np.linalg.qr(rng.standard_normal((2, 2)))
        R[:, block] = V[:, block] @ Q
    net.double()
    with torch.no_grad():
        out = net(torch.from_numpy(lam)[None], torch.from_numpy(V)[None])
        out_r = net(torch.from_numpy(lam)[None], torch.from_numpy(R)[None])
    assert out.shape == (1, 12, 4)
    assert (out - out_r).abs().max().item() < 1e-12
    E = random_edge_perturbation(A, rng)
    # the split (~1e-2) exceeds the rounding: the partition changes and the output jumps
    assert sensitivity(lambda B: encode_graph(net, B, 5), A, E, 1e-2) > 10
    with pytest.raises(ValueError, match="need lam"):
        net(torch.from_numpy(lam[:4])[None], torch.from_numpy(V[:, :4])[None])
    with pytest.raises(ValueError, match="d must be positive"):
        BasisNetPE(0)
    with pytest.raises(ValueError, match="decimals"):
        BasisNetPE(3, decimals=-1)


def test_stability_bound_constants_are_upper_bounds():
    from lib.graphs.spe_stability_bound import (
        mlp_lipschitz,
        phi_channel_constants,
        spe_rho_lipschitz,
        spe_stability_constant,
    )

    torch.manual_seed(1)
    spe = SPE(m=3, out_dim=4, hidden=8, rho="mlp", activation="tanh").double()
    K, M = phi_channel_constants(spe.phi, 0.0, 4.0)
    xs = torch.linspace(0, 4, 20001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        h = spe.phi(xs).numpy()
    slopes = np.abs(np.diff(h, axis=0)) / (4 / 20000)
    assert np.all(slopes.max(axis=0) <= K + 1e-9)
    assert np.all(np.abs(h).max(axis=0) <= M + 1e-12)
    # the MLP bound dominates measured difference quotients
    seq = spe.rho[0]
    x, y = torch.randn(200, 4, dtype=torch.float64), torch.randn(200, 4, dtype=torch.float64)
    with torch.no_grad():
        q = (seq(x) - seq(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert q.max().item() <= mlp_lipschitz(seq)
    J = spe_rho_lipschitz(spe, 12)
    assert J == pytest.approx(np.sqrt(12) * mlp_lipschitz(seq))
    # the bound holds on a cycle (d = 5 ends at a gap)
    A = nx.to_numpy_array(nx.cycle_graph(12))
    lam = np.linalg.eigvalsh(laplacian(A))
    K, M = phi_channel_constants(spe.phi, -0.1, lam[5])
    rng = np.random.default_rng(2)
    for _ in range(3):
        E = random_edge_perturbation(A, rng)
        dL = np.linalg.norm(laplacian(A + 1e-3 * E) - laplacian(A))
        C = spe_stability_constant(K, M, J, lam[5] - lam[4], dL)
        assert sensitivity(lambda B: encode_graph(spe, B, 5), A, E, 1e-3) <= C
    assert spe_stability_constant(K, M, J, np.inf, 0.0) == pytest.approx(J * np.linalg.norm(K))
    assert spe_stability_constant(K, M, J, 0.1, 0.06) == float("inf")
    gin = SPE(m=2, out_dim=3, hidden=4, rho="gin")
    assert spe_rho_lipschitz(gin, 12, A) > 0
    with pytest.raises(ValueError, match="adjacency"):
        spe_rho_lipschitz(gin, 12)
    with pytest.raises(ValueError, match="must be"):
        spe_rho_lipschitz(gin, 12, A[:5, :5])
    with pytest.raises(ValueError, match="SPE module"):
        spe_rho_lipschitz(torch.nn.Linear(2, 2), 3)
    with pytest.raises(ValueError, match="one-hidden-layer"):
        phi_channel_constants(seq, 0.0, 1.0)
    with pytest.raises(ValueError, match="lo < hi"):
        phi_channel_constants(spe.phi, 1.0, 0.0)
    with pytest.raises(ValueError, match="Sequential"):
        mlp_lipschitz(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="only Linear"):
        mlp_lipschitz(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sigmoid()))
    with pytest.raises(ValueError, match="non-negative vectors"):
        spe_stability_constant(-K, M, J, 1.0, 0.0)
    with pytest.raises(ValueError, match="non-negative, got"):
        spe_stability_constant(K, M, J, 1.0, -1.0)
