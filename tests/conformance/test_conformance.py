"""One conformance suite for every framework: the core NumPy API (through the tiny
``NumpyLayer`` adapter), PyTorch and JAX run the same tests through the ``framework``
fixture (``adapters.py``), so the three layers are held to one contract:

- every zoo problem: outputs equal an independent solver's, and gradients (reverse mode)
  and tangents (forward mode: ``LayerCore.jvp``, ``torch.func.jvp``, ``jax.jvp``) equal
  central finite differences of independent re-solves (``tests.conftest``), relative
  error ≤ 1e-4 at ``eps`` 1e-9. The reference is computed once per problem (same
  weights and directions for every framework);
- broadcasting: batched and unbatched parameters mix, outputs and gradients equal
  per-instance calls, an unbatched parameter's gradient is summed over the batch, and a
  batch of one keeps its batch axis;
- gradients accumulate over two layers (and two calls of one layer) sharing parameters;
- ``solver_args`` reach SCS (and ``refine`` reaches conelayers), from the constructor and
  from the call;
- calls that ask for no derivative set none up and run no trust checks;
- float32 in, float32 out, computed in float64 (JAX also without ``jax_enable_x64``,
  where it warns ``Float32Warning``);
- dual variables as outputs, ``gp=True``;
- every error message: count, shape, dimensionality, batch sizes, empty batch, NaN/Inf,
  sign attributes, dtypes, infeasible/unbounded instances, construction errors.

Framework-specific behaviour stays in ``tests/torch`` and ``tests/jax`` (e.g.
``jax.jit(jax.grad(...))`` and ``jax.vmap`` against unjitted/unbatched calls:
``tests/jax/test_jax_layer.py::test_jit_grad_equals_grad`` and
``::test_vmap_equals_per_instance_calls``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings

import cvxpy as cp
import numpy as np
import pytest

import conelayers.layer as core_module
from conelayers.exceptions import (
    ConelayersError,
    FailedInstanceWarning,
    InaccurateSolutionWarning,
    InfeasibleError,
    ParameterError,
    ProblemError,
    UnboundedError,
)
from tests import zoo
from tests.conftest import ZOO_NAMES, central_difference, random_like

TIGHT = {"eps": 1e-9}
RTOL_FD = 1e-4


def _inner(arrays, others) -> float:
    return sum(float(np.sum(np.asarray(a, dtype=float) * np.asarray(b, dtype=float)))
               for a, b in zip(arrays, others) if a is not None and b is not None)


def _assert_fd(analytic: float, fd: float, label: str = "") -> None:
    assert abs(analytic - fd) <= RTOL_FD * max(abs(fd), 1e-3), (label, analytic, fd)


def _layer(framework, z: zoo.ZooProblem, **kw):
    return framework.make_layer(z.problem, z.parameters, z.variables, **kw)


@functools.cache
def _reference(name: str):
    """(reference outputs, weights, directions, central difference of Σ⟨w, out⟩ along the
    directions) for a zoo problem: computed once and shared by every framework."""
    z = zoo.make(name)
    outs = zoo.reference_solution(z, z.values)
    rng = np.random.default_rng(11)
    weights = random_like(rng, outs)
    directions = random_like(rng, z.values)
    return outs, weights, directions, central_difference(z, weights, directions)


# -- every zoo problem against finite differences --------------------------------------------------


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_gradient_matches_central_differences(framework, name):
    z = zoo.make(name)
    ref, weights, directions, fd = _reference(name)
    layer = _layer(framework, z)
    outs, grads = framework.grad(layer, z.values, weights, solver_args=TIGHT)
    for out, r in zip(outs, ref):
        assert out.shape == r.shape
        np.testing.assert_allclose(out, r, rtol=0, atol=1e-6 * max(1.0, np.abs(r).max()))
    for g, v in zip(grads, z.values):
        assert g.shape == np.shape(v) and g.dtype == np.float64
    _assert_fd(_inner(grads, directions), fd, name)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_forward_mode_matches_central_differences(framework, name):
    """⟨w, J d⟩ from forward mode (torch: ``torch.func.jvp``) equals the same central
    difference as the reverse-mode test."""
    z = zoo.make(name)
    ref, weights, directions, fd = _reference(name)
    layer = _layer(framework, z)
    outs, tangents = framework.jvp(layer, z.values, directions, solver_args=TIGHT)
    for out, t, r in zip(outs, tangents, ref):
        assert out.shape == t.shape == r.shape
    _assert_fd(_inner(weights, tangents), fd, name)


@functools.cache
def _fd_jacobian(name: str, h: float = 1e-4) -> list[np.ndarray]:
    """Per parameter, the (all output entries) × (parameter entries) Jacobian by central
    differences of independent re-solves, entry by entry."""
    z = zoo.make(name)

    def flat(values):
        return np.concatenate([o.ravel() for o in zoo.reference_solution(z, values)])

    blocks = []
    for i, v in enumerate(z.values):
        columns = []
        for k in range(np.size(v)):
            step = np.zeros(np.size(v))
            step[k] = h
            step = step.reshape(np.shape(v))
            plus = [u + step if j == i else u for j, u in enumerate(z.values)]
            minus = [u - step if j == i else u for j, u in enumerate(z.values)]
            columns.append((flat(plus) - flat(minus)) / (2 * h))
        blocks.append(np.stack(columns, axis=1))
    return blocks


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_full_jacobian_matches_central_differences(framework, name):
    """Every entry of the Jacobian, one reverse pass per output entry (so the zero
    blocks between the instances of a batch are checked too)."""
    z = zoo.make(name)
    ref = _reference(name)[0]
    fd = _fd_jacobian(name)
    layer = _layer(framework, z)
    sizes = [r.size for r in ref]
    rows = []
    for e in range(sum(sizes)):
        unit = np.zeros(sum(sizes))
        unit[e] = 1.0
        weights = np.split(unit, np.cumsum(sizes)[:-1])
        weights = [w.reshape(r.shape) for w, r in zip(weights, ref)]
        _, grads = framework.grad(layer, z.values, weights, solver_args=TIGHT)
        rows.append([g.ravel() for g in grads])
    for i, block in enumerate(fd):
        rev = np.stack([r[i] for r in rows])
        scale = max(np.abs(block).max(), 1e-3)
        assert np.abs(rev - block).max() <= RTOL_FD * scale, (name, i)


def test_forward_mode_with_a_fixed_parameter(framework):
    """A None tangent (the parameter does not move; torch: ``forward_ad`` with one dual
    input) equals a zero direction."""
    z = zoo.make("batched_qp")
    _, weights, directions, _ = _reference("batched_qp")
    layer = _layer(framework, z)
    _, tangents = framework.jvp(layer, z.values, [directions[0], None], solver_args=TIGHT)
    fd = central_difference(z, weights, [directions[0], np.zeros_like(z.values[1])])
    _assert_fd(_inner(weights, tangents), fd)
    _, tangents = framework.jvp(layer, z.values, [None, directions[1]], solver_args=TIGHT)
    fd = central_difference(z, weights, [np.zeros_like(z.values[0]), directions[1]])
    _assert_fd(_inner(weights, tangents), fd)


def test_functional_reverse_mode_equals_grad(framework, request):
    """torch.func.grad / jax.vjp give the same gradient as backward() / jax.grad."""
    z = zoo.make("batched_qp")
    _, weights, _, _ = _reference("batched_qp")
    layer = _layer(framework, z)
    _, grads = framework.grad(layer, z.values, weights, solver_args=TIGHT)
    functional = framework.functional_grad(layer, z.values, weights, solver_args=TIGHT)
    for g, f in zip(grads, functional):
        np.testing.assert_allclose(f, g, rtol=0, atol=1e-10)


def test_second_order_derivatives_raise_a_clear_error(framework, request):
    """The derivative is computed outside the autodiff graph, so a second derivative
    (grad of grad, Hessian-vector product) must raise, not silently drop the layer's
    second-order term."""
    if framework.name == "numpy":
        pytest.skip("the core API has no second-order entry point")
    z = zoo.make("socp")
    layer = _layer(framework, z)
    with pytest.raises((ConelayersError, RuntimeError),
                       match="first-order derivatives only|differentiate twice"):
        framework.second_order(layer, z.values)


# -- broadcasting ----------------------------------------------------------------------------------


def test_broadcast_parameters_equal_per_instance_calls(framework):
    """A batched q with an unbatched h: outputs and gradients equal per-instance calls,
    h's gradient is their sum, and tiling h by hand changes nothing."""
    z = zoo.make("batched_qp")
    q, h = z.values
    B, n = q.shape
    w = np.random.default_rng(1).standard_normal((B, n))
    layer = _layer(framework, z)
    (x,), (gq, gh) = framework.grad(layer, [q, h], [w], solver_args=TIGHT)
    assert x.shape == (B, n) and gq.shape == q.shape and gh.shape == h.shape
    gh_sum = np.zeros_like(h)
    for k in range(B):
        (xk,), (gqk, ghk) = framework.grad(layer, [q[k], h], [w[k]], solver_args=TIGHT)
        assert xk.shape == (n,) and gqk.shape == (n,)
        np.testing.assert_allclose(x[k], xk, rtol=0, atol=1e-9)
        np.testing.assert_allclose(gq[k], gqk, rtol=0, atol=1e-8)
        gh_sum += ghk
    np.testing.assert_allclose(gh, gh_sum, rtol=0, atol=1e-8)
    (xt,), (gqt, ght) = framework.grad(layer, [q, np.tile(h, (B, 1))], [w], solver_args=TIGHT)
    assert ght.shape == (B, h.size)
    np.testing.assert_allclose(xt, x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(gqt, gq, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ght.sum(axis=0), gh, rtol=0, atol=1e-8)


def test_unbatched_call_has_no_batch_axis_and_batch_of_one_keeps_it(framework):
    z = zoo.make("qp")
    q, h = z.values
    n = q.size
    w = np.random.default_rng(2).standard_normal(n)
    layer = _layer(framework, z)
    (x,), (gq, gh) = framework.grad(layer, [q, h], [w], solver_args=TIGHT)
    assert x.shape == (n,)
    for values in ([q[None], h], [q, h[None]], [q[None], h[None]]):
        (x1,), grads = framework.grad(layer, values, [w[None]], solver_args=TIGHT)
        assert x1.shape == (1, n)
        assert [g.shape for g in grads] == [v.shape for v in values]
        np.testing.assert_allclose(x1[0], x, rtol=0, atol=1e-9)
        np.testing.assert_allclose(grads[0].reshape(q.shape), gq, rtol=0, atol=1e-8)
        np.testing.assert_allclose(grads[1].reshape(h.shape), gh, rtol=0, atol=1e-8)


# -- shared parameters -----------------------------------------------------------------------------


def _second_layer_problem(n: int) -> zoo.ZooProblem:
    """min ‖y − q‖² + ½‖Dy‖² s.t. Σy ≤ 0.5: a second problem taking a q of the QP's shape."""
    rng = np.random.default_rng(7)
    D = rng.standard_normal((n, n))
    q = cp.Parameter(n)
    y = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - q) + 0.5 * cp.sum_squares(D @ y)),
                      [cp.sum(y) <= 0.5])
    return zoo.ZooProblem("second", prob, [q], [y], [np.zeros(n)])


