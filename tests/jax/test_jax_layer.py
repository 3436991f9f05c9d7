"""The JAX layer: gradients against finite differences of independent re-solves, jit,
vmap (one batched core call), forward and reverse Jacobians, handles and the registry,
float32, and error messages."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import cvxpy as cp
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import conelayers  # noqa: E402
from conelayers.exceptions import (  # noqa: E402
    ConelayersError,
    InaccurateSolutionWarning,
    InfeasibleError,
    ParameterError,
)
from conelayers.jax import CvxpyLayer, Float32Warning  # noqa: E402
from conelayers.layer import LayerCore  # noqa: E402
from tests import zoo  # noqa: E402
from tests.conftest import ZOO_NAMES, central_difference, random_like  # noqa: E402

TIGHT = {"eps": 1e-9}


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _layer(z):
    return CvxpyLayer(z.problem, parameters=z.parameters, variables=z.variables)


def _arrays(values):
    return [jnp.asarray(v, dtype=jnp.float64) for v in values]


def _weighted_loss(layer, weights, solver_args=TIGHT):
    def loss(*params):
        outs = layer(*params, solver_args=solver_args)
        return sum(jnp.sum(jnp.asarray(w) * o) for w, o in zip(weights, outs))

    return loss


def _count_calls(monkeypatch, name):
    calls = []
    original = getattr(LayerCore, name)

    def counted(self, *args, **kwargs):
        calls.append(name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LayerCore, name, counted)
    return calls


# -- derivatives against independent references ---------------------------------------------


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_gradient_matches_central_differences(name):
    z = zoo.make(name)
    layer = _layer(z)
    params = _arrays(z.values)
    outs = layer(*params, solver_args=TIGHT)
    rng = np.random.default_rng(11)
    weights = random_like(rng, [np.asarray(o) for o in outs])
    grads = jax.grad(_weighted_loss(layer, weights), argnums=tuple(range(len(params))))(*params)
    directions = random_like(rng, z.values)
    analytic = sum(float((np.asarray(g) * d).sum()) for g, d in zip(grads, directions))
    fd = central_difference(z, weights, directions)
    assert abs(analytic - fd) <= 1e-4 * max(abs(fd), 1e-3), (analytic, fd)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_jit_grad_equals_grad(name):
    z = zoo.make(name)
    layer = _layer(z)
    params = _arrays(z.values)
    weights = random_like(np.random.default_rng(3), [np.asarray(o) for o in layer(*params)])
    grad = jax.grad(_weighted_loss(layer, weights), argnums=tuple(range(len(params))))
    eager = grad(*params)
    jitted = jax.jit(grad)(*params)
    for g, gj in zip(eager, jitted):
        np.testing.assert_allclose(gj, g, rtol=0, atol=1e-8)
    value = jax.jit(lambda *ps: layer(*ps, solver_args=TIGHT))(*params)
    for o, oj in zip(layer(*params, solver_args=TIGHT), value):
        np.testing.assert_allclose(oj, o, rtol=0, atol=1e-8)


def test_least_squares_matches_closed_form_autodiff():
    z = zoo.make("least_squares")
    layer = _layer(z)
    A, b = _arrays(z.values)

    def closed_form(A, b):
        return jnp.linalg.solve(A.T @ A + jnp.eye(A.shape[1]), A.T @ b)

    np.testing.assert_allclose(layer(A, b)[0], closed_form(A, b), rtol=0, atol=1e-9)
    g = jax.grad(lambda A, b: layer(A, b)[0].sum(), argnums=(0, 1))(A, b)
    g_ref = jax.grad(lambda A, b: closed_form(A, b).sum(), argnums=(0, 1))(A, b)
    for gi, ri in zip(g, g_ref):
        np.testing.assert_allclose(gi, ri, rtol=0, atol=1e-8)


def _fd_jacobian(z, index, h=1e-4):
    """Central-difference Jacobian of the first output w.r.t. parameter ``index`` from
    independent re-solves, shape out.shape + param.shape."""
    base = [np.asarray(v, dtype=float) for v in z.values]
    columns = []
    for k in range(base[index].size):
        e = np.zeros(base[index].size)
        e[k] = 1.0
        step = e.reshape(base[index].shape)
        plus = [v + h * step if i == index else v for i, v in enumerate(base)]
        minus = [v - h * step if i == index else v for i, v in enumerate(base)]
        columns.append(
            (zoo.reference_solution(z, plus)[0] - zoo.reference_solution(z, minus)[0]) / (2 * h)
        )
    out_shape = columns[0].shape
    return np.stack(columns, axis=-1).reshape(out_shape + base[index].shape)


@pytest.mark.parametrize("name", ["qp", "socp"])
def test_jacobian_reverse_and_forward_match_central_differences(name):
    z = zoo.make(name)
    layer = _layer(z)
    params = _arrays(z.values)
    for index in range(len(params)):

        def f(p, index=index):
            ps = list(params)
            ps[index] = p
            return layer(*ps, solver_args=TIGHT)[0]

        fd = _fd_jacobian(z, index)
        rev = np.asarray(jax.jacobian(f)(params[index]))
        fwd = np.asarray(jax.jacfwd(f)(params[index]))
        assert rev.shape == fd.shape == fwd.shape
        scale = max(np.abs(fd).max(), 1e-3)
        assert np.abs(rev - fd).max() <= 1e-4 * scale, (index, np.abs(rev - fd).max())
        np.testing.assert_allclose(fwd, rev, rtol=0, atol=1e-9 * scale)


def test_forward_mode_matches_central_differences():
    z = zoo.make("socp")
    layer = _layer(z)
    params = _arrays(z.values)
    rng = np.random.default_rng(2)
    directions = random_like(rng, z.values)
    _, (tangent,) = jax.jvp(
        lambda *ps: layer(*ps, solver_args=TIGHT), tuple(params),
        tuple(jnp.asarray(d) for d in directions),
    )
    w = rng.standard_normal(tangent.shape)
    fd = central_difference(z, [w], directions)
    assert float((w * np.asarray(tangent)).sum()) == pytest.approx(fd, rel=1e-4)


def test_jvp_and_vjp_are_adjoint():
    """⟨w, J d⟩ from forward mode equals ⟨Jᵀ w, d⟩ from reverse mode (a natively batched
    parameter and a broadcast one)."""
    z = zoo.make("batched_qp")
    layer = _layer(z)
    params = _arrays(z.values)
    rng = np.random.default_rng(5)
    directions = [jnp.asarray(d) for d in random_like(rng, z.values)]
    f = lambda *ps: layer(*ps)[0]  # noqa: E731
    out, tangent = jax.jvp(f, tuple(params), tuple(directions))
    w = jnp.asarray(rng.standard_normal(out.shape))
    _, vjp_fun = jax.vjp(f, *params)
    cotangents = vjp_fun(w)
    lhs = float(jnp.sum(w * tangent))
    rhs = sum(float(jnp.sum(c * d)) for c, d in zip(cotangents, directions))
    assert lhs == pytest.approx(rhs, rel=1e-9)


def test_second_order_raises_clear_error():
    z = zoo.make("qp")
    layer = _layer(z)
    q, h = _arrays(z.values)
    f = lambda q: layer(q, h)[0].sum()  # noqa: E731
    with pytest.raises(ConelayersError, match="first-order derivatives only"):
        jax.hessian(f)(q)
    with pytest.raises(ConelayersError, match="first-order derivatives only"):
        jax.grad(lambda q: jax.grad(f)(q).sum())(q)


def test_log_log_convex_problem_matches_the_core():
    """gp=True (positive parameters through their logs): values and gradients equal the
    core's (which its own tests check against CVXPY), also under vmap."""
    x, y, w = (cp.Variable(pos=True, name=n) for n in "xyw")
    a, b = cp.Parameter(pos=True, name="a"), cp.Parameter(pos=True, name="b")
    c = cp.Parameter(name="c")
    prob = cp.Problem(cp.Minimize(1 / (x * y * w)),
                      [a * (x * y + x * w + y * w) <= b, x >= y**c])
    layer = CvxpyLayer(prob, [a, b, c], [x, y, w], gp=True)
    values = [np.array(2.0), np.array(1.0), np.array(0.5)]
    result = layer.core.forward(values, TIGHT)
    core_grads = layer.core.vjp(result, [np.ones(1)] * 3)
    params = _arrays(values)
    outs = layer(*params, solver_args=TIGHT)
    np.testing.assert_allclose([float(o) for o in outs], [o[0] for o in result.outputs],
                               rtol=0, atol=1e-10)
    grads = jax.grad(lambda *ps: sum(layer(*ps, solver_args=TIGHT)), argnums=(0, 1, 2))(*params)
    np.testing.assert_allclose([float(g) for g in grads], [float(g) for g in core_grads],
                               rtol=0, atol=1e-8)
    stacked = [jnp.stack([p, p]) for p in params]
    batched = jax.vmap(jax.grad(lambda *ps: sum(layer(*ps, solver_args=TIGHT))))(*stacked)
    np.testing.assert_allclose(batched, [grads[0]] * 2, rtol=0, atol=1e-8)


