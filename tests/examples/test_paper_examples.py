"""The reference paper's pathological cases as examples (examples/paper/), on reduced
runs, checked against facts computed here independently of the layer: the analytic
inner solutions and gradients of the cyclic problem and its exact gradient-descent
recursion, the Lorenz field and the Hessian of uᵀF(u) from Appendix E.2.1, and the
Lasso path from LARS with Proposition 5's closed form (itself checked by central
differences of the path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

PAPER = Path(__file__).resolve().parents[2] / "examples" / "paper"
UNJUSTIFIED = {"SingularJacobianWarning", "NonUniqueSolutionWarning"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"paper_example_{name}", PAPER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _figure_ok(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- cyclic (Section 5, eq. (11); Appendix E.1) --------------------------------------------

def _cyclic_vertex(t: float) -> np.ndarray:
    """Appendix E.1.1: s = (3, 5) for t > 0, (0, 0) for t < 0."""
    return np.array([3.0, 5.0]) if t > 0 else np.zeros(2)


def _cyclic_step(z: np.ndarray, lr: float) -> np.ndarray:
    """Exact gradient descent on ℓ(x, y, s(x, y)) for t ≠ 0 (s locally constant)."""
    s = _cyclic_vertex(-3 * z[0] + z[1] + 2)
    return z - lr * np.array([2 * (z[0] - s[0]), 8 * (z[1] - s[1])])


@pytest.fixture(scope="module")
def cyclic():
    return _load("cyclic")


@pytest.fixture(scope="module")
def cyclic_run(cyclic):
    return cyclic.run(steps=40, verbose=False)


def test_cyclic_warns_exactly_where_t_vanishes(cyclic_run):
    x, y = cyclic_run.xy[:-1].T
    t = -3 * x + y + 2
    assert t[0] == 0.0  # the default start lies on the line
    flagged = [k for k, w in enumerate(cyclic_run.warned) if w & UNJUSTIFIED]
    assert flagged == [k for k in range(len(t)) if abs(t[k]) < 1e-6] == [0]
    assert all(not w for k, w in enumerate(cyclic_run.warned) if abs(t[k]) >= 1e-3)


def test_cyclic_gradient_is_analytic_away_from_the_line(cyclic_run):
    x, y = cyclic_run.xy[:-1].T
    t = -3 * x + y + 2
    away = np.flatnonzero(np.abs(t) >= 1e-3)
    assert len(away) == len(t) - 1
    for k in away:
        s = _cyclic_vertex(t[k])
        np.testing.assert_allclose(cyclic_run.s[k], s, atol=1e-8)
        expected = np.array([2 * (x[k] - s[0]), 8 * (y[k] - s[1])])  # direct terms only
        np.testing.assert_allclose(cyclic_run.grad[k], expected, rtol=1e-9, atol=1e-9)


def test_cyclic_path_is_the_exact_recursion_and_keeps_crossing(cyclic_run):
    """From step 1 on the layer's path is the exact piecewise-affine recursion; run long
    (in NumPy), that recursion settles on a cycle of non-critical points that crosses
    t = 0 twice per period, whatever the start."""
    z = cyclic_run.xy[1].copy()
    for k in range(1, len(cyclic_run.xy) - 1):
        np.testing.assert_allclose(cyclic_run.xy[k], z, atol=1e-9)
        z = _cyclic_step(z, cyclic_run.lr)
    assert cyclic_run.crossings >= 2
    for start in (cyclic_run.xy[1], np.array([0.5, 0.0]), np.array([2.0, -1.0])):
        z, path = start.copy(), []
        for _ in range(2000):
            path.append(z)
            z = _cyclic_step(z, cyclic_run.lr)
        path = np.array(path)
        assert np.abs(path[-1] - path[-1 - 24]).max() < 1e-9  # period 24 at step 0.05
        assert np.abs(path[-1] - path[-1 - 12]).max() > 0.1
        t = -3 * path[-24:, 0] + path[-24:, 1] + 2
        assert np.count_nonzero(np.sign(t) != np.roll(np.sign(t), 1)) == 2
        grads = [(_cyclic_step(p, 1.0) - p) for p in path[-24:]]
        assert min(np.linalg.norm(g) for g in grads) > 1.0  # no critical point on it


def test_cyclic_tiny_t_start_warns(cyclic):
    near = cyclic.run(steps=2, start=(1.0, 1.0 + 1e-9), verbose=False)
    assert near.warned[0] & UNJUSTIFIED
    far = cyclic.run(steps=2, start=(1.0, 1.0 + 1e-3), verbose=False)
    assert not far.warned[0]


def test_cyclic_main_writes_figure(cyclic, tmp_path, capsys):
    out = tmp_path / "cyclic.png"
    cyclic.main(["--steps", "30", "--out", str(out), "--quiet"])
    _figure_ok(out)
    text = capsys.readouterr().out
    assert "crossings of t = 0" in text and "NonUniqueSolution warnings: 1" in text


# -- perturbed cyclic (Appendix E.1.2) -----------------------------------------------------

@pytest.fixture(scope="module")
def perturbed():
    return _load("cyclic_perturbed")


def test_perturbed_draws_follow_the_appendix(perturbed):
    eps, starts, redrawn = perturbed.draw_perturbations(20, seed=0)
    assert eps.shape == (20, 6) and starts.shape == (20, 2)
    assert np.all(0.25 + eps[:, 0] > 0) and np.all(1 + eps[:, 1] > 0)
    assert 0.1 < eps.std() < 0.35  # σ = √0.05 ≈ 0.22
    assert redrawn >= 0


def test_perturbed_runs_match_the_analytic_gradient(perturbed, tmp_path):
    res = perturbed.run(runs=4, steps=25, verbose=False)
    eps = res.eps
    w = np.c_[0.25 + eps[:, 0], 1 + eps[:, 1]]
    vertex = np.c_[3 - eps[:, 4], 5 - eps[:, 5]]
    for k in range(25):
        z = res.xy[k]
        t = -(3 + eps[:, 2]) * z[:, 0] + z[:, 1] + 2 + eps[:, 3]
        s = np.where((t > 0)[:, None], vertex, 0.0)
        for r in range(4):
            if abs(t[r]) >= 1e-3:
                assert not res.warned[k][r]
                np.testing.assert_allclose(res.s[k, r], s[r], atol=1e-8)
                np.testing.assert_allclose(res.grad[k, r], 2 * w[r] * (z[r] - s[r]),
                                           rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(res.xy[k + 1], z - res.lr * res.grad[k], atol=1e-12)
    out = tmp_path / "perturbed.png"
    perturbed.plot(res, str(out))
    _figure_ok(out)
    assert "perturbed runs" in perturbed.summary(res)


def test_perturbed_cycles_persist_for_all_twenty_draws(perturbed):
    """The paper's claim, on the example's own draws, with the exact recursion: every
    one of the 20 runs still crosses its line t_ε = 0 after 1000 steps."""
    eps, starts, _ = perturbed.draw_perturbations(20, seed=0)
    w = np.c_[0.25 + eps[:, 0], 1 + eps[:, 1]]
    vertex = np.c_[3 - eps[:, 4], 5 - eps[:, 5]]
    z, ts = starts.copy(), []
    for _ in range(2000):
        t = -(3 + eps[:, 2]) * z[:, 0] + z[:, 1] + 2 + eps[:, 3]
        ts.append(t)
        s = np.where((t > 0)[:, None], vertex, 0.0)
        z = z - perturbed.LR * 2 * w * (z - s)
    late = np.sign(np.array(ts[1000:]))
    assert np.all(np.count_nonzero(np.diff(late, axis=0), axis=0) >= 2)


# -- Lorenz-like (Section 5, eq. (14); Appendix E.2) ---------------------------------------

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0


def _F(u: np.ndarray) -> np.ndarray:
    x, y, z = u
    return np.array([SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z])


@pytest.fixture(scope="module")
def lorenz():
    return _load("lorenz")


@pytest.fixture(scope="module")
def lorenz_run(lorenz):
    return lorenz.run(steps=6, verbose=False)


def test_lorenz_warns_singular_at_every_step(lorenz_run):
    assert len(lorenz_run.warned) == 6
    assert all("SingularJacobianWarning" in w for w in lorenz_run.warned)
    assert lorenz_run.singular_steps == 6


def test_lorenz_inner_solution_is_F_and_path_follows_the_layer_gradient(lorenz_run):
    np.testing.assert_allclose(lorenz_run.path[0], [0.0, 1.0, 1.05])
    for k, u in enumerate(lorenz_run.path[:-1]):
        F = _F(u)
        assert np.abs(lorenz_run.s[k] - F).max() <= 1e-4 * np.abs(F).max()
        np.testing.assert_allclose(lorenz_run.path[k + 1], u + lorenz_run.lr * lorenz_run.grad[k],
                                   atol=1e-12)
        assert np.all(np.isfinite(lorenz_run.grad[k]))


def test_lorenz_classical_ascent_is_the_hessian_recursion(lorenz_run):
    """Appendix E.2.1: uᵀF(u) = ½uᵀHu, so classical ascent is u ← u + lr·Hu, which runs
    off along H's unstable eigenvector (eigenvalue ≈ 28.05)."""
    H = np.array([[-2 * SIGMA, SIGMA + RHO, 0], [SIGMA + RHO, -2, 0], [0, 0, -2 * BETA]])
    path = lorenz_run.classical
    for a, b in zip(path[:-1], path[1:]):
        np.testing.assert_allclose(b, a + lorenz_run.lr * H @ a, rtol=1e-12, atol=1e-12)
    assert np.linalg.norm(path[-1]) > 1e3
    evals, evecs = np.linalg.eigh(H)
    assert evals.max() == pytest.approx(-11 + np.sqrt(81 + 38**2))
    direction = path[-1] / np.linalg.norm(path[-1])
    assert abs(direction @ evecs[:, np.argmax(evals)]) > 0.999


