"""Solver limits (shared with the report): with max_iters = 1..5 the layer must warn
(InaccurateSolutionWarning naming the instance, SCS's status, iterations and residuals)
or raise a SolverError carrying the same, never return a silently wrong gradient: when
nothing was said, the gradient must match the tight-tolerance gradient to 1e-5."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np

from conelayers.exceptions import ConelayersError, InaccurateSolutionWarning, SolverError
from conelayers.layer import LayerCore
from tests import zoo

GRAD_RTOL = 1e-5
TIGHT = {"eps": 1e-10}


@dataclass
class LimitOutcome:
    outcome: str  # "warned", "solver_error", "accurate", "silent_failure", "crash"
    detail: str


@cache
def reference(name: str):
    """(core, values, weights, tight outputs, tight gradient) of a zoo problem."""
    z = zoo.make(name)
    core = LayerCore(z.problem, z.parameters, z.variables)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tight = core.forward(z.values, TIGHT)
        rng = np.random.default_rng(0)
        weights = [rng.standard_normal(o.shape) for o in tight.outputs]
        grad = np.concatenate([g.ravel() for g in core.vjp(tight, weights)])
    return core, z.values, weights, [o.copy() for o in tight.outputs], grad


def _names_status_and_residuals(text: str) -> bool:
    return (re.search(r"instance \d+", text) is not None
            and re.search(r"status|solved_inaccurate|failed|infeasible|unbounded", text)
            is not None
            and "residual" in text and "iteration" in text)


def limited_outcome(name: str, max_iters: int, refine: bool) -> LimitOutcome:
    core, values, weights, tight_outs, tight_grad = reference(name)
    args = {"max_iters": max_iters, "refine": refine}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = core.forward(values, args)
            grad = np.concatenate([g.ravel() for g in core.vjp(result, weights)])
        except SolverError as err:
            ok = _names_status_and_residuals(str(err))
            return LimitOutcome("solver_error" if ok else "unclear_error",
                                f"{type(err).__name__}: {err}")
        except ConelayersError as err:
            return LimitOutcome("unclear_error", f"{type(err).__name__}: {err}")
        except Exception as err:  # noqa: BLE001
            return LimitOutcome("crash", f"{type(err).__name__}: {err}")
    inaccurate = [str(w.message) for w in caught
                  if issubclass(w.category, InaccurateSolutionWarning)]
    if inaccurate:
        if all(_names_status_and_residuals(m) for m in inaccurate):
            return LimitOutcome("warned", inaccurate[0])
        return LimitOutcome("unclear_error", "warning without status/residuals: "
                            + inaccurate[0])
    err = np.linalg.norm(grad - tight_grad) / max(np.linalg.norm(tight_grad), 1e-12)
    out_err = max(float(np.abs(o - t).max()) for o, t in zip(result.outputs, tight_outs))
    finite = np.all(np.isfinite(grad))
    if finite and err <= GRAD_RTOL:
        return LimitOutcome("accurate", f"gradient error {err:.1e}, output error {out_err:.1e}")
    return LimitOutcome("silent_failure",
                        f"no warning, gradient error {err:.1e}, output error {out_err:.1e}")
