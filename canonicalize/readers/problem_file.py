"""The result of reading a problem file: a fixed cone program in SCS form whose data are
parameters, the θ of the file's data, and how to report the objective in the file's
own sense."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from canonicalize.cones import ConeDims
from canonicalize.program import ConstraintRows, ParametricConeProgram, fixed_program


@dataclass(frozen=True, eq=False)
class ProblemFile:
    """A problem read from a file.

    path: the file read.
    format: "sdpa", "maros_meszaros", "cbf" or "python".
    program: the cone program min ½xᵀPx + cᵀx s.t. Ax + s = b, s ∈ K (SCS's form). For
        the data formats it is a fixed program (``canonicalize.program.fixed_program``):
        its parameters are the stored entries of A, b, c (and P) and its outputs are
        x and y. For Python files it is the compiled CVXPY problem.
    theta: the parameter vector θ of the file's data (``values()`` splits it per slot).
    objective_sign: +1, or −1 when the file's objective is a maximization; the
        objective in the file's own sense is
        ``objective_sign · (½xᵀPx + cᵀx + offset)`` (see ``objective``).
    description: a one-line summary of sizes and cones.
    metadata: format-specific facts (e.g. row maps back to the file's constraints,
        ``optimal_value`` when the file carries one).
    """

    path: Path
    format: str
    program: ParametricConeProgram
    theta: np.ndarray
    objective_sign: float = 1.0
    description: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The file's name without directory and format suffix (e.g. "qap5")."""
        name = self.path.name
        if name.lower().endswith(".gz"):
            name = name[:-3]
        for suffix in (".dat-s", ".mat", ".cbf", ".py"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name

    @property
    def optimal_value(self) -> float | None:
        """The optimal value the file states (in the file's sense), if any."""
        value = self.metadata.get("optimal_value")
        return None if value is None else float(value)

    def values(self, theta: np.ndarray | None = None) -> list[np.ndarray]:
        """θ split into one array per parameter slot, shaped as the slot (column-major),
        ready for ``LayerCore.forward``."""
        return self.program.split_theta(self.theta if theta is None else theta)

    def objective(self, x: np.ndarray, theta: np.ndarray | None = None) -> float:
        """The objective at the cone program's primal x, in the file's own sense:
        ``objective_sign · (½xᵀPx + cᵀx + offset)``."""
        x = np.asarray(x, dtype=np.float64).ravel()
        theta = self.theta if theta is None else np.asarray(theta, dtype=np.float64)
        data = self.program.data(theta)
        value = float(data["c"] @ x) + float(np.ravel(data["offset"])[0])
        if self.program.P is not None:
            P = self.program.P.matrix(data["P_values"])
            value += 0.5 * float(x @ (P @ x))
        return self.objective_sign * value


def describe(fmt: str, program: ParametricConeProgram, sense: str, extra: str = "") -> str:
    """A one-line summary: sizes, cones, nonzeros and sense."""
    text = (
        f"{fmt}: {sense} over {program.n} variables, {program.m} cone rows "
        f"({program.dims.describe()}), nnz(A) = {program.A.nnz}"
    )
    if program.P is not None:
        text += f", nnz(P) = {program.P.nnz}"
    return text + (f"; {extra}" if extra else "")


def fixed_problem_file(
    path: Path,
    fmt: str,
    A: sp.spmatrix,
    b: np.ndarray,
    c: np.ndarray,
    dims: ConeDims,
    *,
    P: sp.spmatrix | None = None,
    offset: float = 0.0,
    objective_sign: float = 1.0,
    constraints: Sequence[ConstraintRows] = (),
    metadata: Mapping[str, Any] | None = None,
    extra_description: str = "",
) -> ProblemFile:
    """Wrap SCS data read from a file as a fixed program and a ProblemFile."""
    program, theta = fixed_program(A, b, c, dims, P=P, offset=offset)
    program = dataclasses.replace(
        program, constraints=tuple(constraints), objective_sign=float(objective_sign)
    )
    sense = "maximize" if objective_sign < 0 else "minimize"
    return ProblemFile(
        path=Path(path),
        format=fmt,
        program=program,
        theta=theta,
        objective_sign=float(objective_sign),
        description=describe(fmt, program, sense, extra_description),
        metadata=dict(metadata or {}),
    )