def test_dual_variable_outputs():
    """A constraint's dual variable as an output: values and gradients equal the core's."""
    x = cp.Variable(3, name="x")
    p = cp.Parameter(3, name="p")
    con = x >= 0.5
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [con])
    layer = CvxpyLayer(prob, [p], [x, con.dual_variables[0]])
    value = np.array([0.1, 0.9, -0.4])
    result = layer.core.forward([value], TIGHT)
    (core_grad,) = layer.core.vjp(result, [np.zeros((1, 3)), np.ones((1, 3))])
    xs, dual = layer(jnp.asarray(value), solver_args=TIGHT)
    np.testing.assert_allclose(dual, result.outputs[1][0], rtol=0, atol=1e-10)
    assert float(jnp.abs(dual).max()) > 1e-2
    grad = jax.grad(lambda p: layer(p, solver_args=TIGHT)[1].sum())(jnp.asarray(value))
    np.testing.assert_allclose(grad, core_grad, rtol=0, atol=1e-8)


def test_trust_warnings_come_from_the_layer_call():
    """Trust checks run when a derivative is requested, so their warnings point at the
    user's code, and turned into errors they stop jax.grad before any gradient."""
    import warnings

    from conelayers.exceptions import SingularJacobianWarning

    p = cp.Parameter(3, name="p")
    s = cp.Variable(3, name="s")
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum(cp.power(s - p, 4)))), [p], [s])
    pt = jnp.asarray([1.0, -2.0, 0.5])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(pt)
        assert not [w for w in caught if issubclass(w.category, SingularJacobianWarning)]
        jax.grad(lambda p: layer(p)[0].sum())(pt)
    singular = [w for w in caught if issubclass(w.category, SingularJacobianWarning)]
    assert singular
    # It points outside conelayers and JAX. (Not at this file: the core's
    # user_stacklevel skips every path containing "/jax/", tests/jax/ included.)
    # (Compared with the package directory itself: the checkout may well be named
    # "conelayers" too.)
    package = os.path.dirname(os.path.abspath(conelayers.__file__)) + os.sep
    assert not os.path.abspath(singular[0].filename).startswith(package)
    assert "site-packages/jax/" not in singular[0].filename
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", SingularJacobianWarning)
        with pytest.raises(SingularJacobianWarning, match="instance 0"):
            jax.grad(lambda p: layer(p)[0].sum())(pt)


