"""Reduced runs of the sparsemax (JAX, digits) and predict-then-optimize (torch, portfolio)
examples, checked against independent computations: a sort-based closed-form sparsemax
and its Jacobian written here in NumPy, CVXPY + Clarabel re-solves, and the exact
piecewise-constant structure of the LP decision."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest

from conelayers.exceptions import ConelayersWarning

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# -- independent references ------------------------------------------------------------------------


def sparsemax_closed_form(scores: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row onto the simplex by sorting (Held et al. 1974;
    Martins & Astudillo 2016): τ from the largest k with 1 + k s_(k) > Σ_{j≤k} s_(j)."""
    s = np.atleast_2d(scores)
    desc = -np.sort(-s, axis=1)
    k = np.arange(1, s.shape[1] + 1)
    cumsum = np.cumsum(desc, axis=1)
    support = 1 + k * desc > cumsum
    k_max = support.sum(axis=1)  # the condition holds exactly for k = 1..k_max
    tau = (cumsum[np.arange(len(s)), k_max - 1] - 1) / k_max
    return np.maximum(s - tau[:, None], 0).reshape(np.shape(scores))


def sparsemax_jacobian(scores: np.ndarray) -> np.ndarray:
    """d sparsemax / d s = diag(1_S) − 1_S 1_Sᵀ / |S| (S the support), at a point where
    no coordinate sits on the support's boundary."""
    on = (sparsemax_closed_form(scores) > 0).astype(float)
    return np.diag(on) - np.outer(on, on) / on.sum()


# -- sparsemax on digits (JAX) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sparsemax():
    pytest.importorskip("jax")
    return _load("jax_sparsemax_digits")


@pytest.fixture(scope="module")
def sparsemax_run(sparsemax):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConelayersWarning)  # every solve accurate, no warning
        return sparsemax.run(steps=10, batch_size=128, eval_every=100, verbose=False)


def test_closed_form_reference_is_right():
    """The NumPy reference itself: on the simplex, and the KKT conditions of the
    projection hold (p − s = −τ on the support, s − τ ≤ 0 off it)."""
    rng = np.random.default_rng(0)
    s = rng.standard_normal((200, 10)) * rng.uniform(0.1, 3, (200, 1))
    p = sparsemax_closed_form(s)
    assert np.all(p >= 0) and np.allclose(p.sum(axis=1), 1, atol=1e-12)
    for si, pi in zip(s, p):
        on = pi > 0
        tau = (si - pi)[on]
        assert np.ptp(tau) < 1e-12 and np.all(si[~on] <= tau[0] + 1e-12)


def test_sparsemax_outputs_are_the_closed_form_projection(sparsemax_run):
    p, s = sparsemax_run.test_probs, sparsemax_run.test_scores
    assert p.shape == (450, 10)
    # Feasible to the refined solves' residual (~1e-12 relative to the scores' scale).
    assert p.min() >= -1e-12 * max(1.0, float(np.abs(s).max()))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(p, sparsemax_closed_form(s), rtol=0, atol=1e-6)
    # Sparse: most test outputs name a single class, none uses all ten.
    assert sparsemax_run.one_hot_fraction > 0.5
    assert sparsemax_run.support_sizes.max() < 10


def test_sparsemax_training_learns(sparsemax_run):
    """Ten gradient steps of 128 images from W = 0 (uniform outputs, loss 0.9): the
    loss falls and the test accuracy is above 0.9 (0.949 measured; the full run reaches
    0.96)."""
    assert sparsemax_run.losses[0] == pytest.approx(0.9, abs=1e-9)
    assert np.mean(sparsemax_run.losses[-3:]) < 0.3 * sparsemax_run.losses[0]
    assert sparsemax_run.eval_test_accuracy[0] < 0.2  # the untrained model (all ties)
    assert sparsemax_run.test_accuracy > 0.9
    assert sparsemax_run.train_accuracy > 0.9


def test_sparsemax_layer_jacobian_under_jit_and_vmap(sparsemax):
    """jax.jit(jax.vmap(jax.jacrev(layer))) equals the closed-form sparsemax Jacobian, on
    scores whose supports have 1 to 10 classes."""
    import jax

    layer = sparsemax.sparsemax_layer(10)
    rng = np.random.default_rng(1)
    scales = np.geomspace(0.02, 5, 12)[:, None]
    S = scales * rng.standard_normal((12, 10))
    with jax.enable_x64(True):
        jac = jax.jit(jax.vmap(jax.jacrev(lambda s: layer(s)[0])))(jax.numpy.asarray(S))
        P = jax.jit(jax.vmap(lambda s: layer(s)[0]))(jax.numpy.asarray(S))
    sizes = (sparsemax_closed_form(S) > 0).sum(axis=1)
    assert sizes.min() == 1 and sizes.max() == 10
    np.testing.assert_allclose(np.asarray(P), sparsemax_closed_form(S), rtol=0, atol=1e-9)
    for k in range(len(S)):
        np.testing.assert_allclose(np.asarray(jac[k]), sparsemax_jacobian(S[k]), rtol=0,
                                   atol=1e-8)


