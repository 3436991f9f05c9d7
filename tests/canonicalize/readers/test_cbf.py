"""CBF reader: hand-written files (LP, SOC with rotated cones, PSD constraints,
exponential and dual exponential cones) solve to the optimum of the same problems
written independently in CVXPY, cones are mapped as documented, and malformed or
unsupported files get errors naming the file and line."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from canonicalize.readers import ProblemFileError, UnsupportedFeatureError, read_problem
from canonicalize.readers.cbf import read_cbf
from tests.canonicalize.readers.helpers import DATA, report, solve


def _lp() -> cp.Problem:
    x = cp.Variable(4)
    return cp.Problem(cp.Maximize(3 * x[0] + 2 * x[1] - x[2] + x[3] + 5), [
        x[0] >= 0, x[1] >= 0, x[3] <= 0, x[0] + x[1] + x[2] == 4, x[0] + 2 * x[1] <= 6,
        x[2] <= 1, x[2] >= -1, x[3] >= -2,
    ])


def _soc() -> cp.Problem:
    u, v, w, t, z0, z1 = (cp.Variable() for _ in range(6))
    return cp.Problem(cp.Minimize(t + 2 * u + v), [
        cp.norm(cp.hstack([z0 - 1, z1 - 2])) <= t,
        z0 + z1 == 1, w == z0, v >= 0.5,
        u >= cp.quad_over_lin(w, 2 * v),  # 2uv ≥ w², u, v ≥ 0
        t + 1 >= cp.square(z1) / 2,  # 2(t + 1)·1 ≥ z1²
    ])


def _psd() -> cp.Problem:
    t, x, y = cp.Variable(), cp.Variable(), cp.Variable()
    M = np.array([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 4.0]])
    X = cp.Variable((2, 2), symmetric=True)
    return cp.Problem(cp.Minimize(t + x + 2 * y), [
        t * np.eye(3) - M >> 0, X >> 0, X[0, 0] == x, X[1, 1] == y, X[0, 1] == 1, x >= 0.1,
    ])


def _exp() -> cp.Problem:
    t0, t1, z0, z1, a, b = (cp.Variable() for _ in range(6))
    return cp.Problem(cp.Minimize(t0 + t1 + a + 2 * b), [
        t0 >= cp.exp(z0), t1 >= cp.exp(z1), z0 + z1 == 1, a >= cp.exp(-b - 1),
    ])


CASES = {
    "lp": (_lp, 21.0, -1.0),
    "soc": (_soc, None, 1.0),
    "psd": (_psd, np.linalg.eigvalsh([[2, 1, 0], [1, 3, 1], [0, 1, 4]]).max() + 2 * np.sqrt(2),
            1.0),
    "exp": (_exp, 2 * np.exp(0.5) - 2 * np.log(2), 1.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_objective_matches_cvxpy(name):
    build, closed_form, sign = CASES[name]
    reference = build()
    reference.solve(solver=cp.CLARABEL)
    assert reference.status == cp.OPTIMAL
    if closed_form is not None:
        assert reference.value == pytest.approx(closed_form, rel=1e-6)
    problem = read_problem(DATA / f"{name}.cbf")
    assert problem.format == "cbf" and problem.objective_sign == sign
    solved = solve(problem, {"eps": 1e-9, "max_iters": 100_000})
    print(report(name, solved, reference.value))
    assert solved.objective == pytest.approx(reference.value, rel=1e-6)


def test_cone_layout():
    lp = read_cbf(DATA / "lp.cbf")
    assert (lp.program.dims.zero, lp.program.dims.nonneg) == (1, 7)
    assert lp.metadata["objsense"] == "MAX" and lp.program.objective_sign == -1.0
    data = lp.program.data(lp.theta)
    np.testing.assert_array_equal(data["c"], [-3, -2, 1, -1])  # MAX flips c ...
    assert data["offset"].item() == -5.0  # ... and the constant
    soc = read_cbf(DATA / "soc.cbf")
    assert soc.program.dims.soc == (3, 3, 3)
    exp = read_cbf(DATA / "exp.cbf")
    assert (exp.program.dims.exp, exp.program.dims.exp_dual) == (2, 1)
    psd = read_cbf(DATA / "psd.cbf")
    assert psd.program.dims.psd == (3, 2) and psd.program.dims.nonneg == 1
    labels = [c.label for c in psd.program.constraints]
    assert labels == ["CON cone 0 (L+ 1, rows 0..0)", "PSDCON 0 (3x3)", "PSDCON 1 (2x2)"]


def test_exp_triple_is_reversed_for_scs():
    """CBF's (x1, x2, x3) with x1 ≥ x2 exp(x3/x2) is SCS's (t, s, r): the rows of the
    constraint (t0, 1, z0) ∈ EXP are s = (z0, 1, t0)."""
    problem = read_cbf(DATA / "exp.cbf")
    data = problem.program.data(problem.theta)
    A = problem.program.A.matrix(data["A_values"]).toarray()
    rows = next(c for c in problem.program.constraints if c.label.startswith("CON cone 0"))
    s_of_x = -A[rows.start:rows.stop]  # s = b − Ax
    b = data["b"][rows.start:rows.stop]
    np.testing.assert_array_equal(s_of_x[0], np.eye(7)[4])  # r = z0
    np.testing.assert_array_equal(b, [0, 1, 0])  # s = 1
    np.testing.assert_array_equal(s_of_x[2], np.eye(7)[3])  # t = t0


def _with(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


LP = (DATA / "lp.cbf").read_text()
# Line numbers in lp.cbf: VER 5-6, OBJSENSE 8-9, VAR 11-15, CON 17-21, OBJACOORD 23-28,
# OBJBCOORD 30-31, ACOORD 33-42, BCOORD 44-50.
MALFORMED = [
    ("acoord-width", _with(LP, "1 1 2\n", "1 1\n"), 39, "ACOORD entry: expected 3 numbers, got 2"),
    ("acoord-row", _with(LP, "4 3 1\n", "5 3 1\n"), 42, "ACOORD: constraint 5 out of range 0..4"),
    ("acoord-col", _with(LP, "4 3 1\n", "4 4 1\n"), 42, "ACOORD: variable 4 out of range 0..3"),
    ("duplicate", _with(LP, "4 3 1\n", "0 0 1\n"), 42, "duplicate entry (first given on line 35)"),
    ("number", _with(LP, "2 -1\n", "2 minus-one\n"), 27, "'minus-one'"),
    ("cone", _with(LP, "F 1\n", "G 1\n"), 14, "unknown cone 'G'"),
    ("var-sum", _with(LP, "4 3\n", "5 3\n"), 12, "the cone dimensions add up to 4, not 5"),
    ("sense", _with(LP, "MAX\n", "MAXIMIZE\n"), 9, "expected MIN or MAX"),
    ("keyword", _with(LP, "OBJBCOORD\n", "OBJCONST\n"), 30, "unknown keyword 'OBJCONST'"),
    ("order", LP.replace("VER\n3\n", ""), 6, "the file must start with VER"),
    ("twice", LP + "\nOBJSENSE\nMIN\n", 52, "OBJSENSE appears twice (first on line 8)"),
    ("truncated", LP[: LP.index("3 1\n4 2\n")], 45,
     "expected 5 BCOORD entries, but only 3 lines follow"),
    ("truncated-var", LP[: LP.index("4 3\nL+ 2")], 11,
     "unexpected end of file, expected the VAR sizes"),
    ("exp-dim", _with(LP, "L- 1\n", "EXP 1\n"), 15, "EXP cone: dimension must be 3, got 1"),
]


@pytest.mark.parametrize("text,line,fragment",
                         [pytest.param(t, ln, f, id=i) for i, t, ln, f in MALFORMED])
def test_malformed_files_name_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "bad.cbf"
    path.write_text(text)
    with pytest.raises(ProblemFileError) as info:
        read_problem(path)
    message = str(info.value)
    assert message.startswith(f"bad.cbf:{line}: "), message
    assert fragment in message, message


PSDVAR = "VER\n3\n\nPSDVAR\n1\n2\n"
UNSUPPORTED = [
    ("psdvar", PSDVAR, 4, "matrix variables (PSDVAR) are not supported"),
    ("int", _with(LP, "CON\n", "INT\n1\n0\n\nCON\n"), 17, "integer variables (INT)"),
    ("pow", _with(LP, "F 1\n", "@0:POW 1\n"), 14, "power cone @0:POW is not supported"),
    ("powcones", _with(LP, "VAR\n", "POWCONES\n1 2\n1\n1\n\nVAR\n"), 11, "power cones"),
    ("version", _with(LP, "VER\n3\n", "VER\n4\n"), 6, "CBF version 4 is not supported"),
]


@pytest.mark.parametrize("text,line,fragment",
                         [pytest.param(t, ln, f, id=i) for i, t, ln, f in UNSUPPORTED])
def test_unsupported_features(tmp_path, text, line, fragment):
    path = tmp_path / "feature.cbf"
    path.write_text(text)
    with pytest.raises(UnsupportedFeatureError) as info:
        read_problem(path)
    assert str(info.value).startswith(f"feature.cbf:{line}: "), str(info.value)
    assert fragment in str(info.value)


PSD = (DATA / "psd.cbf").read_text()
# Line numbers in psd.cbf: CON 14-16, PSDCON 18-21, ACOORD 29-31, HCOORD 37-43, DCOORD 45-52.
PSD_MALFORMED = [
    ("h-row", _with(PSD, "1 2 1 1 1\n", "1 2 2 1 1\n"), 43, "HCOORD: row 2 out of range 0..1"),
    ("h-con", _with(PSD, "1 2 1 1 1\n", "2 2 1 1 1\n"), 43,
     "HCOORD: PSD constraint 2 out of range 0..1"),
    ("d-duplicate", _with(PSD, "0 2 1 -1\n", "0 1 2 -1\n0 2 1 -1\n"), 51,
     "DCOORD: duplicate entry (first given on line 50)"),
    ("psdcon-dim", _with(PSD, "PSDCON\n2\n3\n", "PSDCON\n2\n0\n"), 20,
     "PSDCON dimension must be ≥ 1, got 0"),
    ("acoord-before-con", PSD.replace("CON\n1 1\nL+ 1\n", "").replace("BCOORD\n1\n0 -0.1\n", ""),
     26, "ACOORD must come after CON"),
]


@pytest.mark.parametrize("text,line,fragment",
                         [pytest.param(t, ln, f, id=i) for i, t, ln, f in PSD_MALFORMED])
def test_malformed_psd_sections(tmp_path, text, line, fragment):
    path = tmp_path / "bad.cbf"
    path.write_text(text)
    with pytest.raises(ProblemFileError) as info:
        read_problem(path)
    assert str(info.value).startswith(f"bad.cbf:{line}: "), str(info.value)
    assert fragment in str(info.value)


def test_upper_triangle_entries_read_as_their_mirror(tmp_path):
    path = tmp_path / "upper.cbf"
    path.write_text(_with(_with(PSD, "0 1 0 -1\n", "0 0 1 -1\n"), "0 2 1 -1\n", "0 1 2 -1\n"))
    np.testing.assert_array_equal(read_cbf(path).theta, read_cbf(DATA / "psd.cbf").theta)