# -- vmap: one batched core call ----------------------------------------------------------------


def _qp_batch(B, seed=0):
    z = zoo.make("qp")
    rng = np.random.default_rng(seed)
    q0, h0 = z.values
    qs = q0 + 0.3 * rng.standard_normal((B, q0.size))
    hs = h0 + 0.1 * rng.uniform(size=(B, h0.size))
    return z, jnp.asarray(qs), jnp.asarray(hs)


def test_vmap_equals_per_instance_calls():
    z, qs, hs = _qp_batch(6)
    layer = _layer(z)
    h = hs[0]
    w = jnp.asarray(np.random.default_rng(1).standard_normal(qs.shape[1]))

    def f(q, h):
        return jnp.sum(w * layer(q, h, solver_args=TIGHT)[0])

    xs = jax.vmap(lambda q, h: layer(q, h, solver_args=TIGHT)[0], in_axes=(0, None))(qs, h)
    vals, (gq, gh) = jax.vmap(jax.value_and_grad(f, argnums=(0, 1)), in_axes=(0, None))(qs, h)
    jitted = jax.jit(jax.vmap(jax.grad(f, argnums=(0, 1))))(qs, hs)
    gh_total = jax.grad(lambda h: jax.vmap(f, in_axes=(0, None))(qs, h).sum())(h)
    gh_sum = 0
    for k in range(qs.shape[0]):
        (xk,) = layer(qs[k], h, solver_args=TIGHT)
        gqk, ghk = jax.grad(f, argnums=(0, 1))(qs[k], h)
        np.testing.assert_allclose(xs[k], xk, rtol=0, atol=1e-8)
        np.testing.assert_allclose(vals[k], f(qs[k], h), rtol=0, atol=1e-8)
        np.testing.assert_allclose(gq[k], gqk, rtol=0, atol=1e-8)
        np.testing.assert_allclose(gh[k], ghk, rtol=0, atol=1e-8)
        gqk2, ghk2 = jax.grad(f, argnums=(0, 1))(qs[k], hs[k])
        np.testing.assert_allclose(jitted[0][k], gqk2, rtol=0, atol=1e-8)
        np.testing.assert_allclose(jitted[1][k], ghk2, rtol=0, atol=1e-8)
        gh_sum = gh_sum + ghk
    np.testing.assert_allclose(gh_total, gh_sum, rtol=0, atol=1e-8)


