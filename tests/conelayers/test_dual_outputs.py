"""Dual variables as outputs (``constraint.dual_variables[k]``): values equal CVXPY's
dual values, and gradients through them match central finite differences of CVXPY
re-solves, for every cone kind."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from conelayers.layer import LayerCore


def _problem(kind: str):
    x = cp.Variable(3, name="x")
    p = cp.Parameter(3, name="p")
    obj = cp.sum_squares(x - p)
    if kind == "equality":
        con = cp.sum(x) == 1
    elif kind == "inequality":
        con = x >= 0.5
    elif kind == "soc":
        con = cp.SOC(cp.Constant(1.0), x)
    elif kind == "exp":
        con = cp.ExpCone(x[0], x[1] + 2, x[2] + 3)
        obj = cp.sum_squares(x - p) + 5 * x[2]
    elif kind == "psd":
        X = cp.Variable((2, 2), symmetric=True, name="X")
        con = X >> cp.reshape(p[:3] @ np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]),
                              (2, 2), order="F")
        obj = cp.sum_squares(X) + cp.sum_squares(x - p)
    else:
        raise ValueError(kind)
    return cp.Problem(cp.Minimize(obj), [con]), p, con


VALUES = {
    "equality": [0.2, 0.9, -0.4],
    "inequality": [0.1, 0.9, -0.4],
    "soc": [1.0, 0.8, -0.4],
    "exp": [0.3, -1.0, 0.5],
    "psd": [1.0, 0.4, -0.8],
}


def _reference(prob, p, con, value):
    p.value = np.asarray(value, dtype=float)
    prob.solve(solver=cp.SCS, eps_abs=1e-12, eps_rel=1e-12, max_iters=200_000)
    # CVXPY may store a dual value with an extra unit axis; compare in the variable's shape.
    return [np.reshape(np.asarray(d.value, dtype=float), d.shape) for d in con.dual_variables]


@pytest.mark.parametrize("kind", list(VALUES))
def test_dual_values_and_gradients(kind):
    prob, p, con = _problem(kind)
    core = LayerCore(prob, [p], list(con.dual_variables))
    value = np.asarray(VALUES[kind])
    result = core.forward([value], {"eps": 1e-10})
    ref = _reference(prob, p, con, value)
    for out, r in zip(result.outputs, ref):
        np.testing.assert_allclose(out[0], r, atol=1e-7)
    assert any(np.abs(r).max() > 1e-2 for r in ref), "the constraint should be active"
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(r.shape) for r in ref]
    (grad,) = core.vjp(result, [w[None] for w in weights])
    d = rng.standard_normal(3)
    h = 1e-4

    def loss(v):
        return sum(float((w * r).sum()) for w, r in zip(weights, _reference(prob, p, con, v)))

    fd = (loss(value + h * d) - loss(value - h * d)) / (2 * h)
    assert float(grad @ d) == pytest.approx(fd, rel=1e-4, abs=1e-7)
