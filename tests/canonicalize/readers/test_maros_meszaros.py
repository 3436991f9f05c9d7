"""Maros–Meszaros reader: every .mat file in the shared data solves to the optimum of
the QP built directly from its fields by CVXPY with a second solver (Clarabel, HiGHS
when Clarabel fails), the rows follow the documented layout, gradients flow to the
data, and malformed files get errors naming the file and field."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from canonicalize.readers import ProblemFileError, UnsupportedFeatureError, read_problem
from canonicalize.readers.maros_meszaros import read_maros_meszaros
from conelayers.layer import LayerCore
from tests.canonicalize.readers.helpers import report, shared_files, solve

# All measured well under 1 s each (SCS ≤ 8000 iterations).
FAST = {"CVXQP1_S", "DUALC1", "GENHS28", "HS118", "HS21", "HS35", "LOTSCHD", "PRIMALC1",
        "QAFIRO", "QPTEST"}
SETTINGS = {"eps": 1e-7, "max_iters": 100_000}
MM_PARAMS = shared_files("maros_meszaros", "*.mat", FAST)


def reference_value(path) -> tuple[float, str]:
    """The QP min ½xᵀPx + qᵀx + r s.t. l ≤ Ax ≤ u straight from the file's fields (±1e20
    as infinite), solved by Clarabel at 1e-9; Clarabel wrongly reports PRIMALC1
    unbounded after one iteration (the file's rows bound every variable), so HiGHS's QP
    solver is the fallback."""
    d = scipy.io.loadmat(str(path))
    P = sp.csc_matrix(d["P"], dtype=float)
    q = np.asarray(d["q"], dtype=float).ravel()
    r = float(np.asarray(d["r"], dtype=float).ravel()[0])
    A = sp.csr_matrix(d["A"], dtype=float)
    lo = np.asarray(d["l"], dtype=float).ravel()
    up = np.asarray(d["u"], dtype=float).ravel()
    x = cp.Variable(q.size)
    constraints = []
    if (up < 1e20).any():
        constraints.append(A[up < 1e20] @ x <= up[up < 1e20])
    if (lo > -1e20).any():
        constraints.append(A[lo > -1e20] @ x >= lo[lo > -1e20])
    objective = 0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x + r
    problem = cp.Problem(cp.Minimize(objective), constraints)
    try:
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9)
        if problem.status == cp.OPTIMAL:
            return float(problem.value), "CLARABEL"
    except cp.error.SolverError:
        pass
    problem.solve(solver=cp.HIGHS, verbose=False)
    assert problem.status == cp.OPTIMAL, problem.status
    return float(problem.value), "HIGHS"


@pytest.mark.parametrize("path", MM_PARAMS)
def test_objective_matches_second_solver(path):
    problem = read_problem(path)
    assert problem.format == "maros_meszaros" and problem.objective_sign == 1.0
    reference, solver = reference_value(path)
    solved = solve(problem, SETTINGS)
    print(report(f"{problem.name} (reference {solver})", solved, reference))
    assert solved.objective == pytest.approx(reference, rel=1e-4)


def _save(tmp_path, name="qp.mat", **fields):
    path = tmp_path / name
    scipy.io.savemat(str(path), fields)
    return path


def _small(**override):
    """min ½(x0² + 2 x1²) − x0 + 7 s.t. x0 + x1 = 1, −1 ≤ x0 − x1 ≤ 0.5, x1 ≤ 5, a free
    row; integer dtypes as in the shared files (uint8 u must not wrap when negated)."""
    fields = {
        "P": sp.csc_matrix(np.diag([1.0, 2.0])),
        "q": np.array([[-1], [0]], dtype=np.int16),
        "r": np.array([[7]], dtype=np.uint8),
        "A": sp.csc_matrix(np.array([[1.0, 1.0], [1.0, -1.0], [0.0, 1.0], [1.0, 0.0]])),
        "l": np.array([[1.0], [-1.0], [-1e20], [-1e20]]),
        "u": np.array([[1], [0.5], [5], [1e20]]),
    }
    fields.update(override)
    return fields


def test_row_layout(tmp_path):
    problem = read_maros_meszaros(_save(tmp_path, **_small()))
    prog = problem.program
    data = prog.data(problem.theta)
    A = prog.A.matrix(data["A_values"]).toarray()
    assert (prog.dims.zero, prog.dims.nonneg) == (1, 3)
    # zero: x0 + x1 = 1; nonneg: u − Ax for rows 1, 2, then Ax − l for row 1.
    np.testing.assert_array_equal(A, [[1, 1], [1, -1], [0, 1], [-1, 1]])
    np.testing.assert_array_equal(data["b"], [1, 0.5, 5, 1])
    np.testing.assert_array_equal(data["c"], [-1, 0])
    assert data["offset"].item() == 7.0
    np.testing.assert_array_equal(prog.P.matrix(data["P_values"]).toarray(), np.diag([1, 2]))
    rows = problem.metadata["rows"]
    assert list(rows["equality"]) == [0] and list(rows["upper"]) == [1, 2]
    assert list(rows["lower"]) == [1] and problem.metadata["free_rows"] == 1


def test_small_qp_objective(tmp_path):
    problem = read_maros_meszaros(_save(tmp_path, **_small()))
    x = cp.Variable(2)
    ref = cp.Problem(cp.Minimize(0.5 * (x[0] ** 2 + 2 * x[1] ** 2) - x[0] + 7),
                     [x[0] + x[1] == 1, x[0] - x[1] >= -1, x[0] - x[1] <= 0.5, x[1] <= 5])
    ref.solve(solver=cp.CLARABEL)
    assert solve(problem, {"eps": 1e-9}).objective == pytest.approx(ref.value, rel=1e-8)


def test_gradient_with_respect_to_q_matches_finite_differences(tmp_path):
    """The file's data are parameters: d(Σx*)/dq by the layer's vjp vs central
    differences of re-solves."""
    problem = read_maros_meszaros(_save(tmp_path, **_small()))
    core = LayerCore.from_program(problem.program)
    settings = {"eps": 1e-10, "max_iters": 100_000}
    values = problem.values()
    names = [s.name for s in problem.program.parameters]
    result = core.forward(values, settings)
    grads = core.vjp(result, [np.ones((1, 2)), None])
    g_c = grads[names.index("c")]
    h = 1e-5
    for k in range(2):
        plus = [v.copy() for v in values]
        minus = [v.copy() for v in values]
        plus[names.index("c")][k] += h
        minus[names.index("c")][k] -= h
        fd = (core.forward(plus, settings).outputs[0].sum()
              - core.forward(minus, settings).outputs[0].sum()) / (2 * h)
        assert g_c[k] == pytest.approx(fd, abs=1e-6)


@pytest.mark.parametrize("fields,fragment", [
    pytest.param({"P": None}, "missing field(s) P", id="missing"),
    pytest.param({"P": sp.csc_matrix(np.array([[1.0, 1.0], [0.0, 2.0]]))},
                 "P is not symmetric", id="asymmetric"),
    pytest.param({"P": sp.csc_matrix(np.eye(3))}, "field 'P' has shape (3, 3), expected (2, 2)",
                 id="P-shape"),
    pytest.param({"l": np.zeros((3, 1))}, "field 'l' has 3 entries, expected 4", id="l-size"),
    pytest.param({"u": np.array([[1], [-2.0], [5], [1e20]])},
                 "row 1 of A has bounds l = -1 > u = -2", id="l>u"),
    pytest.param({"A": sp.csc_matrix(np.ones((4, 3)))}, "field 'A' has 3 columns, expected 2",
                 id="A-cols"),
    pytest.param({"q": np.array([[np.nan], [0.0]])}, "field 'q' contains NaN", id="nan"),
    pytest.param({"n": np.array([[3]])}, "field 'n' says 3, but the data have 2", id="n"),
])
def test_malformed_fields(tmp_path, fields, fragment):
    data = _small(**fields)
    data = {k: v for k, v in data.items() if v is not None}
    path = _save(tmp_path, "bad.mat", **data)
    with pytest.raises(ProblemFileError) as info:
        read_problem(path)
    assert str(info.value).startswith("bad.mat: "), str(info.value)
    assert fragment in str(info.value)


def test_not_a_mat_file(tmp_path):
    path = tmp_path / "text.mat"
    path.write_text("this is not MATLAB data\n")
    with pytest.raises(ProblemFileError, match=r"^text\.mat: not a readable MATLAB \.mat file"):
        read_problem(path)


def test_hdf5_mat_is_unsupported(tmp_path):
    path = tmp_path / "v73.mat"
    # A MATLAB 7.3 header: scipy refuses these (they are HDF5 files).
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5"
    path.write_bytes(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM" + b"\0" * 512)
    with pytest.raises(UnsupportedFeatureError, match=r"^v73\.mat: "):
        read_problem(path)
