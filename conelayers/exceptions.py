"""Errors and warnings of conelayers. All errors derive from ``ConelayersError`` and all
warnings from ``ConelayersWarning``, so either can be caught or filtered as a family."""

from __future__ import annotations

from collections.abc import Sequence


class ConelayersError(Exception):
    """Base class of every error raised by conelayers."""


class ProblemError(ConelayersError, ValueError):
    """The CVXPY problem, its parameter list or its requested outputs are not usable
    (not DCP/DPP, parameters that differ from the problem's, unknown variables)."""


class ParameterError(ConelayersError, ValueError):
    """A parameter value given at call time is wrong (shape, batch size, dtype, NaN,
    sign); the message names the parameter."""


class SolverError(ConelayersError, RuntimeError):
    """SCS did not return a solution for some instances of the batch.

    ``failures`` maps each failing batch index to the solver's status string; the other
    instances were still solved.
    """

    def __init__(self, message: str, failures: dict[int, str] | None = None) -> None:
        super().__init__(message)
        self.failures = dict(failures or {})


class InfeasibleError(SolverError):
    """Some instance is (primal) infeasible: no point satisfies the constraints."""


class UnboundedError(SolverError):
    """Some instance is unbounded (dual infeasible): the objective can decrease forever."""


class ConelayersWarning(UserWarning):
    """Base class of every warning emitted by conelayers."""


class InaccurateSolutionWarning(ConelayersWarning):
    """The solver stopped with an inaccurate status (e.g. ``max_iters`` reached) or with
    residuals too large for the requested gradient accuracy.

    What to do: raise ``max_iters`` or tighten ``eps_abs``/``eps_rel`` in ``solver_args``;
    the values and gradients of the flagged instances may be off.
    """


def describe_failures(failures: dict[int, str]) -> str:
    """'instance 2: infeasible, instance 5: unbounded'."""
    return ", ".join(f"instance {i}: {status}" for i, status in sorted(failures.items()))


def batch_label(indices: Sequence[int]) -> str:
    return "instance" + ("s " if len(indices) != 1 else " ") + ", ".join(map(str, indices))
