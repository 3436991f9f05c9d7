"""The PyTorch layer: gradients against finite differences of independent re-solves,
gradcheck, closed forms, batching rules, grad modes, dtypes, and error messages."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conelayers.exceptions import (  # noqa: E402
    ConelayersError,
    InaccurateSolutionWarning,
    InfeasibleError,
    ParameterError,
    ProblemError,
    UnboundedError,
)
from conelayers.torch import CvxpyLayer  # noqa: E402
from tests import zoo  # noqa: E402
from tests.conftest import ZOO_NAMES, central_difference, random_like  # noqa: E402

TIGHT = {"eps": 1e-9}


def _layer(z):
    return CvxpyLayer(z.problem, parameters=z.parameters, variables=z.variables)


def _tensors(values, requires_grad=True):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=requires_grad) for v in values]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_gradient_matches_central_differences(name):
    z = zoo.make(name)
    layer = _layer(z)
    params = _tensors(z.values)
    outs = layer(*params, solver_args=TIGHT)
    rng = np.random.default_rng(11)
    weights = random_like(rng, [o.detach().numpy() for o in outs])
    loss = sum((torch.from_numpy(w) * o).sum() for w, o in zip(weights, outs))
    loss.backward()
    directions = random_like(rng, z.values)
    analytic = sum(float((p.grad.numpy() * d).sum()) for p, d in zip(params, directions))
    fd = central_difference(z, weights, directions)
    assert abs(analytic - fd) <= 1e-4 * max(abs(fd), 1e-3), (analytic, fd)


@pytest.mark.parametrize("name", ["qp", "least_squares", "socp", "sdp", "batched_qp"])
def test_gradcheck(name):
    """torch.autograd.gradcheck (float64): its finite differences re-solve through the
    layer at eps 1e-10, accurate to ~1e-12, so step 1e-6 leaves ~1e-6 noise."""
    z = zoo.make(name)
    layer = _layer(z)
    params = _tensors(z.values)

    def f(*ps):
        return layer(*ps, solver_args={"eps": 1e-10})

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_least_squares_matches_closed_form_autograd():
    z = zoo.make("least_squares")
    layer = _layer(z)
    A, b = _tensors(z.values)
    (x,) = layer(A, b)
    x.sum().backward()
    A2, b2 = _tensors(z.values)
    x2 = torch.linalg.solve(A2.T @ A2 + torch.eye(A2.shape[1], dtype=A2.dtype), A2.T @ b2)
    x2.sum().backward()
    torch.testing.assert_close(x, x2, atol=1e-9, rtol=0)
    torch.testing.assert_close(A.grad, A2.grad, atol=1e-8, rtol=0)
    torch.testing.assert_close(b.grad, b2.grad, atol=1e-8, rtol=0)


def test_broadcasting_equals_per_instance_solves():
    """A batched q with an unbatched h: outputs and gradients equal the per-instance
    results, and h's gradient is the sum over the batch."""
    z = zoo.make("batched_qp")
    layer = _layer(z)
    q, h = _tensors(z.values)
    (x,) = layer(q, h)
    assert x.shape == (3, z.variables[0].shape[0])
    x.sum().backward()
    h_sum = torch.zeros_like(h)
    for k in range(3):
        qk, hk = _tensors([z.values[0][k], z.values[1]])
        (xk,) = layer(qk, hk)
        xk.sum().backward()
        torch.testing.assert_close(x[k], xk, atol=1e-9, rtol=0)
        torch.testing.assert_close(q.grad[k], qk.grad, atol=1e-8, rtol=0)
        h_sum += hk.grad
    torch.testing.assert_close(h.grad, h_sum, atol=1e-8, rtol=0)


def test_batch_of_one_keeps_batch_dimension():
    z = zoo.make("qp")
    layer = _layer(z)
    q, h = _tensors([z.values[0][None], z.values[1]])
    (x,) = layer(q, h)
    assert x.shape == (1, z.variables[0].shape[0])
    x.sum().backward()
    assert q.grad.shape == q.shape and h.grad.shape == h.shape


def test_no_grad_does_no_derivative_work(monkeypatch):
    import conelayers.layer as core_module

    def forbidden(*args, **kwargs):
        raise AssertionError("derivative set up under no_grad")

    monkeypatch.setattr(core_module, "SolutionDerivative", forbidden)
    z = zoo.make("qp")
    layer = _layer(z)
    with torch.no_grad():
        (x,) = layer(*_tensors(z.values))
    assert not x.requires_grad
    (x,) = layer(*_tensors(z.values, requires_grad=False))
    assert not x.requires_grad