def test_vmap_of_32_problems_calls_batched_core_once(monkeypatch):
    z, qs, hs = _qp_batch(32)
    layer = _layer(z)
    forward_calls = _count_calls(monkeypatch, "forward")
    vjp_calls = _count_calls(monkeypatch, "vjp")
    batch_sizes = []
    original_values = LayerCore._validated  # what forward and parameter_values call

    def recorded(self, values, mark_nonfinite):
        out = original_values(self, values, mark_nonfinite)
        batch_sizes.append(out[1])
        return out

    monkeypatch.setattr(LayerCore, "_validated", recorded)

    xs = jax.vmap(layer)(qs, hs)[0]
    assert xs.shape == (32, qs.shape[1])
    assert forward_calls == ["forward"] and batch_sizes[-1] == 32

    forward_calls.clear()
    grads = jax.jit(jax.vmap(jax.grad(lambda q, h: layer(q, h)[0].sum(), argnums=(0, 1))))(
        qs, hs
    )
    assert grads[0].shape == qs.shape and grads[1].shape == hs.shape
    assert forward_calls == ["forward"] and vjp_calls == ["vjp"]
    assert batch_sizes[-1] == 32


def test_vmap_over_native_batch_and_nested_vmap():
    """A vmapped axis on top of a native batch axis (batched q, broadcast h), and two
    nested vmaps, equal per-instance calls; the native batch is one core batch."""
    z = zoo.make("batched_qp")
    layer = _layer(z)
    q3, h = _arrays(z.values)
    rng = np.random.default_rng(4)
    qs = q3[None] + 0.2 * jnp.asarray(rng.standard_normal((4,) + q3.shape))
    f = lambda q, h: layer(q, h)[0]  # noqa: E731
    xs = jax.vmap(f, in_axes=(0, None))(qs, h)
    assert xs.shape == (4,) + q3.shape
    g = jax.vmap(jax.grad(lambda q, h: f(q, h).sum(), argnums=(0, 1)), in_axes=(0, None))(qs, h)
    for k in range(4):
        np.testing.assert_allclose(xs[k], f(qs[k], h), rtol=0, atol=1e-8)
        gk = jax.grad(lambda q, h: f(q, h).sum(), argnums=(0, 1))(qs[k], h)
        np.testing.assert_allclose(g[0][k], gk[0], rtol=0, atol=1e-8)
        np.testing.assert_allclose(g[1][k], gk[1], rtol=0, atol=1e-8)

    qq = qs.reshape((2, 2) + q3.shape)[:, :, 0]  # (2, 2, n): two nested vmaps, no native
    nested = jax.vmap(jax.vmap(jax.grad(lambda q: f(q, h).sum())))(qq)
    for a in range(2):
        for b in range(2):
            ref = jax.grad(lambda q: f(q, h).sum())(qq[a, b])
            np.testing.assert_allclose(nested[a, b], ref, rtol=0, atol=1e-8)


