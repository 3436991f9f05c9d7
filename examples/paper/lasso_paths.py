"""The Lasso solution path and its derivative in the hyperparameter (reference paper,
Proposition 5 and Remark 4), through a conelayers layer in forward mode.

    β̂(λ) = argmin_β ½‖Xβ − y‖² + e^λ‖β‖₁   on a small random design (n = 30, p = 8).

The layer's parameter is lam = e^λ (computed in torch), and dβ̂/dλ comes from
``torch.func.jvp`` through the layer, for the whole λ grid in one batched call. The
independent reference is the exact piecewise-linear homotopy in lam from scikit-learn's
``lars_path(method="lasso")`` (its ``alphas`` are lam / n). At a smooth λ (between two
knots), Proposition 5's set M(λ) is a single point and the derivative is

    dβ̂_E/dλ = −e^λ (X_Eᵀ X_E)⁻¹ sign(X_Eᵀ(y − Xβ̂)),   zero off E,

with E the equicorrelation set {j : |X_jᵀ(y − Xβ̂)| = e^λ} (= the support there). At a
knot a variable enters (or leaves) and E ⊋ supp β̂: the conservative Jacobian is a
segment, whose ends are Remark 4's LARS derivative (qᵢ = 1 on E) and the weak derivative
(qᵢ = 0 off the support). The layer reaches both with ``solver_args={"selection":
"lower"}`` and ``{"selection": "upper"}``, and warns NonsmoothPointWarning (a justified
but non-unique gradient), not SingularJacobianWarning.

Run: python examples/paper/lasso_paths.py [--grid N] [--out FILE.png]
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import torch
from sklearn.linear_model import lars_path

from conelayers.exceptions import ConelayersWarning
from conelayers.torch import CvxpyLayer

KINK_SOLVER_ARGS = {"eps": 1e-9}


def lasso_data(n: int = 30, p: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    beta_true = np.r_[2.0, -1.5, 1.0, 0.5, np.zeros(p - 4)]
    return X, X @ beta_true + 0.5 * rng.standard_normal(n)


def lasso_layer(X: np.ndarray, y: np.ndarray) -> CvxpyLayer:
    """lam ↦ β̂ = argmin ½‖Xβ − y‖² + lam‖β‖₁."""
    lam = cp.Parameter(nonneg=True, name="lam")
    beta = cp.Variable(X.shape[1], name="beta")
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(X @ beta - y) + lam * cp.norm1(beta)))
    return CvxpyLayer(problem, parameters=[lam], variables=[beta])


class LassoPath:
    """The exact Lasso path from LARS (independent of the layer): knots in lam = e^λ
    (decreasing, the last one 0) and β̂ at each knot; β̂ is linear in lam in between."""

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X, self.y = X, y
        alphas, _, coefs = lars_path(X, y, method="lasso")
        self.knots = X.shape[0] * alphas
        self.coefs = coefs  # (p, number of knots)

    @property
    def kinks(self) -> np.ndarray:
        """The knots with lam > 0, as λ = log lam (increasing)."""
        return np.log(self.knots[self.knots > 0])[::-1].copy()

    def beta(self, lam: float) -> np.ndarray:
        if lam >= self.knots[0]:
            return np.zeros(self.X.shape[1])
        k = int(np.searchsorted(-self.knots, -lam, side="right")) - 1  # knots[k+1] < lam ≤ knots[k]
        k = min(k, len(self.knots) - 2)
        w = (lam - self.knots[k + 1]) / (self.knots[k] - self.knots[k + 1])
        return w * self.coefs[:, k] + (1 - w) * self.coefs[:, k + 1]

    def equicorrelation(self, lam: float, rtol: float = 1e-9) -> np.ndarray:
        corr = self.X.T @ (self.y - self.X @ self.beta(lam))
        return np.abs(corr) >= lam * (1 - rtol)

    def closed_form(self, lam: float, active: np.ndarray | None = None) -> np.ndarray:
        """−e^λ (X_Aᵀ X_A)⁻¹ sign(X_Aᵀ(y − Xβ̂)) on A (default: E), zero elsewhere."""
        A = self.equicorrelation(lam) if active is None else active
        out = np.zeros(self.X.shape[1])
        if A.any():
            XA = self.X[:, A]
            sign = np.sign(XA.T @ (self.y - self.X @ self.beta(lam)))
            out[A] = -lam * np.linalg.solve(XA.T @ XA, sign)
        return out

    def lars(self, lam: float) -> np.ndarray:
        """Remark 4, qᵢ = 1 on E."""
        return self.closed_form(lam)

    def weak(self, lam: float) -> np.ndarray:
        """Remark 4, qᵢ = 0 off supp β̂."""
        b = self.beta(lam)
        return self.closed_form(lam, np.abs(b) > 1e-12 * max(1.0, np.abs(b).max()))


@dataclass
class LassoRun:
    X: np.ndarray
    y: np.ndarray
    grid: np.ndarray  # λ values (log lam)
    beta: np.ndarray  # (G, p) from the layer
    dbeta: np.ndarray  # (G, p) dβ̂/dλ from the layer (jvp)
    closed: np.ndarray  # (G, p) Proposition 5's closed form at the grid
    smooth: np.ndarray  # (G,) grid points farther than 1e-6 from any kink
    kinks: np.ndarray  # λ at the knots
    kink_lower: np.ndarray  # (K, p) layer, selection "lower"
    kink_upper: np.ndarray  # (K, p) layer, selection "upper"
    kink_lars: np.ndarray  # (K, p) Remark 4, qᵢ = 1 on E
    kink_weak: np.ndarray  # (K, p) Remark 4, qᵢ = 0 off the support
    beta_ref: np.ndarray  # (G, p) β̂ from the LARS path
    grid_warnings: list[set[str]] = field(default_factory=list)
    kink_warnings: dict[str, list[set[str]]] = field(default_factory=dict)
    seconds: float = 0.0

    def relative_errors(self) -> np.ndarray:
        """Per smooth grid point, ‖layer − closed form‖∞ / ‖closed form‖∞ (absolute where
        the closed form is 0: above the first knot, β̂ ≡ 0)."""
        d, c = self.dbeta[self.smooth], self.closed[self.smooth]
        scale = np.abs(c).max(axis=1)
        return np.abs(d - c).max(axis=1) / np.where(scale > 0, scale, 1.0)

    @staticmethod
    def _rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))

    def kink_errors(self) -> tuple[float, float]:
        """Max relative distance of the 'lower' selection to LARS and of 'upper' to weak."""
        lo = max(self._rel(a, b) for a, b in zip(self.kink_lower, self.kink_lars))
        up = max((self._rel(a, b) if np.abs(b).max() > 0 else float(np.abs(a).max()))
                 for a, b in zip(self.kink_upper, self.kink_weak))
        return lo, up


def _per_instance(caught, batch: int) -> list[set[str]]:
    import re

    out: list[set[str]] = [set() for _ in range(batch)]
    for w in caught:
        if not issubclass(w.category, ConelayersWarning):
            continue
        m = re.search(r"instances? ([\d, ]+)", str(w.message))
        idx = [int(i) for i in m.group(1).replace(" ", "").split(",") if i] if m else []
        for i in idx or range(batch):
            out[i].add(w.category.__name__)
    return out


def layer_path(layer: CvxpyLayer, lams: np.ndarray, solver_args: dict | None = None):
    """(β̂, dβ̂/dλ, warnings per instance) at λ = lams, one batched forward-mode call."""
    lam = torch.tensor(lams, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConelayersWarning)
        beta, dbeta = torch.func.jvp(
            lambda t: layer(torch.exp(t), solver_args=solver_args)[0],
            (lam,), (torch.ones_like(lam),))
    return beta.numpy(), dbeta.numpy(), _per_instance(caught, len(lams))


def run(grid: int = 60, n: int = 30, p: int = 8, seed: int = 0, verbose: bool = True
        ) -> LassoRun:
    X, y = lasso_data(n, p, seed)
    path = LassoPath(X, y)
    layer = lasso_layer(X, y)
    top = np.log(path.knots[0])
    lams = np.linspace(top - 4.5, top + 0.5, grid)
    t0 = time.perf_counter()
    beta, dbeta, grid_warn = layer_path(layer, lams)
    kinks = path.kinks
    _, d_low, low_warn = layer_path(layer, kinks, {**KINK_SOLVER_ARGS, "selection": "lower"})
    _, d_up, up_warn = layer_path(layer, kinks, {**KINK_SOLVER_ARGS, "selection": "upper"})
    seconds = time.perf_counter() - t0
    e = np.exp
    closed = np.array([path.closed_form(e(t)) for t in lams])
    smooth = np.array([np.abs(kinks - t).min() > 1e-6 for t in lams])
    result = LassoRun(
        X=X, y=y, grid=lams, beta=beta, dbeta=dbeta, closed=closed, smooth=smooth, kinks=kinks,
        kink_lower=d_low, kink_upper=d_up,
        kink_lars=np.array([path.lars(e(t)) for t in kinks]),
        kink_weak=np.array([path.weak(e(t)) for t in kinks]),
        beta_ref=np.array([path.beta(e(t)) for t in lams]),
        grid_warnings=grid_warn, kink_warnings={"lower": low_warn, "upper": up_warn},
        seconds=seconds)
    if verbose:
        for t, w in zip(kinks, low_warn):
            print(f"kink at λ = {t:+.4f}: warnings {', '.join(sorted(w)) or 'none'}")
    return result


def summary(result: LassoRun) -> str:
    rel = result.relative_errors()
    lo, up = result.kink_errors()
    grid_warned = sum(bool(w) for w in result.grid_warnings)
    kink_kinds = sorted(set().union(*result.kink_warnings["lower"],
                                    *result.kink_warnings["upper"]))
    return "\n".join([
        f"λ grid of {len(result.grid)} points in [{result.grid[0]:.2f}, {result.grid[-1]:.2f}]"
        f" ({int(result.smooth.sum())} smooth), {len(result.kinks)} kinks (LARS knots); "
        f"layer time {result.seconds:.1f} s",
        f"β̂ from the layer vs the LARS path: max abs difference "
        f"{np.abs(result.beta - result.beta_ref).max():.1e}",
        f"dβ̂/dλ (layer jvp) vs Proposition 5's closed form at smooth points: max relative "
        f"error {rel.max():.1e}; grid points with a conelayers warning: {grid_warned}",
        f"at the kinks: selection 'lower' vs LARS (qᵢ = 1 on E): max relative error {lo:.1e}; "
        f"'upper' vs weak derivative (qᵢ = 0 off supp): {up:.1e}; max |LARS − weak| "
        f"{np.abs(result.kink_lars - result.kink_weak).max():.3g}; warnings at kinks: "
        f"{', '.join(kink_kinds) or 'none'}",
    ])


def plot(result: LassoRun, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = LassoPath(result.X, result.y)
    lo, hi = result.grid[0], result.grid[-1]
    kinks = result.kinks[(result.kinks >= lo) & (result.kinks <= hi)]
    # The zoom shows the kinks at the largest λ, where the first variables enter.
    z_lo = kinks[-3] - 0.12 if len(kinks) >= 3 else lo
    z_hi = min(kinks[-1] + 0.08, hi) if len(kinks) else hi

    def curves(a: float, b: float, num: int):
        t = np.linspace(a, b, num)
        t = np.sort(np.r_[t, kinks - 1e-9, kinks + 1e-9])
        t = t[(t >= a) & (t <= b)]
        beta = np.array([path.beta(np.exp(v)) for v in t])
        d = np.array([path.closed_form(np.exp(v)) for v in t])
        for k in kinks:  # break the derivative's lines where it jumps
            d[np.abs(t - k) < 2e-9] = np.nan
        return t, beta, d

    fig = plt.figure(figsize=(13, 9.5))
    gs = fig.add_gridspec(2, 2, width_ratios=[1.6, 1])
    ax_b = fig.add_subplot(gs[0, :])
    ax_d = fig.add_subplot(gs[1, 0])
    ax_z = fig.add_subplot(gs[1, 1])
    t_f, beta_f, d_f = curves(lo, hi, 800)
    t_z, _, d_z = curves(z_lo, z_hi, 400)
    in_zoom = (result.grid >= z_lo) & (result.grid <= z_hi)
    p = result.beta.shape[1]
    for j in range(p):
        c = f"C{j % 10}"
        ax_b.plot(t_f, beta_f[:, j], "-", color=c, lw=1, label=f"β̂{j + 1}")
        ax_b.plot(result.grid, result.beta[:, j], "o", color=c, ms=3)
        for ax, (t, d), mask in ((ax_d, (t_f, d_f), slice(None)), (ax_z, (t_z, d_z), in_zoom)):
            ax.plot(t, d[:, j], "-", color=c, lw=1)
            ax.plot(result.grid[mask], result.dbeta[mask, j], "o", color=c, ms=3)
            # One-sided selections only where they are nonzero (j in E at that kink).
            on = (np.abs(result.kink_lars[:, j]) > 0) | (np.abs(result.kink_weak[:, j]) > 0)
            ax.plot(result.kinks[on], result.kink_lower[on, j], "v", color=c, ms=9, mec="k",
                    mew=0.6)
            ax.plot(result.kinks[on], result.kink_upper[on, j], "^", color=c, ms=9, mec="k",
                    mew=0.6)
    for ax in (ax_b, ax_d, ax_z):
        for k in kinks:
            ax.axvline(k, color="0.7", lw=0.6, ls=":", zorder=0)
        ax.axhline(0, color="0.5", lw=0.6)
    ax_b.set_ylabel("β̂(λ)")
    ax_b.set_xlabel("λ  (regularization weight e^λ)")
    ax_b.set_title("Lasso path (n = 30, p = 8): exact from LARS (lines) and from the layer "
                   "(dots); dotted lines: kinks")
    ax_b.legend(ncol=4, fontsize=8, loc="upper right")
    ax_d.plot([], [], "-", color="0.3", label="closed form (Prop. 5)")
    ax_d.plot([], [], "o", color="0.3", ms=3, label="layer jvp on the grid")
    ax_d.plot([], [], "v", color="0.6", mec="k", ms=9, label="kink: selection 'lower' (= LARS)")
    ax_d.plot([], [], "^", color="0.6", mec="k", ms=9, label="kink: selection 'upper' (= weak)")
    ax_d.set_ylabel("dβ̂/dλ")
    ax_d.set_xlabel("λ")
    rel = result.relative_errors().max()
    ax_d.set_title(f"dβ̂/dλ: layer vs closed form (max rel. error {rel:.1e} at smooth points)",
                   fontsize=10)
    ax_d.legend(fontsize=8, loc="upper left")
    ax_d.axvspan(z_lo, z_hi, color="0.9", zorder=-1)
    ax_z.set_xlim(z_lo, z_hi)
    ax_z.set_xlabel("λ")
    ax_z.set_title("zoom: the first variables enter; at each kink the two\n"
                   "selections are the one-sided derivatives", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> LassoRun:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="lasso_paths.png")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    result = run(grid=args.grid, seed=args.seed, verbose=not args.quiet)
    plot(result, args.out)
    print(summary(result))
    print(f"figure: {args.out}")
    return result


if __name__ == "__main__":
    main()
