"""A Python file that defines a CVXPY problem.

Convention (the file is executed, so read only files you trust):

- a module-level variable ``problem`` holds a ``cvxpy.Problem`` (DCP and DPP; not a
  log-log convex one);
- every parameter of ``problem`` has a value (``cp.Parameter(..., value=...)`` or
  ``p.value = ...``);
- optionally, a module-level ``optimal_value`` (a number, in the problem's own sense:
  the value CVXPY's ``problem.solve()`` returns) is kept as
  ``metadata["optimal_value"]``.

The file runs with ``__name__`` set to ``"__conelayers_problem__"``, so code under
``if __name__ == "__main__":`` does not run.

The result is ``canonicalize.compile_problem(problem, problem.parameters(),
problem.variables())``: its parameters are the problem's parameters (in
``problem.parameters()`` order) and its outputs are the problem's variables (in
``problem.variables()`` order). θ holds each parameter's value flattened in
column-major (Fortran) order at its slot, so ``ProblemFile.values()`` gives back the
values. A ``Maximize`` objective has objective_sign −1 (CVXPY minimizes its negation),
so ``objective_sign · (½xᵀPx + cᵀx + offset)`` at the cone program's x is the problem's
value.
"""

from __future__ import annotations

import ast
import runpy
import traceback
from pathlib import Path

import cvxpy as cp
import numpy as np

from canonicalize.cvxpy_frontend import compile_problem
from canonicalize.errors import CanonicalizationError
from canonicalize.readers._text import read_text
from canonicalize.readers.errors import ProblemFileError
from canonicalize.readers.problem_file import ProblemFile, describe

RUN_NAME = "__conelayers_problem__"


def _assignment_line(source: str, name: str) -> int | None:
    """The line of the last top-level assignment to ``name`` (None if there is none)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    line = None
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name) and target.id == name:
                line = node.lineno
    return line


def _error_line(err: BaseException, path: Path) -> int | None:
    """The line of the innermost traceback frame that belongs to the file."""
    line = None
    resolved = str(path.resolve())
    for frame in traceback.extract_tb(err.__traceback__):
        try:
            if str(Path(frame.filename).resolve()) == resolved:
                line = frame.lineno
        except (OSError, ValueError):
            continue
    return line


def read_python_file(path: str | Path) -> ProblemFile:
    """Execute the file and compile its module-level ``problem`` (see the module
    docstring for the convention). Raises ProblemFileError naming the file and line."""
    path = Path(path)
    source = read_text(path)
    try:
        compile(source, str(path), "exec")
    except SyntaxError as err:
        raise ProblemFileError(path, f"syntax error: {err.msg}", err.lineno) from err
    try:
        namespace = runpy.run_path(str(path), run_name=RUN_NAME)
    except (Exception, SystemExit) as err:
        raise ProblemFileError(
            path, f"running the file raised {type(err).__name__}: {err}", _error_line(err, path)
        ) from err

    line = _assignment_line(source, "problem")
    if "problem" not in namespace:
        raise ProblemFileError(path, "the file defines no module-level 'problem' "
                                     "(a cvxpy.Problem)")
    problem = namespace["problem"]
    if not isinstance(problem, cp.Problem):
        raise ProblemFileError(
            path, f"'problem' is a {type(problem).__name__}, expected a cvxpy.Problem", line
        )
    parameters = problem.parameters()
    variables = problem.variables()
    for p in parameters:
        if p.value is None:
            raise ProblemFileError(path, f"parameter '{p.name()}' has no value", line)
        if not np.all(np.isfinite(np.asarray(p.value, dtype=np.float64))):
            raise ProblemFileError(path, f"parameter '{p.name()}' has NaN or Inf values", line)
    try:
        program = compile_problem(problem, parameters, variables)
    except CanonicalizationError as err:
        raise ProblemFileError(path, f"cannot compile 'problem': {err}", line) from err
    except Exception as err:  # cvxpy's own errors (e.g. DCPError, SolverError)
        raise ProblemFileError(
            path, f"cannot compile 'problem': {type(err).__name__}: {err}", line
        ) from err

    theta = np.zeros(program.num_theta)
    for slot, p in zip(program.parameters, parameters):
        value = np.asarray(p.value, dtype=np.float64)
        theta[slot.offset : slot.offset + slot.size] = value.ravel(order="F")
    sign = -1.0 if isinstance(problem.objective, cp.Maximize) else 1.0
    meta: dict = {
        "problem": problem,
        "parameters": tuple(parameters),
        "variables": tuple(variables),
    }
    if "optimal_value" in namespace:
        try:
            meta["optimal_value"] = float(namespace["optimal_value"])
        except (TypeError, ValueError) as err:
            raise ProblemFileError(
                path, f"'optimal_value' is not a number ({err})",
                _assignment_line(source, "optimal_value"),
            ) from err
    sense = "maximize" if sign < 0 else "minimize"
    extra = (f"{len(parameters)} parameters ({', '.join(p.name() for p in parameters)}), "
             f"{len(variables)} variables ({', '.join(v.name() for v in variables)})")
    return ProblemFile(
        path=path,
        format="python",
        program=program,
        theta=theta,
        objective_sign=sign,
        description=describe("python", program, sense, extra),
        metadata=meta,
    )