def test_jacobians_of_vmapped_layer():
    z, qs, hs = _qp_batch(3)
    layer = _layer(z)
    f = lambda q: layer(q, hs[0])[0]  # noqa: E731
    rev = jax.jacrev(jax.vmap(f))(qs)
    fwd = jax.jacfwd(jax.vmap(f))(qs)
    per_rev = jax.vmap(jax.jacrev(f))(qs)
    for k in range(3):
        ref = jax.jacrev(f)(qs[k])
        np.testing.assert_allclose(rev[k, :, k], ref, rtol=0, atol=1e-8)
        np.testing.assert_allclose(fwd[k, :, k], ref, rtol=0, atol=1e-8)
        np.testing.assert_allclose(per_rev[k], ref, rtol=0, atol=1e-8)
        for other in set(range(3)) - {k}:
            assert np.all(np.asarray(rev[k, :, other]) == 0)


# -- handles and the registry ---------------------------------------------------------------


def test_primal_calls_store_nothing_and_do_no_derivative_work(monkeypatch):
    import conelayers.layer as core_module

    def forbidden(*args, **kwargs):
        raise AssertionError("derivative set up without differentiation")

    z = zoo.make("qp")
    layer = _layer(z)
    monkeypatch.setattr(core_module, "SolutionDerivative", forbidden)
    params = _arrays(z.values)
    layer(*params)
    jax.jit(layer)(*params)
    jax.vmap(layer, in_axes=(0, None))(params[0][None], params[1])
    assert len(layer._registry) == 0


def test_backward_reuses_the_forward_and_frees_it(monkeypatch):
    z = zoo.make("qp")
    layer = _layer(z)
    params = _arrays(z.values)
    forward_calls = _count_calls(monkeypatch, "forward")
    jax.grad(lambda q, h: layer(q, h)[0].sum())(*params)
    jax.jit(jax.grad(lambda q, h: layer(q, h)[0].sum()))(*params)
    assert forward_calls == ["forward", "forward"]
    assert len(layer._registry) == 0


def test_dropped_forward_results_are_resolved(monkeypatch):
    """A derivative whose stored forward result was consumed or evicted re-solves from
    the parameter values and gives the same answer."""
    z, qs, hs = _qp_batch(4)
    layer = _layer(z)
    f = lambda q, h: layer(q, h)[0]  # noqa: E731
    w = jnp.asarray(np.random.default_rng(7).standard_normal(qs.shape))
    out, vjp_fun = jax.vjp(jax.vmap(f), qs, hs)
    first = vjp_fun(w)
    forward_calls = _count_calls(monkeypatch, "forward")
    second = vjp_fun(w)  # the entry was consumed by the first call
    assert forward_calls == ["forward"]
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)

    layer.max_stored_results = 0  # every result is evicted at once
    evicted = jax.grad(lambda q, h: jnp.sum(w * jax.vmap(f)(q, h)), argnums=(0, 1))(qs, hs)
    for a, b in zip(first, evicted):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)

    _, f_jvp = jax.linearize(lambda q: f(q, hs[0]), qs[0])
    d = jnp.ones_like(qs[0])
    np.testing.assert_allclose(f_jvp(d), f_jvp(d), rtol=0, atol=1e-8)

    # A native batch with a broadcast parameter, unvmapped (the untiled layout).
    zb = zoo.make("batched_qp")
    layer_b = _layer(zb)
    params = _arrays(zb.values)
    grad_b = jax.grad(lambda q, h: layer_b(q, h)[0].sum(), argnums=(0, 1))
    kept = grad_b(*params)
    layer_b.max_stored_results = 0
    for a, b in zip(kept, grad_b(*params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)


# -- dtypes and solver arguments ------------------------------------------------------------------


def test_float32_without_x64_warns_and_returns_float32():
    z = zoo.make("qp")
    (x64_out,) = _layer(z)(*_arrays(z.values))
    g64 = jax.grad(lambda q, h: _layer(z)(q, h)[0].sum())(*_arrays(z.values))
    with jax.enable_x64(False):
        layer = _layer(z)
        params = [jnp.asarray(v) for v in z.values]
        assert params[0].dtype == jnp.float32
        with pytest.warns(Float32Warning, match="jax_enable_x64"):
            (x,) = layer(*params)
        assert x.dtype == jnp.float32
        g = jax.grad(lambda q, h: layer(q, h)[0].sum())(*params)
        assert g.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(x, dtype=float), x64_out, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g, dtype=float), g64, rtol=0, atol=1e-4)