def test_gradients_accumulate_over_layers_sharing_parameters(framework):
    """loss = ⟨w1, QP(q, h)⟩ + ⟨w2, QP(q2, h)⟩ + ⟨w3, second(q)⟩: q is shared by two
    layers, h by two calls of one layer. Gradients equal the sum of the single-term
    gradients, and the directional derivative equals central differences."""
    zq = zoo.make("qp")
    q, h = zq.values
    rng = np.random.default_rng(3)
    q2 = q + 0.5 * rng.standard_normal(q.size)
    z2 = _second_layer_problem(q.size)
    qp_layer, second = _layer(framework, zq), _layer(framework, z2)
    w1, w2, w3 = (rng.standard_normal(q.size) for _ in range(3))
    values = [q, h, q2]
    terms = [(qp_layer, (0, 1), [w1]), (qp_layer, (2, 1), [w2]), (second, (0,), [w3])]
    outs, grads = framework.grad_terms(terms, values, solver_args=TIGHT)
    assert [o[0].shape for o in outs] == [q.shape] * 3
    singles = [framework.grad_terms([t], values, solver_args=TIGHT)[1] for t in terms]
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, sum(s[i] for s in singles), rtol=0, atol=1e-8)
    assert np.abs(singles[0][0]).max() > 1e-3 and np.abs(singles[2][0]).max() > 1e-3

    d = random_like(rng, values)
    fd = (
        central_difference(dataclasses.replace(zq, values=[q, h]), [w1], [d[0], d[1]])
        + central_difference(dataclasses.replace(zq, values=[q2, h]), [w2], [d[2], d[1]])
        + central_difference(dataclasses.replace(z2, values=[q]), [w3], [d[0]])
    )
    _assert_fd(_inner(grads, d), fd)


