"""Matrix completion by alternating minimization: row solvers, operation counts, recovery."""

import numpy as np
import pytest

from lib.linalg.matrix_completion import (
    RowRegressions,
    altmin,
    cg_solve,
    count_sketch,
    exact_solve,
    incoherence,
    make_problem,
    perturb,
    relative_error,
    sketch_preconditioner,
    sketch_solve,
    spectral_init,
)
from lib.linalg.op_count import MultiplyAdds


def small_regressions(seed: int, n_out: int = 7, n_in: int = 40, k: int = 3, p: float = 0.5):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_out, n_in)) < p
    mask[:, :k] = True  # every row sees at least k entries: each regression is well posed
    a, b = np.nonzero(mask)
    y = rng.standard_normal(a.size)
    B = rng.standard_normal((n_in, k))
    return RowRegressions(a, b, y, n_out, n_in), B, mask


def lstsq_rows(reg: RowRegressions, B: np.ndarray) -> np.ndarray:
    out = []
    for i in range(reg.n_out):
        sel = reg.a == i
        out.append(np.linalg.lstsq(B[reg.b[sel]], reg.y[sel], rcond=None)[0])
    return np.array(out)


@pytest.mark.parametrize("seed", range(3))
def test_exact_solve_matches_numpy_lstsq_row_by_row(seed):
    reg, B, _ = small_regressions(seed)
    X = exact_solve(reg, B, MultiplyAdds())
    np.testing.assert_allclose(X, lstsq_rows(reg, B), rtol=1e-10, atol=1e-12)


def test_exact_solve_handles_a_row_with_fewer_than_k_observations():
    rng = np.random.default_rng(7)
    a = np.array([0, 0, 0, 0, 1])  # row 1 sees one entry: an underdetermined regression
    b = np.array([0, 1, 2, 3, 2])
    reg = RowRegressions(a, b, rng.standard_normal(5), 2, 4)
    B = rng.standard_normal((4, 3))
    X = exact_solve(reg, B, MultiplyAdds())
    np.testing.assert_allclose(X, lstsq_rows(reg, B), rtol=1e-10, atol=1e-12)


def test_design_and_transpose_are_adjoint():
    reg, B, _ = small_regressions(4)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((reg.n_out, B.shape[1]))
    r = rng.standard_normal(reg.nnz)
    c = MultiplyAdds()
    lhs = reg.apply(B, X, c) @ r
    rhs = np.sum(X * reg.apply_t(B, r, c))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    assert c.total == 2 * reg.nnz * B.shape[1]  # two passes of |Omega| k multiply-adds


def test_apply_in_chunks_matches_a_dense_computation():
    reg, B, _ = small_regressions(3, n_out=50, n_in=3000, k=2, p=0.9)  # several chunks
    X = np.random.default_rng(2).standard_normal((reg.n_out, 2))
    np.testing.assert_allclose(reg.apply(B, X, MultiplyAdds()), (X @ B.T)[reg.a, reg.b])


@pytest.mark.parametrize("seed", range(3))
def test_cg_reaches_exact_solution_in_k_steps(seed):
    # CG on a k x k SPD system terminates in at most k steps (up to rounding).
    reg, B, _ = small_regressions(seed)
    exact = lstsq_rows(reg, B)
    X = cg_solve(reg, B, np.zeros_like(exact), B.shape[1] + 2, MultiplyAdds())
    np.testing.assert_allclose(X, exact, rtol=1e-7, atol=1e-9)


def test_cg_is_warm_started_and_fixed_by_the_solution():
    reg, B, _ = small_regressions(1)
    exact = lstsq_rows(reg, B)
    X = cg_solve(reg, B, exact, 3, MultiplyAdds())
    np.testing.assert_allclose(X, exact, atol=1e-10)
    assert np.array_equal(cg_solve(reg, B, exact, 0, MultiplyAdds()), exact)


@pytest.mark.parametrize("seed", range(3))
def test_sketch_preconditioner_makes_rows_well_conditioned(seed):
    reg, B, _ = small_regressions(seed, n_in=200, k=4)
    B[:, 0] *= 100.0  # a badly scaled design: plain CG would struggle
    Rinv = sketch_preconditioner(reg, B, np.random.default_rng(seed), MultiplyAdds(), oversample=8)
    for i in range(reg.n_out):
        Ba = B[reg.b[reg.a == i]]
        assert np.linalg.cond(Ba) > 50
        assert np.linalg.cond(Ba @ Rinv[i]) < 10
    X = sketch_solve(reg, B, np.zeros((reg.n_out, 4)), 6, np.random.default_rng(0),
                     MultiplyAdds(), oversample=8)
    np.testing.assert_allclose(X, lstsq_rows(reg, B), rtol=1e-7, atol=1e-9)


