"""The Lorenz-like dynamics of the reference paper (Section 5, eq. (14); Appendix E.2):
implicit differentiation through a degenerate layer turns gradient ascent on a
quadratic into a chaotic, Lorenz-like path.

With F the Lorenz vector field, F(x, y, z) = (σ(y − x), x(ρ − z) − y, xy − βz),
(σ, ρ, β) = (10, 28, 8/3),

    max_u uᵀs  s.t.  s = argmin_s Σᵢ (sᵢ − F(u)ᵢ)⁴          (14)

is the same problem as max_u g(u) = uᵀF(u) = ½uᵀHu (15), since the inner solution is
s = F(u). F(u) is computed in torch and fed to the layer as the parameter p. At s = p
the 4th power is flat to third order: the residual map's Jacobian U is singular in
directions that move s, the implicit function theorem does not apply, and the layer
says so with SingularJacobianWarning at every step. The gradient it returns is still
a number: as measured with the default selection ("lower"), it equals s + c·J_F(u)ᵀu
with c = 0.8 at every step (the summary prints the fitted c; the true derivative
ds/dp = I would give c = 1, the classical gradient Hu), so each step is 0.2 of an Euler step of
the Lorenz ODE plus 0.8 of a gradient step: the path winds around two lobes like the
Lorenz attractor (scaled up), while the classical gradient ascent on (15) runs off along
the unstable eigenvector of H, since (0, 0, 0) is a strict saddle.

The paper gives u(0) = (0, 1, 1.05) but neither the step size nor the number of steps
(Appendix E.2 only derives H); we use step 0.01 (the usual Euler step for this system;
0.02 diverges) and 1000 steps.

Run: python examples/paper/lorenz.py [--steps N] [--lr STEP] [--out FILE.png]
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import torch

from conelayers.exceptions import ConelayersWarning, SingularJacobianWarning
from conelayers.torch import CvxpyLayer

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0
U0 = (0.0, 1.0, 1.05)
LR = 0.01
H = np.array([[-2 * SIGMA, SIGMA + RHO, 0.0],
              [SIGMA + RHO, -2.0, 0.0],
              [0.0, 0.0, -2 * BETA]])  # uᵀF(u) = ½ uᵀHu (Appendix E.2.1)


def lorenz_field(u):
    """F(u) for a torch tensor or a NumPy array of shape (3,)."""
    x, y, z = u[0], u[1], u[2]
    parts = [SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z]
    return torch.stack(parts) if isinstance(u, torch.Tensor) else np.array(parts)


def lorenz_jacobian(u: np.ndarray) -> np.ndarray:
    x, y, z = u
    return np.array([[-SIGMA, SIGMA, 0.0], [RHO - z, -1.0, -x], [y, x, -BETA]])


def fourth_power_layer() -> CvxpyLayer:
    """p ↦ argmin_s Σᵢ (sᵢ − pᵢ)⁴ (= p, at a point where the Hessian vanishes)."""
    p = cp.Parameter(3, name="p")
    s = cp.Variable(3, name="s")
    problem = cp.Problem(cp.Minimize(cp.sum(cp.power(s - p, 4))))
    return CvxpyLayer(problem, parameters=[p], variables=[s])


@dataclass
class LorenzRun:
    lr: float
    path: np.ndarray  # (steps + 1, 3): implicit gradient ascent through the layer
    s: np.ndarray  # (steps, 3): the layer's inner solution
    grad: np.ndarray  # (steps, 3): the gradient the layer gave
    warned: list[set[str]] = field(default_factory=list)
    classical: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    ode: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    seconds: float = 0.0

    @property
    def singular_steps(self) -> int:
        return sum(SingularJacobianWarning.__name__ in w for w in self.warned)

    def implied_scale(self) -> np.ndarray:
        """Per step, the c that best explains the gradient as s + c·J_F(u)ᵀu, and the
        relative residual of that fit: (steps, 2)."""
        out = []
        for u, s, g in zip(self.path[:-1], self.s, self.grad):
            d = lorenz_jacobian(u).T @ u
            c = float(d @ (g - s) / (d @ d))
            out.append((c, np.linalg.norm(g - s - c * d) / np.linalg.norm(g)))
        return np.array(out)


def implicit_ascent(steps: int, lr: float, u0=U0, verbose: bool = True):
    layer = fourth_power_layer()
    u = torch.tensor(u0, dtype=torch.float64, requires_grad=True)
    path, s_all, grads, warned = [], [], [], []
    for k in range(steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConelayersWarning)
            (s,) = layer(lorenz_field(u))
            (g,) = torch.autograd.grad(u @ s, u)
        kinds = {w.category.__name__ for w in caught if issubclass(w.category, ConelayersWarning)}
        path.append(u.detach().numpy().copy())
        s_all.append(s.detach().numpy())
        grads.append(g.numpy())
        warned.append(kinds)
        if verbose and k % 100 == 0:
            print(f"step {k:5d}  u = {np.array2string(path[-1], precision=2)}  "
                  f"warnings: {', '.join(sorted(kinds)) or 'none'}")
        with torch.no_grad():
            u += lr * g
    path.append(u.detach().numpy().copy())
    return np.array(path), np.array(s_all), np.array(grads), warned


def classical_ascent(steps: int, lr: float, u0=U0, bound: float = 1e3) -> np.ndarray:
    """Gradient ascent on g(u) = uᵀF(u) by torch autograd, stopped once ‖u‖ > bound
    (it diverges geometrically along H's unstable eigenvector)."""
    u = torch.tensor(u0, dtype=torch.float64, requires_grad=True)
    path = [u.detach().numpy().copy()]
    for _ in range(steps):
        (g,) = torch.autograd.grad(u @ lorenz_field(u), u)
        with torch.no_grad():
            u += lr * g
        path.append(u.detach().numpy().copy())
        if np.linalg.norm(path[-1]) > bound:
            break
    return np.array(path)


def lorenz_ode(steps: int, dt: float, u0=U0) -> np.ndarray:
    """The Lorenz ODE itself (classical RK4), for reference (paper Fig. 3a)."""
    u = np.array(u0, dtype=float)
    out = [u.copy()]
    for _ in range(steps):
        k1 = lorenz_field(u)
        k2 = lorenz_field(u + dt / 2 * k1)
        k3 = lorenz_field(u + dt / 2 * k2)
        k4 = lorenz_field(u + dt * k3)
        u = u + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(u.copy())
    return np.array(out)


def run(steps: int = 1000, lr: float = LR, verbose: bool = True) -> LorenzRun:
    t0 = time.perf_counter()
    path, s, grad, warned = implicit_ascent(steps, lr, verbose=verbose)
    seconds = time.perf_counter() - t0
    return LorenzRun(lr, path, s, grad, warned, classical_ascent(100_000, lr),
                     lorenz_ode(4000, LR), seconds)


def summary(result: LorenzRun) -> str:
    steps = len(result.warned)
    fit = result.implied_scale()
    s_err = np.abs(result.s - np.array([lorenz_field(u) for u in result.path[:-1]])).max(axis=1)
    s_rel = s_err / np.abs(result.s).max(axis=1)
    x = result.path[:, 0]
    half = result.path[steps // 2:]
    evals, evecs = np.linalg.eigh(H)
    lead = evecs[:, np.argmax(evals)]
    direction = result.classical[-1] / np.linalg.norm(result.classical[-1])
    lines = [
        f"implicit gradient ascent through the layer: {steps} steps, step size {result.lr}, "
        f"{result.seconds:.1f} s",
        f"steps with SingularJacobianWarning: {result.singular_steps}/{steps}",
        f"inner solution s vs F(u): max relative error {s_rel.max():.1e}",
        f"the layer's gradient = s + c·J_F(u)ᵀu with c in [{fit[:, 0].min():.4f}, "
        f"{fit[:, 0].max():.4f}] (fit residual ≤ {fit[:, 1].max():.1e}); the true "
        "derivative ds/dp = I would give c = 1",
        f"path: sign changes of x (lobe switches) {int(np.sum(np.diff(np.sign(x)) != 0))}; "
        f"second half stays within ‖u‖∞ ≤ {np.abs(half).max():.0f} (bounded, not "
        "convergent: the only critical point of uᵀF(u) is the saddle 0)",
        f"classical gradient ascent on uᵀF(u): ‖u‖ > 1e3 after {len(result.classical) - 1} "
        f"steps, direction {np.array2string(direction, precision=3)} (H's unstable "
        f"eigenvector ±{np.array2string(lead, precision=3)}, eigenvalue {evals.max():.2f})",
    ]
    return "\n".join(lines)


def plot(result: LorenzRun, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(16, 5.8))
    panels = [
        (result.ode, "C0", f"(a) Lorenz ODE from u(0) = (0, 1, 1.05)\n(RK4, dt = {LR}, "
                            f"{len(result.ode) - 1} steps)"),
        (result.path, "C3", f"(b) implicit gradient ascent through the layer\n"
                            f"({len(result.warned)} steps of {result.lr}; SingularJacobian"
                            f"Warning at {result.singular_steps}/{len(result.warned)} steps)"),
        (result.classical, "C2", "(c) classical gradient ascent on uᵀF(u)\n"
                                 f"({len(result.classical) - 1} steps, until ‖u‖ > 1e3)"),
    ]
    for i, (path, color, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1, projection="3d")
        ax.plot(path[:, 0], path[:, 1], path[:, 2], "-", color=color, lw=0.6)
        ax.plot(*path[0], "ko", ms=4)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_zlabel("z")
        ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.97, bottom=0.04, top=0.88, wspace=0.08)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> LorenzRun:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=LR, help="gradient step size")
    parser.add_argument("--out", default="lorenz.png")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    result = run(steps=args.steps, lr=args.lr, verbose=not args.quiet)
    plot(result, args.out)
    print(summary(result))
    print(f"figure: {args.out}")
    return result


if __name__ == "__main__":
    main()