def test_lorenz_main_writes_figure(lorenz, tmp_path, capsys):
    out = tmp_path / "lorenz.png"
    lorenz.main(["--steps", "4", "--out", str(out), "--quiet"])
    _figure_ok(out)
    assert "SingularJacobianWarning: 4/4" in capsys.readouterr().out


# -- Lasso (Proposition 5, Remark 4) -------------------------------------------------------

@pytest.fixture(scope="module")
def lasso():
    pytest.importorskip("sklearn")
    return _load("lasso_paths")


@pytest.fixture(scope="module")
def lasso_run(lasso):
    return lasso.run(grid=12, verbose=False)


def test_lasso_reference_path_is_right(lasso):
    """The LARS reference itself: β̂ satisfies the Lasso optimality conditions, and the
    closed form equals central differences of the path at smooth points."""
    X, y = lasso.lasso_data()
    path = lasso.LassoPath(X, y)
    knots = path.knots[path.knots > 0]
    mids = np.sqrt(knots[:-1] * knots[1:])
    for lam in np.r_[mids, knots[-1] / 2]:
        b = path.beta(lam)
        corr = X.T @ (y - X @ b)
        assert np.all(np.abs(corr) <= lam * (1 + 1e-9))
        on = np.abs(b) > 1e-12
        np.testing.assert_allclose(corr[on], lam * np.sign(b[on]), rtol=1e-9)
        h = 1e-5
        fd = (path.beta(lam * np.exp(h)) - path.beta(lam * np.exp(-h))) / (2 * h)
        np.testing.assert_allclose(path.closed_form(lam), fd, rtol=1e-6, atol=1e-9)