# -- solver arguments ------------------------------------------------------------------------------


def test_solver_args_reach_scs(framework):
    """max_iters=1 without refinement changes the answer (and warns, naming the
    instance); refinement (conelayers' own key) recovers it; the constructor's
    solver_args are the defaults a call's solver_args override."""
    z = zoo.make("least_squares")
    rough_args = {"max_iters": 1, "refine": False}
    layer = _layer(framework, z)
    (tight,) = framework.call(layer, *z.values, solver_args={"eps": 1e-10})
    with pytest.warns(InaccurateSolutionWarning, match=r"instance 0: SCS status .* after 1 "):
        (rough,) = framework.call(layer, *z.values, solver_args=rough_args)
    assert np.abs(rough - tight).max() > 1e-2
    with warnings.catch_warnings():
        warnings.simplefilter("error", InaccurateSolutionWarning)
        (refined,) = framework.call(layer, *z.values, solver_args={"max_iters": 1})
    np.testing.assert_allclose(refined, tight, rtol=0, atol=1e-9)

    rough_layer = _layer(framework, z, solver_args=rough_args)
    with pytest.warns(InaccurateSolutionWarning, match="instance 0"):
        (rough2,) = framework.call(rough_layer, *z.values)
    np.testing.assert_array_equal(rough2, rough)
    (overridden,) = framework.call(
        rough_layer, *z.values, solver_args={"max_iters": 100_000, "refine": True}
    )
    np.testing.assert_allclose(overridden, tight, rtol=0, atol=1e-9)


