"""Shared pieces of the reader tests: where the data live, and solving a ProblemFile
with the layer core."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from canonicalize.readers import ProblemFile
from conelayers.exceptions import InaccurateSolutionWarning
from conelayers.layer import LayerCore

DATA = Path(__file__).resolve().parent / "data"
# The repository's parent holds shared/ (here and in CI).
SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def shared_files(folder: str, pattern: str, fast: set[str]) -> list:
    """pytest params for the files of a shared data folder, those not in ``fast``
    marked slow; one skipped param with the reason when the folder is missing."""
    directory = SHARED / folder
    files = sorted(directory.glob(pattern)) if directory.is_dir() else []
    if not files:
        return [pytest.param(None, id=f"{folder}-missing", marks=pytest.mark.skip(
            reason=f"shared data folder {directory} is missing or has no {pattern} files"))]
    params = []
    for path in files:
        name = path.name.split(".")[0]
        marks = () if name in fast else (pytest.mark.slow,)
        params.append(pytest.param(path, id=name, marks=marks))
    return params


@dataclass
class Solved:
    objective: float  # in the file's own sense
    x: np.ndarray  # the cone program's primal
    y: np.ndarray
    iterations: int
    scs_time: float
    total_time: float
    status: str
    result: object


def solve(problem: ProblemFile, settings: dict, allow_inaccurate: bool = False) -> Solved:
    """Solve with ``LayerCore.from_program(program).forward``; the objective comes from
    the (refined) cone solution. Fails on an inaccurate-solution warning unless
    ``allow_inaccurate``."""
    core = LayerCore.from_program(problem.program)
    start = time.perf_counter()
    with warnings.catch_warnings():
        if allow_inaccurate:
            warnings.simplefilter("ignore", InaccurateSolutionWarning)
        else:
            warnings.simplefilter("error", InaccurateSolutionWarning)
        result = core.forward(problem.values(), settings)
    total = time.perf_counter() - start
    x, y, _s = result.residuals[0].solution_from_z(result.points[0])
    sol = result.solutions[0]
    return Solved(
        objective=problem.objective(x), x=x, y=y, iterations=sol.iterations,
        scs_time=sol.solve_time, total_time=total, status=sol.status, result=result,
    )


def report(name: str, solved: Solved, reference: float) -> str:
    rel = abs(solved.objective - reference) / max(abs(reference), 1e-300)
    return (f"{name}: objective {solved.objective:.10g} vs reference {reference:.10g} "
            f"(rel {rel:.2e}), {solved.iterations} SCS iterations, SCS {solved.scs_time:.2f} s, "
            f"total {solved.total_time:.2f} s, status {solved.status}")
