"""Sensitivity analysis without a framework: how an optimal solution (and the optimal
value) move with the problem's data, and whether that derivative can be trusted.

    >>> sens = conelayers.sensitivity.analyze(problem)      # parameters' current values
    >>> sens.values["x"]                                      # the solution
    >>> sens.jvp({"b": db})                                   # d(solution) for a change of b
    >>> sens.vjp({"x": w})                                    # gradient of ⟨w, x⟩ per parameter
    >>> sens.jacobian()                                       # dense, for small problems
    >>> sens.objective_gradient()                             # d(optimal value)/d(parameter)
    >>> sens.report.verdict                                   # 'ok', 'nonsmooth', 'singular', ...

Results are keyed by the CVXPY names of the variables and parameters (for a problem
file: "x", "y" and "A", "b", "c", "P"), and carry the trust-check report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from canonicalize import ParametricConeProgram
from conelayers.checks import CheckReport
from conelayers.exceptions import ParameterError, ProblemError
from conelayers.layer import ForwardResult, LayerCore, divide_by_log_values


@dataclass
class Sensitivity:
    """A solved instance with its derivatives (see the module docstring)."""

    core: LayerCore
    result: ForwardResult
    parameter_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @property
    def program(self) -> ParametricConeProgram:
        return self.core.program

    @property
    def values(self) -> dict[str, np.ndarray]:
        return {n: o[0] for n, o in zip(self.output_names, self.result.outputs)}

    @property
    def objective(self) -> float:
        """The optimal value in the problem's own sense (maximization and log-log convex
        problems included: CVXPY's problem.value)."""
        value = self._program_objective()
        return float(np.exp(value)) if self.program.objective_exp else value

    def _program_objective(self) -> float:
        """sign·p* of the cone program (log of the objective of a log-log convex one)."""
        prog = self.program
        residual, z = self.result.residuals[0], self.result.points[0]
        x, _, _ = residual.solution_from_z(z)
        data = residual.program
        theta_tilde = prog.theta_tilde(self.result.theta[:, 0])
        value = float(data.c @ x) + float(prog.offset(theta_tilde)[0])
        if data.P is not None:
            value += 0.5 * float(x @ (data.P @ x))
        return prog.objective_sign * value

    @property
    def report(self) -> CheckReport:
        return self.result.check(self.program)[0]

    def _by_name(self, given: Mapping[str, np.ndarray], names, shapes, what: str) -> list:
        unknown = set(given) - set(names)
        if unknown:
            raise ParameterError(
                f"unknown {what} {sorted(unknown)}; known: {', '.join(names)}"
            )
        out = []
        for name, shape in zip(names, shapes):
            if name not in given:
                out.append(np.zeros(shape))
                continue
            try:
                arr = np.asarray(given[name], dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ParameterError(
                    f"{what} '{name}': expected numbers of shape {shape}, got "
                    f"{given[name]!r:.60} ({err})"
                ) from None
            if arr.shape != tuple(shape):
                raise ParameterError(f"{what} '{name}': expected shape {shape}, got {arr.shape}")
            out.append(arr)
        return out

    def jvp(self, dparams: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Directional derivative of every output for a change of the named parameters
        (others held fixed)."""
        shapes = [s.shape for s in self.program.parameters]
        tangents = self._by_name(dparams, self.parameter_names, shapes, "parameter")
        outs = self.core.jvp(self.result, tangents)
        return {n: o[0] for n, o in zip(self.output_names, outs)}

    def vjp(self, doutputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Gradient of Σ⟨doutputs[v], v⟩ with respect to every parameter."""
        shapes = [r.shape for r in self.program.recoveries]
        cot = self._by_name(doutputs, self.output_names, shapes, "output")
        grads = self.core.vjp(self.result, [c[None] for c in cot])
        return dict(zip(self.parameter_names, grads))

    def jacobian(
        self, outputs: Sequence[str] | None = None, parameters: Sequence[str] | None = None
    ) -> dict[tuple[str, str], np.ndarray]:
        """Dense Jacobians d output / d parameter, each of shape
        output.shape + parameter.shape (one vjp per output entry: for small problems)."""
        outputs = list(outputs or self.output_names)
        parameters = list(parameters or self.parameter_names)
        shapes = dict(zip(self.output_names, (r.shape for r in self.program.recoveries)))
        pshapes = dict(zip(self.parameter_names, (s.shape for s in self.program.parameters)))
        jac = {}
        for name in outputs:
            rows = []
            for k in range(int(np.prod(shapes[name], dtype=int))):
                e = np.zeros(int(np.prod(shapes[name], dtype=int)))
                e[k] = 1.0
                g = self.vjp({name: e.reshape(shapes[name])})
                rows.append(g)
            for p in parameters:
                stacked = np.stack([r[p] for r in rows]) if rows else np.zeros((0,))
                jac[(name, p)] = stacked.reshape(tuple(shapes[name]) + tuple(pshapes[p]))
        return jac

    def objective_gradient(self) -> dict[str, np.ndarray]:
        """d(optimal value)/d(parameter) by the envelope theorem: the gradient of the
        Lagrangian ½xᵀPx + cᵀx + yᵀ(Ax − b) in the data at the solution, i.e.
        ∂/∂c = x, ∂/∂b = −y, ∂/∂A = y xᵀ, ∂/∂P = ½ x xᵀ (then through θ ↦ data)."""
        prog = self.program
        x, y, _ = self.result.residuals[0].solution_from_z(self.result.points[0])
        A_bar = self.core.A_pattern.outer(y, x)
        P_bar = 0.5 * self.core.P_pattern.outer(x, x) if self.core.P_pattern else None
        theta_tilde = prog.theta_tilde(self.result.theta[:, 0])
        theta_bar = prog.data_adjoint(A_bar, -y, x, P_bar, offset_bar=np.ones(1),
                                      theta_tilde=theta_tilde)
        theta_bar = prog.objective_sign * theta_bar
        if prog.objective_exp:  # d exp(v) = exp(v) dv
            theta_bar = self.objective * theta_bar
        divide_by_log_values(theta_bar, prog, self.result.theta[:, 0])
        return dict(zip(self.parameter_names, prog.split_theta(theta_bar)))


def analyze(
    problem: cp.Problem,
    parameters: Sequence[cp.Parameter] | None = None,
    variables: Sequence[cp.Variable] | None = None,
    values: Sequence[np.ndarray] | None = None,
    solver_args: dict | None = None,
    checks: str = "fast",
    gp: bool = False,
) -> Sensitivity:
    """Solve a CVXPY problem at its parameters' values (or ``values``) and return its
    sensitivities. ``variables`` defaults to all of the problem's variables."""
    parameters = list(parameters if parameters is not None else problem.parameters())
    variables = list(variables if variables is not None else problem.variables())
    if values is None:
        missing = [p.name() for p in parameters if p.value is None]
        if missing:
            raise ParameterError(f"parameters without a value: {', '.join(missing)}")
        values = [np.asarray(p.value, dtype=np.float64) for p in parameters]
    core = LayerCore(problem, parameters, variables, gp=gp, checks=checks)
    return _analyze_core(core, values, solver_args,
                         tuple(p.name() for p in parameters), tuple(v.name() for v in variables))


def analyze_program(
    program: ParametricConeProgram,
    theta: np.ndarray,
    solver_args: dict | None = None,
    checks: str = "fast",
) -> Sensitivity:
    """The same for a compiled program (e.g. a problem file) at parameter vector θ."""
    core = LayerCore.from_program(program, checks=checks)
    values = program.split_theta(theta)
    return _analyze_core(core, values, solver_args,
                         tuple(s.name for s in program.parameters),
                         tuple(r.name for r in program.recoveries))


def _analyze_core(core, values, solver_args, parameter_names, output_names) -> Sensitivity:
    # jvp/vjp address parameters and outputs by name: two with one name are ambiguous.
    for names, what in ((parameter_names, "parameters"), (output_names, "variables")):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ProblemError(
                f"{what} share the name(s) {', '.join(map(repr, dupes))}: the sensitivity "
                "API addresses them by name; give each a distinct name"
            )
    for arr, name in zip(values, parameter_names):
        if np.ndim(arr) and np.shape(arr)[0] == 0:
            raise ParameterError(f"parameter '{name}' is empty")
    result = core.forward(list(values), solver_args)
    if result.batch is not None:
        raise ParameterError("sensitivity analysis takes one instance, not a batch")
    return Sensitivity(core, result, parameter_names, output_names)