# -- no derivative work without a derivative -------------------------------------------------------


def test_calls_without_derivatives_do_no_derivative_work(framework, monkeypatch):
    z = zoo.make("batched_qp")
    layer = _layer(framework, z)
    expected = framework.call(layer, *z.values)
    calls = []

    def forbidden(name):
        def fail(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called without a derivative being requested")

        return fail

    monkeypatch.setattr(core_module, "SolutionDerivative", forbidden("SolutionDerivative"))
    monkeypatch.setattr(core_module, "check_instance", forbidden("check_instance"))
    for label, call in framework.no_derivative_calls():
        outs = call(layer, z.values)
        assert not calls, (label, calls)
        for o, e in zip(outs, expected):
            np.testing.assert_allclose(o, e, rtol=0, atol=1e-12)
    # Control: asking for a gradient does reach the patched names.
    with pytest.raises(Exception):  # noqa: B017 (AssertionError, or JAX's wrapper of it)
        framework.grad(layer, z.values, [np.ones_like(expected[0])])
    assert calls


# -- dtypes ----------------------------------------------------------------------------------------


def test_float32_in_float32_out_computed_in_float64(framework):
    """float32 values: outputs and gradients are float32 and equal the float64 results
    on the same (float32-representable) values up to float32 rounding, so the
    computation ran in float64. (JAX without x64 also warns Float32Warning, once.)"""
    from conelayers.exceptions import ConelayersWarning

    z = zoo.make("batched_qp")
    v32 = [v.astype(np.float32) for v in z.values]
    v64 = [v.astype(np.float64) for v in v32]
    w = np.random.default_rng(4).standard_normal(z.values[0].shape)
    (x64,), g64 = framework.grad(_layer(framework, z), v64, [w], solver_args=TIGHT)
    for label, mode, expected_warning in framework.float32_modes():
        with mode():
            layer = _layer(framework, z)  # fresh: JAX warns once per layer
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                (x32,), g32 = framework.grad(layer, v32, [w.astype(np.float32)],
                                             solver_args=TIGHT)
                (x32b,) = framework.call(layer, *v32, solver_args=TIGHT)
        ours = [c for c in caught if issubclass(c.category, ConelayersWarning)]
        if expected_warning is None:
            assert not ours, (label, [str(c.message) for c in ours])
        else:
            assert [c.category for c in ours] == [expected_warning], label
            assert "jax_enable_x64" in str(ours[0].message)
        assert x32.dtype == x32b.dtype == np.float32, label
        assert all(g.dtype == np.float32 for g in g32), label
        scale = max(1.0, np.abs(x64).max())
        np.testing.assert_allclose(x32, x64, rtol=0, atol=2e-7 * scale, err_msg=label)
        np.testing.assert_array_equal(x32b, x32)
        for g, r in zip(g32, g64):
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-6 * max(1.0, np.abs(r).max()),
                                       err_msg=label)