def test_multiply_adds_are_counted_from_the_executed_operations():
    reg, B, _ = small_regressions(2, n_in=60, k=6)
    k, nnz, n = 6, reg.nnz, reg.n_out
    c = MultiplyAdds()
    exact_solve(reg, B, c)
    # right-hand sides, outer products, Gram matrices, n LU solves
    assert c.total == pytest.approx(nnz * k + reg.n_in * k * k + nnz * k * k
                                    + n * (k**3 / 3 + k * k))
    assert c.by_label["Gram"] == pytest.approx(reg.n_in * k * k + nnz * k * k)
    c1, c3 = MultiplyAdds(), MultiplyAdds()
    X0 = np.zeros((n, k))
    cg_solve(reg, B, X0, 1, c1)
    cg_solve(reg, B, X0, 3, c3)
    # per step: design and transpose (2 |Omega| k), two row dots and three axpys (5 n k)
    assert c3.total - c1.total == pytest.approx(2 * (2 * nnz * k + 5 * n * k))
    cs = MultiplyAdds()
    sketch_solve(reg, B, X0, 2, np.random.default_rng(0), cs, oversample=2)
    s = 2 * k
    assert cs.by_label["QR of the sketch"] == pytest.approx(n * (s * k * k - k**3 / 3))
    assert cs.by_label["sketch"] == pytest.approx(nnz * k + nnz)


def test_sketched_solver_cost_per_entry_is_linear_in_k_when_rows_are_long():
    # |Omega_a| >> k^2: the per-row k^3 work is lower order and the cost per observed entry
    # grows like k for the sketched solver, like k^2 for exact solves.
    per_entry = {}
    for k in (4, 16):
        reg, B, _ = small_regressions(0, n_out=4, n_in=3000, k=k, p=0.9)
        ce, cs = MultiplyAdds(), MultiplyAdds()
        exact_solve(reg, B, ce)
        sketch_solve(reg, B, None, 4, np.random.default_rng(0), cs)
        per_entry[k] = (ce.total / reg.nnz, cs.total / reg.nnz)
    exact_ratio = per_entry[16][0] / per_entry[4][0]
    sketch_ratio = per_entry[16][1] / per_entry[4][1]
    assert 12 < exact_ratio < 17  # about (16 / 4)^2
    assert 3.5 < sketch_ratio < 5  # about 16 / 4


@pytest.mark.parametrize("seed", range(3))
def test_sketch_and_solve_start_with_tolerance_reaches_lstsq(seed):
    reg, B, _ = small_regressions(seed, n_in=300, k=5)
    B[:, 1] *= 50.0
    history: list[float] = []
    X = sketch_solve(reg, B, None, 40, np.random.default_rng(seed), MultiplyAdds(),
                     tol=1e-12, history=history)
    np.testing.assert_allclose(X, lstsq_rows(reg, B), rtol=1e-8, atol=1e-9)
    assert history[-1] <= 1e-12 < history[0]
    assert len(history) <= 41