def test_lasso_derivative_matches_closed_form_at_smooth_points(lasso_run):
    assert lasso_run.smooth.all()
    assert lasso_run.relative_errors().max() < 1e-6
    assert np.abs(lasso_run.closed).max() > 0.1  # not vacuous
    np.testing.assert_allclose(lasso_run.beta, lasso_run.beta_ref, atol=1e-7)
    assert not any(lasso_run.grid_warnings)


def test_lasso_kink_selections_are_lars_and_weak(lasso_run):
    assert len(lasso_run.kinks) >= 5
    lo, up = lasso_run.kink_errors()
    assert lo < 1e-6 and up < 1e-6
    # The two selections really differ at every kink (the test is not vacuous) ...
    gaps = np.abs(lasso_run.kink_lars - lasso_run.kink_weak).max(axis=1)
    assert np.all(gaps > 1e-3)
    # ... and the layer calls them justified but non-unique, never unjustified.
    for sel in ("lower", "upper"):
        for w in lasso_run.kink_warnings[sel]:
            assert "NonsmoothPointWarning" in w and not (w & UNJUSTIFIED)


def test_lasso_main_writes_figure(lasso, tmp_path, capsys):
    out = tmp_path / "lasso.png"
    lasso.main(["--grid", "8", "--out", str(out), "--quiet"])
    _figure_ok(out)
    assert "max relative error" in capsys.readouterr().out