# -- dual variables and gp=True --------------------------------------------------------------------


def _dual_problem() -> tuple[zoo.ZooProblem, list]:
    """Projection of p onto {x ≥ 0.5, ‖x‖ ≤ r}, outputs x and the dual variables of both
    constraints (nonneg and second-order cone); p batched (2 instances), r broadcast."""
    x = cp.Variable(3, name="x")
    p = cp.Parameter(3, name="p")
    r = cp.Parameter(nonneg=True, name="r")
    lower = x >= 0.5
    ball = cp.SOC(r, x)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [lower, ball])
    outputs = [x, lower.dual_variables[0], *ball.dual_variables]
    values = [np.array([[0.1, 2.0, -0.4], [0.3, 1.7, -0.6]]), np.array(1.5)]
    return zoo.ZooProblem("duals", prob, [p, r], outputs, values, fd_solver="SCS"), [lower, ball]


def test_dual_variable_outputs(framework):
    z, _ = _dual_problem()
    # CVXPY may store a dual value with an extra unit axis: compare in the variable's shape.
    raw = zoo.reference_solution(z, z.values)
    ref = [r.reshape((2,) + v.shape) for r, v in zip(raw, z.variables)]
    layer = _layer(framework, z)
    rng = np.random.default_rng(5)
    weights = [None] + random_like(rng, ref[1:])  # the loss sees only the duals
    outs, grads = framework.grad(layer, z.values, weights, solver_args=TIGHT)
    for out, r in zip(outs, ref):
        assert out.shape == r.shape
        np.testing.assert_allclose(out, r, rtol=0, atol=1e-7)
    assert all(np.abs(r).max() > 1e-2 for r in ref[1:]), "both constraints should be active"
    assert grads[1].shape == ()  # r is broadcast: its gradient is summed over the batch
    directions = random_like(rng, z.values)
    fd_weights = [np.zeros_like(raw[0])]
    fd_weights += [w.reshape(r.shape) for w, r in zip(weights[1:], raw[1:])]
    fd = central_difference(z, fd_weights, directions)
    _assert_fd(_inner(grads, directions), fd, "reverse")
    _, tangents = framework.jvp(layer, z.values, directions, solver_args=TIGHT)
    _assert_fd(_inner(weights[1:], tangents[1:]), fd, "forward")


def _gp_problem():
    x, y, w = (cp.Variable(pos=True, name=n) for n in "xyw")
    a, b = cp.Parameter(pos=True, name="a"), cp.Parameter(pos=True, name="b")
    c = cp.Parameter(name="c")
    prob = cp.Problem(cp.Minimize(1 / (x * y * w)),
                      [a * (x * y + x * w + y * w) <= b, x >= y**c])
    return prob, [a, b, c], [x, y, w]