def test_float32_with_x64_stays_float32_without_warning(recwarn):
    z = zoo.make("qp")
    layer = _layer(z)
    params = [jnp.asarray(v, dtype=jnp.float32) for v in z.values]
    (x,) = layer(*params)
    assert x.dtype == jnp.float32
    assert not [w for w in recwarn if issubclass(w.category, Float32Warning)]


def test_solver_args_reach_scs():
    z = zoo.make("least_squares")
    layer = _layer(z)
    params = _arrays(z.values)
    with pytest.warns(InaccurateSolutionWarning, match="instance 0"):
        (x_rough,) = layer(*params, solver_args={"max_iters": 2, "refine": False})
    (x_tight,) = layer(*params, solver_args={"eps": 1e-10})
    assert float(jnp.abs(x_rough - x_tight).max()) > 1e-3
    jitted = jax.jit(functools.partial(layer, solver_args={"eps": 1e-10}))(*params)
    np.testing.assert_allclose(jitted[0], x_tight, rtol=0, atol=1e-12)


_IMPORT_CHECK = """
import importlib.abc, sys

importers = []

class BlockJax(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] not in ("jax", "jaxlib"):
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        importers.append(frame.f_code.co_filename if frame is not None else "?")
        raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

import conelayers
assert "jax" not in sys.modules
sys.meta_path.insert(0, BlockJax())
import conelayers.layer
try:
    import torch
except ImportError:
    pass
else:
    import conelayers.torch
import os
import canonicalize
packages = [os.path.dirname(os.path.abspath(m.__file__)) + os.sep
            for m in (conelayers, canonicalize)]
own = [f for f in importers if any(os.path.abspath(f).startswith(p) for p in packages)]
assert not own, own
assert "jax" not in sys.modules
"""


def test_importing_conelayers_and_torch_adapter_does_not_import_jax():
    """``import conelayers`` loads no jax, and neither the core nor the torch adapter
    imports it: with jax made unimportable they still import, and no ``import jax`` came
    from conelayers or canonicalize. (cvxpy 1.9 itself imports jax when it is installed,
    probing for the MPAX solver, so ``import conelayers.torch`` cannot keep jax out of
    ``sys.modules``; that probe is what the blocked imports record.)"""
    subprocess.run([sys.executable, "-c", _IMPORT_CHECK], check=True)


# -- errors ---------------------------------------------------------------------------------------


def _ls_layer():
    m, n = 4, 3
    A = cp.Parameter((m, n), name="A")
    b = cp.Parameter(m, name="b")
    lam = cp.Parameter(nonneg=True, name="lam")
    x = cp.Variable(n, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + lam * cp.sum_squares(x)))
    return CvxpyLayer(prob, [A, b, lam], [x]), (m, n)


def test_error_wrong_number_of_arrays():
    layer, (m, n) = _ls_layer()
    with pytest.raises(ParameterError, match="an array must be provided for each"):
        layer(jnp.zeros((m, n)), jnp.zeros(m))


def test_error_shapes_and_batches_name_the_parameter():
    layer, (m, n) = _ls_layer()
    lam = jnp.asarray(1.0)
    A = jnp.asarray(np.random.default_rng(0).standard_normal((m, n)))
    with pytest.raises(ParameterError, match="invalid parameter shape for 'b'"):
        layer(A, jnp.zeros(2 * m), lam)
    with pytest.raises(ParameterError, match="invalid parameter shape for 'b'"):
        jax.jit(layer)(A, jnp.zeros(2 * m), lam)  # at trace time, also under jit
    with pytest.raises(ParameterError, match="invalid parameter shape for 'b'"):
        jax.grad(lambda b: layer(A, b, lam)[0].sum())(jnp.zeros(2 * m))
    with pytest.raises(ParameterError, match="invalid parameter dimensionality for 'b'"):
        layer(A, jnp.zeros((3, 3, m)), lam)
    with pytest.raises(ParameterError, match="inconsistent batch sizes.*'b'"):
        layer(jnp.zeros((5, m, n)), jnp.zeros((4, m)), lam)
    with pytest.raises(ParameterError, match="'b': expected a floating-point"):
        layer(A, jnp.zeros(m, dtype=jnp.int32), lam)
    with pytest.raises(ParameterError, match="'b': expected an array"):
        layer(A, "b", lam)
    with pytest.raises(ParameterError, match="parameter .b. is float32 but .A. is float64"):
        layer(A, jnp.zeros(m, dtype=jnp.float32), lam)
    with pytest.raises(ParameterError, match="empty batch"):
        layer(jnp.zeros((0, m, n)), jnp.zeros(m), lam)