def test_float32_in_float32_out():
    z = zoo.make("qp")
    layer = _layer(z)
    params = [torch.tensor(v, dtype=torch.float32, requires_grad=True) for v in z.values]
    (x,) = layer(*params)
    assert x.dtype == torch.float32
    x.sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in params)
    (x64,) = layer(*_tensors(z.values))
    torch.testing.assert_close(x.double(), x64, atol=1e-6, rtol=0)


def test_solver_args_reach_scs():
    z = zoo.make("least_squares")
    layer = _layer(z)
    params = _tensors(z.values, requires_grad=False)
    with pytest.warns(InaccurateSolutionWarning, match="instance 0"):
        (x_rough,) = layer(*params, solver_args={"max_iters": 2, "refine": False})
    (x_tight,) = layer(*params, solver_args={"eps": 1e-10})
    assert (x_rough - x_tight).abs().max() > 1e-3


def test_forward_mode_matches_central_differences():
    z = zoo.make("socp")
    layer = _layer(z)
    params = _tensors(z.values, requires_grad=False)
    rng = np.random.default_rng(2)
    directions = random_like(rng, z.values)
    _, (tangent,) = torch.func.jvp(
        lambda *ps: layer(*ps, solver_args=TIGHT), tuple(params),
        tuple(torch.from_numpy(d) for d in directions),
    )
    w = rng.standard_normal(tangent.shape)
    fd = central_difference(z, [w], directions)
    assert float((torch.from_numpy(w) * tangent).sum()) == pytest.approx(fd, rel=1e-4)


# -- errors ------------------------------------------------------------------------------


def _ls_layer():
    m, n = 4, 3
    A = cp.Parameter((m, n), name="A")
    b = cp.Parameter(m, name="b")
    lam = cp.Parameter(nonneg=True, name="lam")
    x = cp.Variable(n, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + lam * cp.sum_squares(x)))
    return CvxpyLayer(prob, [A, b, lam], [x]), (m, n)


def test_error_wrong_number_of_tensors():
    layer, (m, n) = _ls_layer()
    with pytest.raises(ParameterError, match="a tensor must be provided for each"):
        layer(torch.zeros(m, n), torch.zeros(m))


def test_error_shapes_and_batches_name_the_parameter():
    layer, (m, n) = _ls_layer()
    lam = torch.tensor(1.0, dtype=torch.float64)
    A = torch.randn(m, n, dtype=torch.float64)
    with pytest.raises(ParameterError, match="invalid parameter shape for 'b'"):
        layer(A, torch.zeros(2 * m, dtype=torch.float64), lam)
    with pytest.raises(ParameterError, match="invalid parameter dimensionality for 'b'"):
        layer(A, torch.zeros(3, 3, m, dtype=torch.float64), lam)
    with pytest.raises(ParameterError, match="inconsistent batch sizes.*'b'"):
        layer(torch.randn(5, m, n, dtype=torch.float64),
              torch.zeros(4, m, dtype=torch.float64), lam)
    with pytest.raises(ParameterError, match="'b' contains NaN"):
        layer(A, torch.full((m,), float("nan"), dtype=torch.float64), lam)
    with pytest.raises(ParameterError, match="'lam' is declared nonneg"):
        layer(A, torch.zeros(m, dtype=torch.float64), -lam)
    with pytest.raises(ParameterError, match="'b': expected a floating-point"):
        layer(A, torch.zeros(m, dtype=torch.int64), lam)
    with pytest.raises(ParameterError, match="parameter .b. is float32 but .A. is float64"):
        layer(A, torch.zeros(m, dtype=torch.float32), lam)
    with pytest.raises(ParameterError, match="empty batch"):
        layer(torch.zeros(0, m, n, dtype=torch.float64), torch.zeros(m, dtype=torch.float64),
              lam)


def test_error_problem_rejected_at_construction():
    x = cp.Variable(2)
    p = cp.Parameter(2, name="p")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)))
    with pytest.raises(ProblemError, match="must exactly match"):
        CvxpyLayer(prob, parameters=[], variables=[x])
    with pytest.raises(ProblemError, match="not DPP"):
        q = cp.Parameter(name="q")
        CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - p * q))), [p, q], [x])


def test_infeasible_and_unbounded_name_the_instances():
    x = cp.Variable()
    p = cp.Parameter(name="p")
    infeasible = cp.Problem(cp.Minimize(x), [x >= p, x <= 0])
    layer = CvxpyLayer(infeasible, [p], [x])
    values = torch.tensor([-1.0, 1.0, -2.0, 2.0], dtype=torch.float64)
    with pytest.raises(InfeasibleError, match="instance 1: infeasible.*instance 3") as info:
        layer(values)
    assert set(info.value.failures) == {1, 3}
    unbounded = cp.Problem(cp.Minimize(x), [x <= p])
    with pytest.raises(UnboundedError, match="instance 0: unbounded"):
        CvxpyLayer(unbounded, [p], [x])(torch.tensor([1.0], dtype=torch.float64))