def _gp_reference(prob, params, variables, values) -> list[np.ndarray]:
    """CVXPY's own GP solve (SCS at 1e-10), instance by instance over a's batch."""
    outs = []
    for a in np.atleast_1d(values[0]):
        for p, v in zip(params, [a, *values[1:]]):
            p.value = float(v)
        prob.solve(gp=True, solver=cp.SCS, eps=1e-10, max_iters=1_000_000)
        outs.append([float(v.value) for v in variables])
    return [np.array(col) for col in zip(*outs)]


def test_gp_layer(framework):
    """gp=True with a batched positive parameter: values equal CVXPY's GP solve, and
    reverse and forward derivatives equal central differences of CVXPY re-solves."""
    prob, params, variables = _gp_problem()
    values = [np.array([2.0, 1.5]), np.array(1.0), np.array(0.5)]
    layer = framework.make_layer(prob, params, variables, gp=True)
    ref = _gp_reference(prob, params, variables, values)
    rng = np.random.default_rng(6)
    weights = random_like(rng, ref)
    directions = [rng.standard_normal(2), np.array(0.3), np.array(-0.2)]
    outs, grads = framework.grad(layer, values, weights, solver_args={"eps": 1e-10})
    for out, r in zip(outs, ref):
        assert out.shape == (2,)
        np.testing.assert_allclose(out, r, rtol=1e-8)
    assert [g.shape for g in grads] == [(2,), (), ()]

    def loss(vals):
        return _inner(weights, _gp_reference(prob, params, variables, vals))

    h = 1e-4
    fd = (loss([v + h * d for v, d in zip(values, directions)])
          - loss([v - h * d for v, d in zip(values, directions)])) / (2 * h)
    _assert_fd(_inner(grads, directions), fd, "reverse")
    _, tangents = framework.jvp(layer, values, directions, solver_args={"eps": 1e-10})
    _assert_fd(_inner(weights, tangents), fd, "forward")


# -- errors ----------------------------------------------------------------------------------------


def _ls_problem():
    m, n = 4, 3
    A = cp.Parameter((m, n), name="A")
    b = cp.Parameter(m, name="b")
    lam = cp.Parameter(nonneg=True, name="lam")
    x = cp.Variable(n, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + lam * cp.sum_squares(x)))
    A0 = np.random.default_rng(0).standard_normal((m, n))
    return prob, [A, b, lam], [x], (A0, np.zeros(m), np.array(1.0))


def _nan_b(A, b, lam):
    return [A, np.full_like(b, np.nan), lam]


# name: (values from the valid (A, b, lam), regex, error on the grad path too)
ERROR_CASES = {
    "wrong count": (lambda A, b, lam: [A, b], r"A, b, lam\).*got 2", True),
    "wrong shape": (lambda A, b, lam: [A, np.zeros(2 * b.size), lam],
                    r"invalid parameter shape for 'b': expected \(4,\) or \(batch, \*\(4,\)\), "
                    r"got \(8,\)", True),
    "wrong dimensionality": (lambda A, b, lam: [A, np.zeros((3, 3, b.size)), lam],
                             r"invalid parameter dimensionality for 'b'", True),
    "inconsistent batch sizes": (
        lambda A, b, lam: [np.stack([A] * 5), np.zeros((4, b.size)), lam],
        r"inconsistent batch sizes: parameter 'b' has batch size 4, an earlier parameter "
        r"has 5", True),
    "empty batch": (lambda A, b, lam: [np.zeros((0,) + A.shape), b, lam], r"empty batch", True),
    "NaN": (_nan_b, r"parameter 'b' contains NaN or Inf", True),
    "Inf": (lambda A, b, lam: [np.where(A > 0, np.inf, A), b, lam],
            r"parameter 'A' contains NaN or Inf", True),
    "NaN in one instance": (
        lambda A, b, lam: [A, np.stack([b, np.full_like(b, np.nan)]), lam],
        r"parameter 'b' contains NaN", True),
    "nonneg violated": (lambda A, b, lam: [A, b, -lam],
                        r"parameter 'lam' is declared nonneg but has negative entries "
                        r"\(min -1\)", True),
    "integer dtype": (lambda A, b, lam: [A, b.astype(np.int32), lam],
                      r"parameter 'b': expected a floating-point", False),
    # (Two wordings: "parameters mix floating dtypes (...)", and the newer message naming
    # the parameters, "parameter 'b' is float32 but 'A' is float64: ...".)
    "mixed float dtypes": (lambda A, b, lam: [A, b.astype(np.float32), lam],
                           r"mix floating dtypes|parameter 'b' is (torch\.)?float32 but 'A' is",
                           True),
}


