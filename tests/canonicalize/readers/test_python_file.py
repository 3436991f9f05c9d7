"""Python-file reader: the module-level `problem` compiles with its parameters' values
as θ (column-major), solves to CVXPY's own value (Maximize → objective_sign −1), and
files that fail get errors naming the file and line."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from canonicalize.readers import ProblemFileError, read_problem
from tests.canonicalize.readers.helpers import DATA, report, solve


def test_portfolio_matches_cvxpy():
    problem = read_problem(DATA / "portfolio.py")
    assert problem.format == "python" and problem.objective_sign == -1.0
    cvx = problem.metadata["problem"]
    assert [s.name for s in problem.program.parameters] == ["mu", "gamma", "B", "d"]
    for value, param in zip(problem.values(), problem.metadata["parameters"]):
        np.testing.assert_array_equal(value, param.value)  # θ round-trips, matrices too
    reference = cvx.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11,
                          tol_feas=1e-11)
    solved = solve(problem, {"eps": 1e-9, "max_iters": 100_000})
    print(report("portfolio.py", solved, reference))
    assert solved.objective == pytest.approx(reference, rel=1e-6)
    (w,) = problem.metadata["variables"]
    np.testing.assert_allclose(solved.result.outputs[0][0], w.value, atol=1e-5)


def test_optimal_value_is_metadata(tmp_path):
    path = tmp_path / "known.py"
    path.write_text("import cvxpy as cp\nx = cp.Variable()\n"
                    "problem = cp.Problem(cp.Minimize(cp.abs(x - 2) + 1))\noptimal_value = 1.0\n")
    problem = read_problem(path)
    assert problem.optimal_value == 1.0 and problem.objective_sign == 1.0
    assert solve(problem, {"eps": 1e-9}).objective == pytest.approx(1.0, abs=1e-7)


HEAD = "import cvxpy as cp\nx = cp.Variable()\n"
FAILING = [
    ("syntax", HEAD + "y = (\n", 3, "syntax error"),
    ("raises", HEAD + "raise ValueError('boom')\n", 3, "running the file raised ValueError: boom"),
    ("not-problem", HEAD + "problem = 3\n", 3, "'problem' is a int, expected a cvxpy.Problem"),
    ("no-value", HEAD + "p = cp.Parameter(name='p')\n\nproblem = cp.Problem(cp.Minimize(p * x),"
                        " [x >= 0])\n", 5, "parameter 'p' has no value"),
    ("nan-value", HEAD + "import numpy as np\np = cp.Parameter(name='p', value=np.nan)\n"
                         "problem = cp.Problem(cp.Minimize(p * x), [x >= 0])\n", 4,
     "running the file raised ValueError: Parameter value must be real"),  # CVXPY's check
    ("not-dcp", HEAD + "problem = cp.Problem(cp.Maximize(cp.square(x)))\n", 3,
     "cannot compile 'problem'"),
    ("optimal-value", HEAD + "problem = cp.Problem(cp.Minimize(x), [x >= 0])\n"
                             "optimal_value = 'zero'\n", 4, "'optimal_value' is not a number"),
]


@pytest.mark.parametrize("text,line,fragment",
                         [pytest.param(t, ln, f, id=i) for i, t, ln, f in FAILING])
def test_failing_files_name_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(ProblemFileError) as info:
        read_problem(path)
    assert str(info.value).startswith(f"bad.py:{line}: "), str(info.value)
    assert fragment in str(info.value)


def test_missing_problem(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text(HEAD)
    with pytest.raises(ProblemFileError, match=r"^empty\.py: the file defines no "
                                                r"module-level 'problem'"):
        read_problem(path)
