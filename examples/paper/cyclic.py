"""The cyclic bilevel problem of the reference paper (Section 5, eq. (11); Appendix E.1):
gradient descent through an optimization layer converges to a limit cycle of
non-critical points.

    min_{x, y}  ℓ(x, y, s) = (x − s₁)² + 4 (y − s₂)²
    s = s(x, y) = argmax {(a + b)·t : a ∈ [0, 3], b ∈ [0, 5]},  t = −3x + y + 2.

The inner solution is the vertex (3, 5) where t > 0, (0, 0) where t < 0, and the whole
box where t = 0 (Appendix E.1.1): s jumps across the line t = 0, so ℓ(x, y, s(x, y)) is
discontinuous there. Each side's minimizer lies on the other side ((0, 0) has t = 2,
(3, 5) has t = −2), so descent keeps crossing the line.

The gradient goes through conelayers' torch layer (x and y are ``cp.Parameter``s; the
objective a·t + b·t is DPP) plus the direct terms ∂ℓ/∂(x, y). Away from t = 0 the layer's
gradient is exact (s is locally constant) and no warning fires: the trust checks are
local, and the cycle is a global effect of the discontinuity, which no local check sees.
At t = 0 (here: the starting point, chosen on the line) the solution is a whole box, and
the layer says so with NonUniqueSolutionWarning.

Run: python examples/paper/cyclic.py [--steps N] [--lr STEP] [--out FILE.png]
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import torch

from conelayers.exceptions import (
    ConelayersWarning,
    NonUniqueSolutionWarning,
    SingularJacobianWarning,
)
from conelayers.torch import CvxpyLayer

UNJUSTIFIED = (SingularJacobianWarning, NonUniqueSolutionWarning)
START = (0.0, -2.0)  # on the line t = −3x + y + 2 = 0
LR = 0.05


def cyclic_layer() -> CvxpyLayer:
    """(x, y) ↦ (s₁, s₂) = argmax_{a ∈ [0, 3], b ∈ [0, 5]} (a + b)(−3x + y + 2)."""
    x, y = cp.Parameter(name="x"), cp.Parameter(name="y")
    a, b = cp.Variable(name="a"), cp.Variable(name="b")
    t = -3 * x + y + 2  # affine in the parameters: a·t + b·t is DPP
    problem = cp.Problem(cp.Maximize(a * t + b * t), [a >= 0, a <= 3, b >= 0, b <= 5])
    assert problem.is_dpp()
    return CvxpyLayer(problem, parameters=[x, y], variables=[a, b])


def t_value(x: float, y: float) -> float:
    return -3.0 * x + y + 2.0


@dataclass
class CyclicRun:
    lr: float
    xy: np.ndarray  # (steps + 1, 2): iterates, the last one not evaluated
    s: np.ndarray  # (steps, 2): the layer's inner solution at each evaluated iterate
    grad: np.ndarray  # (steps, 2): the gradient used for each step
    loss: np.ndarray  # (steps,)
    warned: list[set[str]] = field(default_factory=list)  # warning class names per step
    seconds: float = 0.0

    @property
    def t(self) -> np.ndarray:
        return t_value(self.xy[:-1, 0], self.xy[:-1, 1])

    @property
    def unjustified_steps(self) -> list[int]:
        """Steps whose gradient the layer flagged as not justified."""
        names = {c.__name__ for c in UNJUSTIFIED}
        return [k for k, w in enumerate(self.warned) if w & names]

    @property
    def crossings(self) -> int:
        """How many times the path crossed the line t = 0."""
        sign = np.sign(self.t)
        sign = sign[sign != 0]
        return int(np.count_nonzero(sign[1:] != sign[:-1]))

    def period(self, tol: float = 1e-6) -> int | None:
        """Smallest P with the last iterate within ``tol`` of the one P steps before (and
        P steps before that): the path has settled on a P-periodic cycle."""
        z = self.xy
        for P in range(1, len(z) // 3):
            if (np.abs(z[-1] - z[-1 - P]).max() < tol
                    and np.abs(z[-1 - P] - z[-1 - 2 * P]).max() < tol):
                return P
        return None


def run(steps: int = 200, lr: float = LR, start: tuple[float, float] = START,
        verbose: bool = True) -> CyclicRun:
    """Gradient descent on (x, y) with the gradient of ℓ(x, y, s(x, y)) through the layer.

    Warnings are recorded per step (``warnings.catch_warnings(record=True)``)."""
    layer = cyclic_layer()
    x = torch.tensor(start[0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor(start[1], dtype=torch.float64, requires_grad=True)
    xy, s_all, grads, losses, warned = [], [], [], [], []
    t0 = time.perf_counter()
    for k in range(steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConelayersWarning)
            s1, s2 = layer(x, y)
            loss = (x - s1) ** 2 + 4 * (y - s2) ** 2  # direct terms included
            gx, gy = torch.autograd.grad(loss, [x, y])
        kinds = {w.category.__name__ for w in caught if issubclass(w.category, ConelayersWarning)}
        xy.append((x.item(), y.item()))
        s_all.append((s1.item(), s2.item()))
        grads.append((gx.item(), gy.item()))
        losses.append(loss.item())
        warned.append(kinds)
        if verbose and (k < 3 or kinds or k % 25 == 0):
            print(f"step {k:4d}  (x, y) = ({x.item():8.5f}, {y.item():8.5f})  "
                  f"t = {t_value(x.item(), y.item()):+.2e}  s = ({s1.item():6.3f}, "
                  f"{s2.item():6.3f})  loss = {loss.item():8.4f}"
                  + (f"  warnings: {', '.join(sorted(kinds))}" if kinds else ""))
        with torch.no_grad():
            x -= lr * gx
            y -= lr * gy
    xy.append((x.item(), y.item()))
    return CyclicRun(lr, np.array(xy), np.array(s_all), np.array(grads), np.array(losses),
                     warned, time.perf_counter() - t0)


def analytic_gradient(x: float, y: float) -> np.ndarray:
    """The exact gradient of ℓ(x, y, s(x, y)) for t ≠ 0: s is locally constant, so only
    the direct terms remain."""
    s = (3.0, 5.0) if t_value(x, y) > 0 else (0.0, 0.0)
    return np.array([2 * (x - s[0]), 8 * (y - s[1])])


def summary(result: CyclicRun) -> str:
    t = result.t
    flagged = result.unjustified_steps
    period = result.period()
    lines = [
        f"{len(t)} steps of gradient descent, step size {result.lr}, from (x, y) = "
        f"({result.xy[0, 0]:g}, {result.xy[0, 1]:g}) in {result.seconds:.1f} s",
        f"crossings of t = 0: {result.crossings}",
    ]
    if period is not None:
        cyc = slice(len(t) - period, len(t))
        gnorm = np.linalg.norm(result.grad[cyc], axis=1)
        signs = np.sign(t[cyc])
        per_period = int(np.count_nonzero(signs != np.roll(signs, 1)))
        lines.append(
            f"limit cycle: period {period} steps, {per_period} crossings of t = 0 per period; "
            f"on it |t| ≥ {np.abs(t[cyc]).min():.3g}, gradient norm "
            f"≥ {gnorm.min():.3g} (no critical point), loss in "
            f"[{result.loss[cyc].min():.3f}, {result.loss[cyc].max():.3f}]")
    else:
        lines.append("no periodic orbit detected (run more steps)")
    away = np.abs(t) >= 1e-3
    err = max((np.abs(result.grad[k] - analytic_gradient(*result.xy[k])).max()
               for k in np.flatnonzero(away)), default=0.0)
    lines.append(
        f"steps with SingularJacobian/NonUniqueSolution warnings: {len(flagged)} "
        f"(steps {flagged[:10]}{' ...' if len(flagged) > 10 else ''}; |t| there ≤ "
        f"{np.abs(t[flagged]).max() if flagged else float('nan'):.1e}); any warning at "
        f"|t| ≥ 1e-3: {sum(bool(result.warned[k]) for k in np.flatnonzero(away))}")
    lines.append(f"max |layer gradient − analytic gradient| at |t| ≥ 1e-3: {err:.1e}")
    return "\n".join(lines)


def plot(result: CyclicRun, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(12, 5.2),
                                   gridspec_kw={"width_ratios": [1.1, 1]})
    xy, t = result.xy, result.t
    pad = 0.4
    lo = np.minimum(xy.min(axis=0), [0.0, 0.0]) - pad
    hi = np.maximum(xy.max(axis=0), [3.0, 5.0]) + pad
    xs = np.linspace(lo[0], hi[0], 2)
    ax.fill_between(xs, 3 * xs - 2, hi[1], color="C0", alpha=0.07, lw=0)
    ax.fill_between(xs, lo[1], 3 * xs - 2, color="C1", alpha=0.07, lw=0)
    ax.plot(xs, 3 * xs - 2, "k-", lw=1.2, label="t = −3x + y + 2 = 0 (s jumps)")
    ax.plot(xy[:, 0], xy[:, 1], "-", color="0.55", lw=0.7, zorder=1)
    side = t > 0
    ax.plot(xy[:-1][side, 0], xy[:-1][side, 1], "o", ms=3, color="C0",
            label="iterate with t > 0: s = (3, 5)")
    ax.plot(xy[:-1][~side, 0], xy[:-1][~side, 1], "o", ms=3, color="C1",
            label="iterate with t < 0: s = (0, 0)")
    P = result.period()
    if P is not None:
        cyc = np.r_[xy[-1 - P:-1], xy[-1 - P:-P]]
        ax.plot(cyc[:, 0], cyc[:, 1], "-", color="C3", lw=2, alpha=0.6,
                label=f"limit cycle (period {P})")
    flagged = result.unjustified_steps
    if flagged:
        ax.plot(xy[flagged, 0], xy[flagged, 1], "X", ms=13, color="C3", mec="k",
                label=f"layer warned: gradient not justified ({len(flagged)} step"
                      f"{'s' if len(flagged) != 1 else ''})", zorder=5)
    ax.plot([0, 3], [0, 5], "*", ms=14, color="k", zorder=4)
    ax.annotate("target (0, 0)\nwhen t < 0", (0, 0), (-10, 12), textcoords="offset points",
                ha="right")
    ax.annotate("target (3, 5)\nwhen t > 0", (3, 5), (0, -34), textcoords="offset points",
                ha="center")
    ax.annotate("start", xy[0], (10, 2), textcoords="offset points")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("(a) gradient descent through the layer (cf. paper Fig. 2a)")
    ax.legend(loc="lower right", fontsize=8)

    k = np.arange(len(t))
    ax_t.axhline(0, color="k", lw=1)
    ax_t.plot(k, t, "-", color="0.55", lw=0.7)
    ax_t.plot(k[side], t[side], "o", ms=3, color="C0")
    ax_t.plot(k[~side], t[~side], "o", ms=3, color="C1")
    if flagged:
        ax_t.plot(k[flagged], t[flagged], "X", ms=12, color="C3", mec="k")
    ax_t.set_xlabel("step")
    ax_t.set_ylabel("t = −3x + y + 2")
    ax_t.set_title(f"(b) t along the path: {result.crossings} crossings of t = 0")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> CyclicRun:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=LR, help="gradient step size")
    parser.add_argument("--start", type=float, nargs=2, default=START, metavar=("X", "Y"))
    parser.add_argument("--out", default="cyclic.png")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    result = run(steps=args.steps, lr=args.lr, start=tuple(args.start), verbose=not args.quiet)
    plot(result, args.out)
    print(summary(result))
    print(f"figure: {args.out}")
    return result


if __name__ == "__main__":
    main()