def test_error_values_raise_the_core_error_outside_jit():
    layer, (m, n) = _ls_layer()
    A = jnp.asarray(np.random.default_rng(0).standard_normal((m, n)))
    lam = jnp.asarray(1.0)
    nan_b = jnp.full((m,), jnp.nan)
    with pytest.raises(ParameterError, match="'b' contains NaN"):
        layer(A, nan_b, lam)
    with pytest.raises(ParameterError, match="'b' contains NaN"):
        jax.grad(lambda b: layer(A, b, lam)[0].sum())(nan_b)
    with pytest.raises(ParameterError, match="'lam' is declared nonneg"):
        layer(A, jnp.zeros(m), -lam)
    # Under jit the host error comes back as JAX's runtime error, whose message ends with
    # the original one.
    with pytest.raises(jax.errors.JaxRuntimeError, match="ParameterError: parameter 'b' contains"):
        jax.jit(layer)(A, nan_b, lam)


def test_error_infeasible():
    x = cp.Variable(2)
    b = cp.Parameter(2, name="b")
    prob = cp.Problem(cp.Minimize(cp.sum(x)), [x >= b, x <= b - 1])
    layer = CvxpyLayer(prob, [b], [x])
    with pytest.raises(InfeasibleError, match="infeasible"):
        layer(jnp.zeros(2))


def test_error_traced_solver_args():
    layer, (m, n) = _ls_layer()
    A, b, lam = jnp.ones((m, n)), jnp.ones(m), jnp.asarray(1.0)
    with pytest.raises(ConelayersError, match="solver_args must be concrete"):
        jax.jit(lambda eps: layer(A, b, lam, solver_args={"eps": eps}))(1e-6)


def test_a_value_error_is_raised_without_jax_logging_a_traceback_first(caplog):
    """JAX logs "jax.pure_callback failed" with a traceback for any exception in a host
    callback; for the layer's own errors (raised to the caller right after) that log is
    dropped, for other exceptions it stays."""
    import logging

    from conelayers.exceptions import ParameterError
    from conelayers.jax import CvxpyLayer
    from conelayers.jax.layer import _OwnErrorsFilter

    p = cp.Parameter(3, name="p")
    x = cp.Variable(3)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0, cp.sum(x) == 1])
    with jax.enable_x64(True):
        layer = CvxpyLayer(prob, [p], [x])
        with caplog.at_level(logging.ERROR), pytest.raises(ParameterError, match="'p'"):
            layer(jnp.array([np.nan, 1.0, 2.0]))
    assert not [r for r in caplog.records if "pure_callback" in r.getMessage()]

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord("jax._src.callback", logging.ERROR, __file__, 0,
                                 "jax.pure_callback failed", (), (type(exc), exc, None))

    keep = _OwnErrorsFilter()
    assert not keep.filter(record(ParameterError("x")))
    assert keep.filter(record(ValueError("someone else's callback")))
    # A conelayers warning a filter turned into an error is ours too (it was logged).
    from conelayers.exceptions import NonUniqueSolutionWarning
    assert not keep.filter(record(NonUniqueSolutionWarning("x")))


def test_a_warning_raised_as_error_under_jit_surfaces_as_jax_runtime_error():
    """The README's pattern (a conelayers warning made an error) inside jax.jit: the
    class is lost at the callback boundary, the message is not; outside jit it is the
    warning class itself. (Degenerate LP: cost parallel to the simplex's facet.)"""
    import warnings

    from conelayers.exceptions import ConelayersWarning
    from conelayers.jax import CvxpyLayer

    x, c = cp.Variable(2), cp.Parameter(2)
    prob = cp.Problem(cp.Minimize(c @ x), [x >= 0, cp.sum(x) == 1])
    with jax.enable_x64(True):
        layer = CvxpyLayer(prob, parameters=[c], variables=[x])
        g = jax.grad(lambda c: layer(c)[0][0])
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConelayersWarning)
            with pytest.raises(ConelayersWarning):
                g(jnp.array([1.0, 1.0]))
            with pytest.raises(jax.errors.JaxRuntimeError, match="not unique|singular"):
                jax.jit(g)(jnp.array([1.0, 1.0]))
