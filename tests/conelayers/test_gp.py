"""Log-log convex problems (gp=True): positive parameters enter through their logs and
variables come out through exp; values match CVXPY's own GP solve, and gradients match
central differences of CVXPY re-solves."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from conelayers.exceptions import ParameterError, ProblemError
from conelayers.layer import LayerCore


def _gp(order=("a", "b", "c")):
    x, y, z = (cp.Variable(pos=True, name=n) for n in "xyz")
    params = {"a": cp.Parameter(pos=True, name="a"), "b": cp.Parameter(pos=True, name="b"),
              "c": cp.Parameter(name="c")}
    a, b, c = params["a"], params["b"], params["c"]
    prob = cp.Problem(cp.Minimize(1 / (x * y * z)), [a * (x * y + x * z + y * z) <= b,
                                                     x >= y**c])
    return prob, [params[k] for k in order], [x, y, z]


VALUES = {"a": 2.0, "b": 1.0, "c": 0.5}


def _reference(prob, params, variables, values):
    for p, v in zip(params, values):
        p.value = v
    # SCS at 1e-10 (CVXPY's own GP path): Clarabel's exponential-cone answers carried a
    # ~1e-5 relative bias here (its 1e-14 solve ended 'optimal_inaccurate').
    prob.solve(gp=True, solver=cp.SCS, eps=1e-10, max_iters=1_000_000)
    return np.array([v.value for v in variables])


@pytest.mark.parametrize("order", [("a", "b", "c"), ("c", "b", "a")])
def test_gp_values_and_gradients(order):
    prob, params, variables = _gp(order)
    core = LayerCore(prob, params, variables, gp=True)
    values = [np.array(VALUES[k]) for k in order]
    result = core.forward(values, {"eps": 1e-10})
    outs = np.array([o[0] for o in result.outputs])
    np.testing.assert_allclose(outs, _reference(prob, params, variables, values), rtol=1e-8)
    grads = core.vjp(result, [np.ones(1)] * 3)
    h = 1e-4  # the reference is accurate to ~1e-11: noise ~1e-7, O(h²) truncation ~1e-8
    for i in range(3):
        up = [v + (h if j == i else 0.0) for j, v in enumerate(values)]
        down = [v - (h if j == i else 0.0) for j, v in enumerate(values)]
        fd = (_reference(prob, params, variables, up).sum()
              - _reference(prob, params, variables, down).sum()) / (2 * h)
        assert float(grads[i]) == pytest.approx(fd, rel=1e-4)
    # jvp agrees with vjp (dot-product test)
    d = [np.array(0.3), np.array(-0.2), np.array(0.1)]
    tangents = core.jvp(result, d)
    assert sum(float(t[0]) for t in tangents) == pytest.approx(
        sum(float(g * di) for g, di in zip(grads, d)), rel=1e-9)


def test_gp_errors():
    prob, params, variables = _gp()
    with pytest.raises(ProblemError, match="not DCP"):
        LayerCore(prob, params, variables)  # a GP needs gp=True
    core = LayerCore(prob, params, variables, gp=True)
    with pytest.raises(ParameterError, match="'a' is declared pos"):
        core.forward([np.array(-1.0), np.array(1.0), np.array(0.5)])
    x = cp.Variable(name="x")
    q = cp.Parameter(name="q")
    with pytest.raises(ProblemError, match="not DGP"):
        LayerCore(cp.Problem(cp.Minimize(x), [x >= q]), [q], [x], gp=True)