@pytest.mark.parametrize("path", ["call", "grad"])
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_parameter_errors_name_the_parameter(framework, case, path):
    make_values, pattern, on_grad_path = ERROR_CASES[case]
    if case == "mixed float dtypes" and not framework.rejects_mixed_dtypes:
        pytest.skip("the core has no dtype policy: it computes in float64")
    if path == "grad" and not on_grad_path:
        pytest.skip("integer arrays cannot be differentiated in the frameworks")
    prob, params, variables, valid = _ls_problem()
    layer = framework.make_layer(prob, params, variables)
    values = make_values(*valid)
    with pytest.raises(ParameterError, match=pattern):
        if path == "call":
            framework.call_raw(layer, *values)
        else:
            framework.grad(layer, values, [None])


@pytest.mark.parametrize("path", ["call", "grad"])
def test_infeasible_and_unbounded_name_the_instances(framework, path):
    x = cp.Variable(name="x")
    p = cp.Parameter(name="p")
    infeasible = framework.make_layer(cp.Problem(cp.Minimize(x), [x >= p, x <= 0]), [p], [x])
    unbounded = framework.make_layer(cp.Problem(cp.Minimize(x), [x <= p]), [p], [x])

    def run(layer, values):
        if path == "call":
            return framework.call(layer, *values)
        return framework.grad(layer, values, [np.ones_like(values[0])])

    with pytest.raises(InfeasibleError, match=r"instance 1: infeasible.*instance 3") as info:
        run(infeasible, [np.array([-1.0, 1.0, -2.0, 2.0])])
    assert set(info.value.failures) == {1, 3}
    with pytest.raises(InfeasibleError, match=r"instance 0: infeasible"):
        run(infeasible, [np.array(1.0)])
    with pytest.raises(UnboundedError, match=r"instance 0: unbounded"):
        run(unbounded, [np.array([1.0])])


def test_on_failure_nan_keeps_the_other_instances(framework):
    """solver_args={"on_failure": "nan"}: failed instances give NaN outputs and zero
    gradients/tangents, the others their values, with a FailedInstanceWarning."""
    x = cp.Variable(name="x")
    p = cp.Parameter(name="p")
    prob = cp.Problem(cp.Minimize((x - 2 * p) ** 2), [x >= p, x <= 0])
    layer = framework.make_layer(prob, [p], [x])
    values = [np.array([-1.0, 1.0, -2.0, 2.0])]
    args = {"on_failure": "nan"}
    with pytest.warns(FailedInstanceWarning, match=r"instance 1: infeasible.*instance 3"):
        (out,), (grad,) = framework.grad(layer, values, [np.ones(4)], solver_args=args)
    np.testing.assert_allclose(out, [-1.0, np.nan, -2.0, np.nan], atol=1e-8)
    np.testing.assert_allclose(grad, [1.0, 0.0, 1.0, 0.0], atol=1e-8)
    with pytest.warns(FailedInstanceWarning):
        _, (tangent,) = framework.jvp(layer, values, [np.ones(4)], solver_args=args)
    np.testing.assert_allclose(tangent, [1.0, 0.0, 1.0, 0.0], atol=1e-8)


def test_construction_errors(framework):
    x = cp.Variable(2, name="x")
    p = cp.Parameter(2, name="p")
    q = cp.Parameter(name="q")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)))
    with pytest.raises(ProblemError, match="must exactly match"):
        framework.make_layer(prob, [], [x])
    with pytest.raises(ProblemError, match="not DPP"):
        framework.make_layer(cp.Problem(cp.Minimize(cp.sum_squares(x - p * q))), [p, q], [x])
    with pytest.raises(ProblemError, match=re.escape("not DCP")):
        framework.make_layer(cp.Problem(cp.Maximize(cp.sum_squares(x - p))), [p], [x])