def test_sparsemax_summary_and_figure(sparsemax, sparsemax_run, tmp_path):
    text = sparsemax.summary(sparsemax_run)
    assert f"test accuracy {sparsemax_run.test_accuracy:.3f}" in text
    assert "mean support size" in text
    out = tmp_path / "sparsemax.png"
    sparsemax.plot(sparsemax_run, str(out))
    assert out.stat().st_size > 20_000


# -- predict-then-optimize portfolio (torch) -------------------------------------------------------


@pytest.fixture(scope="module")
def portfolio():
    pytest.importorskip("torch")
    return _load("portfolio_predict_then_optimize")


@pytest.fixture(scope="module")
def portfolio_run(portfolio):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConelayersWarning)
        return portfolio.run(steps=12, eval_every=6, T_train=128, T_test=128, verbose=False)


def test_lp_layer_gradient_is_zero_at_generic_points(portfolio):
    """At random (generic: no ties) μ̂ the LP decision is the vertex of the largest μ̂,
    locally constant, so every gradient is zero: the layer returns 0 up to roundoff
    (≤ 1e-20; ~1e-28 measured), for any realized returns."""
    import torch

    layer = portfolio.portfolio_layer(gamma=0.0)
    rng = np.random.default_rng(3)
    mu = torch.tensor(0.02 * rng.standard_normal((50, 8)), requires_grad=True)
    (w,) = layer(mu)
    np.testing.assert_allclose(
        w.detach().numpy(), np.eye(8)[np.argmax(mu.detach().numpy(), axis=1)], atol=1e-9
    )
    r = torch.tensor(rng.standard_normal((50, 8)))
    (-(r * w).sum()).backward()
    assert float(mu.grad.abs().max()) <= 1e-20


def test_regularized_layer_gradient_matches_references(portfolio):
    """The γ‖w‖² layer: w = sparsemax(μ̂/(2γ)); its gradient matches the closed form
    (1/2γ)(diag 1_S − 1_S1_Sᵀ/|S|)ᵀ(−r) and central differences of CVXPY + Clarabel
    re-solves."""
    import torch

    gamma = 0.02
    layer = portfolio.portfolio_layer(gamma=gamma)
    rng = np.random.default_rng(4)
    mu0 = 0.02 * rng.standard_normal(8)
    r = rng.standard_normal(8)
    mu = torch.tensor(mu0, requires_grad=True)
    (w,) = layer(mu, solver_args={"eps": 1e-10})
    (-(torch.tensor(r) * w).sum()).backward()
    grad = mu.grad.numpy()
    np.testing.assert_allclose(w.detach().numpy(), sparsemax_closed_form(mu0 / (2 * gamma)),
                               atol=1e-9)
    support = int((sparsemax_closed_form(mu0 / (2 * gamma)) > 0).sum())
    assert 2 <= support < 8  # a point where the regularized layer has a real slope
    closed = -sparsemax_jacobian(mu0 / (2 * gamma)).T @ r / (2 * gamma)
    np.testing.assert_allclose(grad, closed, rtol=0, atol=1e-7 * np.abs(closed).max())
    assert np.abs(grad).max() > 1.0

    wv, mp = cp.Variable(8), cp.Parameter(8)
    prob = cp.Problem(cp.Maximize(mp @ wv - gamma * cp.sum_squares(wv)),
                      [wv >= 0, cp.sum(wv) == 1])

    def loss(m):
        mp.value = m
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        return -float(r @ wv.value)

    d = rng.standard_normal(8)
    h = 1e-6
    fd = (loss(mu0 + h * d) - loss(mu0 - h * d)) / (2 * h)
    assert float(grad @ d) == pytest.approx(fd, rel=1e-4)


def test_lp_training_stalls_and_regularized_training_moves(portfolio, portfolio_run):
    lp, reg = portfolio_run.lp, portfolio_run.regularized
    theta0, theta00 = (t.numpy() for t in portfolio.initial_model())
    # LP: every gradient is zero, the parameters do not move (bit for bit), the loss
    # curve is flat.
    assert lp.zero_grad_fraction == 1.0 and lp.max_abs_grad_mu <= 1e-20
    np.testing.assert_array_equal(lp.theta, theta0)
    np.testing.assert_array_equal(lp.theta0, theta00)
    assert np.ptp(lp.train_loss) <= 1e-12 and np.ptp(lp.test_loss) <= 1e-12
    # Regularized: nonzero gradients, and the training loss (−mean return) falls by more
    # than a percentage point of monthly return (≈ 2.2 points measured).
    assert reg.zero_grad_fraction < 0.5 and reg.max_abs_grad_mu > 1e-3
    assert reg.train_loss[-1] < reg.train_loss[0] - 0.01
    assert all(b <= a + 1e-3 for a, b in zip(reg.train_loss, reg.train_loss[1:]))
    # The LP decision made with the model learned through the regularized layer beats
    # the one made with the (unmoved) LP-trained model on the held-out months.
    returns = portfolio_run.test_returns
    assert (returns["LP decision, model trained through the regularized layer"]
            > returns["LP decision, model trained through the LP layer"] + 0.005)


def test_portfolio_summary_and_figure(portfolio, portfolio_run, tmp_path):
    text = portfolio.summary(portfolio_run)
    assert "LP layer:          100.00%" in text
    out = tmp_path / "portfolio.png"
    portfolio.plot(portfolio_run, str(out))
    assert out.stat().st_size > 20_000
