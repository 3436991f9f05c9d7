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


class SettingsError(ConelayersError, ValueError):
    """A ``solver_args`` entry is unknown or has an invalid value; the message names it."""


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
    """The solver stopped with an inaccurate status (e.g. ``max_iters`` reached), or the
    solution's residual ‖N(z)‖ stayed too large after Newton refinement for the gradient
    to be accurate.

    What to do: raise ``max_iters`` or tighten ``eps_abs``/``eps_rel`` in ``solver_args``;
    the values and gradients of the flagged instances may be off.
    """


class FailedInstanceWarning(ConelayersWarning):
    """With ``solver_args={"on_failure": "nan"}``: some instances of a batch have no
    solution (infeasible, unbounded, solver failure). Their outputs are NaN and their
    gradients zero; the message lists the batch indices and statuses. The other
    instances are solved and differentiated as usual.
    """


class TrustWarning(ConelayersWarning):
    """Base class of the warnings about whether the conservative implicit function
    theorem justifies the gradient (Theorem 2 / Corollary 1 of the reference paper)."""


class NonsmoothPointWarning(TrustWarning):
    """Some constraints sit at a kink of the cone projection (strict complementarity
    fails: a constraint is active with a zero multiplier, or a PSD/SOC block is at the
    boundary of its pieces).

    The gradient is then one element (the named ``selection``) of a set-valued
    conservative Jacobian: it is justified (it still drives gradient methods to
    Clarke-critical points) but not unique. Informative; compare the two one-sided
    behaviours with ``solver_args={"selection": "lower"}`` and ``{"selection": "upper"}``.
    """


class SingularJacobianWarning(TrustWarning):
    """The Jacobian U of the residual map is (numerically) singular in directions that
    reach the requested outputs, at the selection used or at an extreme selection of
    the Clarke Jacobian on the kinks, or the adjoint system is inconsistent there.

    The gradient is not justified: the implicit function theorem does not apply, and
    gradient dynamics through such points can cycle or behave chaotically. What to do:
    make the problem strongly convex in the outputs (add a small quadratic or entropy
    term), remove redundant constraints or duplicated features, or move away from the
    degenerate parameter value.
    """


class NonUniqueSolutionWarning(TrustWarning):
    """The requested outputs are not unique: a whole segment of solutions (primal or
    dual, as the message says) passes through the returned one, along a direction that
    moves the outputs. The solver returned one of them, and the gradient describes that
    arbitrary choice. What to do: regularize (e.g. a small ‖x‖² term), or request only
    outputs that are unique.
    """


def shortened(items: Sequence[str], shown: int = 5, sep: str = ", ") -> str:
    """The first ``shown`` items joined by ``sep``, then 'and N more' (after a space for
    ", ", after ``sep`` otherwise): long lists in messages."""
    text = sep.join(items[:shown])
    if len(items) <= shown:
        return text
    return text + (" " if sep == ", " else sep) + f"and {len(items) - shown} more"


def describe_failures(failures: dict[int, str], shown: int = 5) -> str:
    """'instance 2: infeasible, instance 5: unbounded' (the first ``shown``, then 'and N
    more': the error's ``failures`` has them all)."""
    return shortened([f"instance {i}: {status}" for i, status in sorted(failures.items())],
                     shown)


def batch_label(indices: Sequence[int], batch: int | None = None) -> str:
    """'instance 3', or 'instances 2, 5' (with ``batch``: 'instances 2, 5 (2 of 8 in
    the batch)')."""
    if len(indices) == 1:
        return f"instance {indices[0]}"
    count = f" ({len(indices)} of {batch} in the batch)" if batch is not None else ""
    return f"instances {', '.join(map(str, indices))}{count}"


def first_few(indices: Sequence[int], shown: int = 5) -> str:
    """'1, 3' or '0, 1, 2, 3, 4 and 3 more': a list of batch instances in a message."""
    return shortened([str(int(i)) for i in indices], shown)