def test_count_sketch_hashes_each_row_into_its_own_block():
    reg, B, _ = small_regressions(1)
    S, target, sign = count_sketch(reg, 5, np.random.default_rng(0))
    assert S.shape == (reg.n_out * 5, reg.n_in) and S.nnz == reg.nnz
    np.testing.assert_array_equal(target // 5, reg.a)
    assert set(np.unique(sign)) <= {-1.0, 1.0}
    SB = (S @ B).reshape(reg.n_out, 5, -1)
    a = 2
    rows = reg.a == a
    dense = np.zeros((5, reg.nnz))
    dense[target[rows] % 5, np.flatnonzero(rows)] = sign[rows]
    np.testing.assert_allclose(SB[a], dense[:, rows] @ B[reg.b[rows]])


def test_problem_is_rank_k_incoherent_and_sampled_at_rate_p():
    pr = make_problem(200, 150, 4, 0.3, np.random.default_rng(0), condition=3.0)
    assert np.linalg.matrix_rank(pr.M) == 4
    s = np.linalg.svd(pr.M, compute_uv=False)[:4]
    assert s[0] / s[-1] == pytest.approx(3.0)
    assert pr.n_observed / pr.M.size == pytest.approx(0.3, abs=0.02)
    np.testing.assert_array_equal(pr.values, pr.M[pr.rows, pr.cols])
    assert 1.0 <= pr.mu < 10.0


def test_incoherence_extremes():
    assert incoherence(np.eye(6)[:, :2] + 0.0) == pytest.approx(3.0)  # m / k: spiky
    assert incoherence(np.ones((8, 1))) == pytest.approx(1.0)  # perfectly spread


def test_spectral_init_is_orthonormal_and_clips_spiky_rows():
    pr = make_problem(120, 100, 3, 0.4, np.random.default_rng(1))
    U0, V0 = spectral_init(pr, 3)
    np.testing.assert_allclose(U0.T @ U0, np.eye(3), atol=1e-10)
    assert relative_error(U0, V0, pr.M) < 0.9
    # A threshold 2 mu sqrt(k / m) at the median row norm clips about half of the rows to zero.
    norms = np.linalg.norm(spectral_init(pr, 3, clip_mu=1e6)[0], axis=1)  # nothing clipped
    mu = np.median(norms) / (2 * np.sqrt(3 / 120))
    U_clip, _ = spectral_init(pr, 3, clip_mu=mu)
    clipped = norms > np.median(norms)
    assert 50 <= clipped.sum() <= 70
    np.testing.assert_allclose(U_clip[clipped], 0.0, atol=1e-12)
    np.testing.assert_allclose(U_clip.T @ U_clip, np.eye(3), atol=1e-10)


def test_perturb_has_the_requested_relative_size():
    X = np.random.default_rng(0).standard_normal((30, 4))
    Y = perturb(X, 1e-3, np.random.default_rng(1))
    assert np.linalg.norm(Y - X) / np.linalg.norm(X) == pytest.approx(1e-3)
    assert perturb(X, 0.0, np.random.default_rng(1)) is X


@pytest.mark.parametrize("solver", ["exact", "cg", "sketch"])
def test_altmin_recovers_a_small_matrix(solver):
    pr = make_problem(80, 70, 2, 0.4, np.random.default_rng(3))
    tr = altmin(pr, solver=solver, iterations=15, steps=3)
    assert tr.errors[-1] < 1e-6
    assert tr.errors[-1] < tr.init_error
    assert len(tr.madds) == len(tr.seconds) == len(tr.solve_errors) == 15
    assert tr.solve_errors == tr.errors  # no injected error: the two records coincide
    assert relative_error(tr.U, tr.V, pr.M) == pytest.approx(tr.errors[-1], rel=1e-6, abs=1e-12)


def test_injected_error_leaves_a_proportional_floor():
    pr = make_problem(80, 70, 2, 0.4, np.random.default_rng(3))
    for delta in (1e-3, 1e-5):
        tr = altmin(pr, solver="exact", iterations=15, delta=delta)
        assert 0.3 * delta < tr.errors[-1] < 10 * delta
        # the error of the solve itself (before this half-step's injection) sits at the floor
        assert 0.3 * delta < tr.solve_errors[-1] < 10 * delta


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="k <= min"):
        make_problem(5, 5, 6, 0.5, rng)
    with pytest.raises(ValueError, match="sampling rate"):
        make_problem(5, 5, 2, 0.0, rng)
    with pytest.raises(ValueError, match="condition"):
        make_problem(5, 5, 2, 0.5, rng, condition=0.5)
    with pytest.raises(ValueError, match="m >= k"):
        incoherence(np.ones((2, 3)))
    pr = make_problem(20, 20, 2, 0.5, rng)
    with pytest.raises(ValueError, match="solver"):
        altmin(pr, solver="newton")
    with pytest.raises(ValueError, match="iterations"):
        altmin(pr, iterations=0)
    with pytest.raises(ValueError, match="steps"):
        altmin(pr, solver="cg", steps=0)
    with pytest.raises(ValueError, match="delta"):
        altmin(pr, delta=-1.0)
    with pytest.raises(ValueError, match="delta"):
        perturb(np.ones((2, 2)), -0.1, rng)
    with pytest.raises(ValueError, match="rank k"):
        spectral_init(pr, 20)
    reg, B, _ = small_regressions(0)
    with pytest.raises(ValueError, match="CG steps"):
        cg_solve(reg, B, np.zeros((reg.n_out, B.shape[1])), -1, MultiplyAdds())
    with pytest.raises(ValueError, match="oversample"):
        sketch_preconditioner(reg, B, rng, MultiplyAdds(), oversample=0)
    with pytest.raises(ValueError, match="tolerance"):
        cg_solve(reg, B, np.zeros((reg.n_out, B.shape[1])), 3, MultiplyAdds(), tol=0.0)
    with pytest.raises(ValueError, match="sketch size"):
        count_sketch(reg, 0, rng)
    with pytest.raises(ValueError, match="same length"):
        RowRegressions(np.array([0, 1]), np.array([0]), np.array([1.0, 2.0]), 2, 2)
    with pytest.raises(ValueError, match="indices must lie"):
        RowRegressions(np.array([0, 3]), np.array([0, 1]), np.array([1.0, 2.0]), 2, 2)