def test_trust_warning_as_error_stops_before_gradients_are_written():
    """warnings.simplefilter("error", SingularJacobianWarning) turns the warning into an
    exception raised by backward() before any .grad is written."""
    import warnings

    from conelayers.exceptions import SingularJacobianWarning

    p = cp.Parameter(3, name="p")
    s = cp.Variable(3, name="s")
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum(cp.power(s - p, 4)))), [p], [s])
    pt = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    (out,) = layer(pt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingularJacobianWarning)
        with pytest.raises(SingularJacobianWarning, match="instance 0"):
            out.sum().backward()
    assert pt.grad is None


def test_a_retried_backward_raises_the_warning_again():
    """After the error-filtered warning stopped one backward, a second backward of the
    same graph raises again instead of writing the unjustified gradient silently; once
    the filter is lifted the warning is emitted (once) and the gradient written."""
    import warnings

    from conelayers.exceptions import NonUniqueSolutionWarning

    x = cp.Variable(3)
    c = cp.Parameter(3)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(c @ x), [x >= 0, cp.sum(x) == 1]),
                       parameters=[c], variables=[x])
    ct = torch.tensor([[1.0, 1.0, 2.0], [0.3, 2.0, 1.0]], dtype=torch.float64,
                      requires_grad=True)  # instance 0: a tie, a segment of solutions
    (xs,) = layer(ct)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonUniqueSolutionWarning)
        for _ in range(2):
            with pytest.raises(NonUniqueSolutionWarning, match="instance 0"):
                xs.sum().backward(retain_graph=True)
            assert ct.grad is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xs.sum().backward(retain_graph=True)
        xs.sum().backward()
    assert ct.grad is not None
    assert sum(issubclass(w.category, NonUniqueSolutionWarning) for w in caught) == 1


# -- torch.func with losses nonlinear in the outputs ----------------------------------------

def _sparsemax_layer():
    z, s = cp.Variable(4), cp.Parameter(4)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(z - s)), [z >= 0, cp.sum(z) == 1])
    return CvxpyLayer(prob, parameters=[s], variables=[z])


def _sparsemax_jacobian(s: np.ndarray) -> np.ndarray:
    """Closed form: on the support S of the projection, I − 11ᵀ/|S|; zero elsewhere."""
    u = np.sort(s)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.nonzero(u - css / np.arange(1, s.size + 1) > 0)[0][-1]
    support = (s - css[k] / (k + 1)) > 0
    J = np.zeros((s.size, s.size))
    idx = np.flatnonzero(support)
    J[np.ix_(idx, idx)] = np.eye(idx.size) - 1.0 / idx.size
    return J


def test_func_grad_of_a_nonlinear_loss_and_jacrev_match_the_closed_form():
    """torch.func.grad of Σ z(s)² (the cotangent 2z depends on s: it failed inside
    torch's custom-op autograd before) and torch.func.jacrev, against the sparsemax
    Jacobian at a point away from the support's boundary."""
    layer = _sparsemax_layer()
    s = torch.tensor([0.9, 0.5, -0.2, 0.1], dtype=torch.float64)
    J = _sparsemax_jacobian(s.numpy())
    z = layer(s)[0].detach().numpy()
    g = torch.func.grad(lambda v: layer(v)[0].pow(2).sum())(s)
    np.testing.assert_allclose(g.numpy(), J.T @ (2 * z), atol=1e-8)
    jac = torch.func.jacrev(lambda v: layer(v)[0])(s)
    np.testing.assert_allclose(jac.numpy(), J, atol=1e-8)


def test_nested_func_grad_raises_instead_of_returning_zero():
    """grad of grad would silently treat the layer's gradient as constant (it returned
    zeros): it raises, as double backward does."""
    layer = _sparsemax_layer()
    s = torch.tensor([0.9, 0.5, -0.2, 0.1], dtype=torch.float64)
    inner = torch.func.grad(lambda v: layer(v)[0].pow(2).sum())
    with pytest.raises(ConelayersError, match="first-order derivatives only"):
        torch.func.grad(lambda v: inner(v).sum())(s)


def test_func_hessian_fails_loudly():
    """No second derivatives: torch.func.hessian (forward over reverse) stops with
    torch's error rather than returning a Hessian without the layer's curvature."""
    layer = _sparsemax_layer()
    s = torch.tensor([0.9, 0.5, -0.2, 0.1], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="vmap"):
        torch.func.hessian(lambda v: layer(v)[0].pow(2).sum())(s)
