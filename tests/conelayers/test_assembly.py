"""U assembled straight in CSC for diagonal cone Jacobians (zero and nonnegative cones)
against the general block assembly (sparse products and bmat), and the sparse LU's norm
estimate made only when it is needed."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import scipy.sparse as sp

from conelayers.cones.base import ConeJacobian
from conelayers.layer import LayerCore
from conelayers.linsolve import NullSpaceLU, estimate_norm
from conelayers.residual import ResidualMap, assemble_diagonal


def _program(kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, m = 120, 90
    x = cp.Variable(n)
    c, b = cp.Parameter(n), cp.Parameter(m)
    G = rng.standard_normal((m, n)) * (rng.random((m, n)) < 0.2)
    if kind == "lp":
        prob = cp.Problem(cp.Minimize(c @ x), [G @ x <= b, x >= -1, x <= 1])
    else:  # QP with equality rows (zero cone) and a P
        L = rng.standard_normal((n, n)) * (rng.random((n, n)) < 0.1)
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + c @ x),
                          [G @ x <= b, cp.sum(x) == 1])
    core = LayerCore(prob, [c, b], [x])
    theta, _, _ = core.parameter_values([rng.standard_normal(n), rng.uniform(0.5, 1, m)])
    return core, core.instances(theta)[0]


@pytest.mark.parametrize("kind", ["lp", "qp"])
@pytest.mark.parametrize("selection", ["lower", "upper"])
def test_diagonal_assembly_equals_the_general_one(kind, selection):
    core, program = _program(kind)
    residual = ResidualMap(program, core.cone)
    assert residual.n + residual.m > 200  # the sparse path
    z = np.random.default_rng(3).standard_normal(residual.n + residual.m)
    z[residual.n + 5] = 0.0  # a kink: the selection decides q there
    J = residual.cone.jacobian_dual(z[residual.n :], selection=selection, kink_tol=1e-9)
    q = J.diagonal()
    assert q is not None and set(np.unique(q)) <= {0.0, 1.0}
    A = program.A
    P = program.P if program.P is not None else sp.csc_matrix((residual.n, residual.n))
    Q = sp.diags(q)
    general = sp.bmat([[P, A.T @ Q], [-A, sp.identity(residual.m) - Q]], format="csc")
    fast = assemble_diagonal(program, q)
    assert fast.has_sorted_indices
    fast.sort_indices()  # a no-op if the claim holds; then compare entry by entry
    assert abs(fast - general).max() == 0.0
    general.eliminate_zeros()
    fast.eliminate_zeros()
    assert fast.nnz == general.nnz


def test_soc_jacobian_is_not_diagonal():
    x, c = cp.Variable(3), cp.Parameter(3)
    core = LayerCore(cp.Problem(cp.Minimize(c @ x), [cp.norm(x) <= 1]), [c], [x])
    J = core.cone.jacobian_dual(np.array([0.5, 1.0, 0.2, 0.1] + [0.0] * (core.cone.size - 4)))
    assert isinstance(J, ConeJacobian) and J.diagonal() is None


def test_sparse_lu_estimates_the_norm_only_when_needed(monkeypatch):
    """A regular sparse U is factorized without the norm estimate; an exactly singular
    one needs the shift δ = 1e-13‖U‖ and gets it."""
    import conelayers.linsolve as linsolve

    calls = []

    def counting(U, *args, **kwargs):
        calls.append(1)
        return estimate_norm(U, *args, **kwargs)

    monkeypatch.setattr(linsolve, "estimate_norm", counting)
    rng = np.random.default_rng(0)
    U = sp.random(300, 300, density=0.02, random_state=1, format="csc") + 3 * sp.identity(300)
    lu = NullSpaceLU(U.tocsc())
    assert not calls and lu.tiny_pivots == 0
    rhs = rng.standard_normal(300)
    w, _ = lu.solve(rhs)
    assert np.linalg.norm(U @ w - rhs) <= 1e-12 * np.linalg.norm(rhs)
    singular = U.tolil()
    singular[:, 7] = 0.0  # a zero column: SuperLU refuses it, the shifted LU serves
    NullSpaceLU(singular.tocsc())
    assert calls
