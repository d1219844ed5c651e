"""The multiply-add counter charges each operation from its operands' sizes."""

import numpy as np
import pytest
import scipy.sparse as sp

from lib.linalg.op_count import MultiplyAdds


def test_dense_sparse_and_batched_products_are_charged_by_size():
    rng = np.random.default_rng(0)
    c = MultiplyAdds()
    A, B = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    np.testing.assert_allclose(c.matmul(A, B, "dense"), A @ B)
    assert c.by_label["dense"] == 3 * 4 * 5
    S = sp.random(6, 4, density=0.5, random_state=1, format="csr")
    np.testing.assert_allclose(c.matmul(S, B, "sparse"), S.toarray() @ B)
    assert c.by_label["sparse"] == S.nnz * 5
    Ab, xb = rng.standard_normal((7, 3, 4)), rng.standard_normal((7, 4, 1))
    np.testing.assert_allclose(c.matmul(Ab, xb, "batched"), Ab @ xb)
    assert c.by_label["batched"] == 7 * 3 * 4
    assert c.total == sum(c.by_label.values())


def test_vector_and_factorisation_counts():
    rng = np.random.default_rng(1)
    c = MultiplyAdds()
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(c.rowdot(X, Y), (X * Y).sum(axis=1))
    np.testing.assert_allclose(c.scale_add(np.arange(5.0), X, Y), Y + np.arange(5.0)[:, None] * X)
    assert c.total == 2 * X.size
    c = MultiplyAdds()
    A = rng.standard_normal((4, 12, 3))
    R = c.qr_r(A)
    np.testing.assert_allclose(np.abs(R), np.abs(np.linalg.qr(A, mode="r")))
    assert c.total == pytest.approx(4 * (12 * 9 - 9))
    G = A.transpose(0, 2, 1) @ A
    b = rng.standard_normal((4, 3))
    np.testing.assert_allclose(np.einsum("aij,aj->ai", G, c.solve(G, b)), b)
    Ginv = c.inverse(G)
    np.testing.assert_allclose(G @ Ginv, np.broadcast_to(np.eye(3), G.shape), atol=1e-10)
    assert c.by_label["solve"] == pytest.approx(4 * (9 + 9))
    assert c.by_label["inverse"] == pytest.approx(4 * 27)


def test_bad_inputs_raise():
    c = MultiplyAdds()
    with pytest.raises(ValueError, match="negative"):
        c.charge(-1.0, "x")
    with pytest.raises(ValueError, match="do not multiply"):
        c.matmul(sp.eye(3, format="csr"), np.ones((4, 2)))
    with pytest.raises(ValueError, match="equal shapes"):
        c.rowdot(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="at least as many rows"):
        c.qr_r(np.ones((2, 3)))
    with pytest.raises(ValueError, match="square"):
        c.solve(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="square"):
        c.inverse(np.ones((2, 3)))
