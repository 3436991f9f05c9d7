"""svec/smat follow SCS's convention, verified against SCS, CVXPY and diffcp."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import scipy.sparse as sp
import scs
from diffcp import cones as dcones

from conelayers.cones import PsdCones, order_from_svec_size, smat, svec, svec_size


def _sym(rng: np.random.Generator, n: int) -> np.ndarray:
    M = rng.standard_normal((n, n))
    return M + M.T


def test_explicit_layout() -> None:
    """Lower triangle, column by column, off-diagonals × √2."""
    X = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0], [3.0, 5.0, 6.0]])
    r = np.sqrt(2.0)
    np.testing.assert_allclose(svec(X), [1.0, 2 * r, 3 * r, 4.0, 5 * r, 6.0])


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_roundtrip_isometry_batch(n: int) -> None:
    rng = np.random.default_rng(n)
    X, Y = _sym(rng, n), _sym(rng, n)
    np.testing.assert_allclose(smat(svec(X)), X, atol=1e-15)
    assert svec(X).shape == (svec_size(n),)
    np.testing.assert_allclose(svec(X) @ svec(Y), np.trace(X @ Y), atol=1e-12)
    batch = np.stack([X, Y, X - Y]).reshape(3, 1, n, n)
    np.testing.assert_allclose(smat(svec(batch)), batch, atol=1e-15)
    assert order_from_svec_size(svec_size(n)) == n


def test_order_from_svec_size_rejects() -> None:
    assert order_from_svec_size(0) == 0
    for k in (2, 4, 5, 7):
        with pytest.raises(ValueError):
            order_from_svec_size(k)
    with pytest.raises(ValueError):
        svec(np.zeros((2, 3)))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_matches_diffcp(n: int) -> None:
    rng = np.random.default_rng(10 + n)
    X = _sym(rng, n)
    np.testing.assert_allclose(svec(X), dcones.vec_symm(X), atol=1e-15)
    np.testing.assert_allclose(smat(svec(X)), dcones.unvec_symm(svec(X), n), atol=1e-15)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_matches_scs(n: int) -> None:
    """SCS itself: min ½‖x − v‖² s.t. −x + s = 0, s ∈ S^n_+ returns our projection, so SCS
    reads v in our layout (a row-major or unscaled layout gives a different answer)."""
    rng = np.random.default_rng(20 + n)
    k = svec_size(n)
    v = svec(_sym(rng, n))
    data = {"P": sp.eye(k, format="csc"), "A": -sp.eye(k, format="csc"), "b": np.zeros(k), "c": -v}
    sol = scs.solve(
        data, {"s": [n]}, eps_abs=1e-11, eps_rel=1e-11, max_iters=100_000, verbose=False
    )
    assert sol["info"]["status"] == "solved"
    np.testing.assert_allclose(sol["x"], PsdCones([n]).project_dual(v), atol=1e-8)


@pytest.mark.parametrize("n", [2, 3])
def test_matches_cvxpy_scs_interface(n: int) -> None:
    """CVXPY's SCS data for X − M ⪰ 0 (X = 0 feasible point) has b = svec(−M)."""
    rng = np.random.default_rng(30 + n)
    M = _sym(rng, n)
    X = cp.Variable((n, n), symmetric=True)
    prob = cp.Problem(cp.Minimize(cp.trace(X)), [X - M >> 0])
    data, _, _ = prob.get_problem_data(cp.SCS)
    assert data["dims"].psd == [n]
    np.testing.assert_allclose(data["b"], svec(-M), atol=1e-14)
