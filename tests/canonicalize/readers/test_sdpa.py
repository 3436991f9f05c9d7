"""SDPA sparse reader: every SDPLIB file in the shared data solves to the README's
optimal value (SDPA's sign convention: the value of (P) min cᵀx, objective_sign +1), the
data layout matches SCS's svec, and malformed files get file:line errors."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from canonicalize.errors import CanonicalizationError
from canonicalize.readers import ProblemFileError, read_problem
from canonicalize.readers.sdpa import read_sdpa, sdplib_optimal_values
from conelayers.cones.svec import smat
from tests.canonicalize.readers.helpers import SHARED, report, shared_files, solve

# Full layer solves (SCS + Newton refinement) measured under 10 s; the rest are slow.
FAST = {"truss1", "truss4", "hinf1", "qap5"}
DEFAULT = {"eps": 1e-6, "max_iters": 200_000}
SETTINGS = {
    # Badly scaled (|A| up to 1.1e4): SCS's Anderson acceleration stalls near 0.4, plain
    # Douglas–Rachford creeps (1e-2 relative after 1e5 iterations, where Newton
    # refinement cannot yet help: ‖N‖ is O(1)); 6e5 iterations (about 10 s) get close
    # enough for refinement to finish the job.
    "control1": {"eps": 1e-7, "max_iters": 600_000, "acceleration_lookback": 0},
}
# SCS stops on its own criteria with residuals the layer flags (hinf1 at eps 1e-6), or
# at max_iters (control1): the objective still matches, the warning is expected.
MAY_WARN = {"control1", "hinf1"}
SDPLIB_PARAMS = shared_files("sdplib", "*.dat-s", FAST)


def _optimal_values() -> dict:
    return sdplib_optimal_values(SHARED / "sdplib" / "README.md")


@pytest.mark.parametrize("path", SDPLIB_PARAMS)
def test_sdplib_objective_matches_readme(path):
    name = path.name.split(".")[0]
    reference = _optimal_values().get(name)
    if not isinstance(reference, float):
        pytest.skip(f"{name}: the README gives no optimal value ({reference!r})")
    problem = read_problem(path)
    assert problem.format == "sdpa" and problem.objective_sign == 1.0
    solved = solve(problem, SETTINGS.get(name, DEFAULT), allow_inaccurate=name in MAY_WARN)
    print(report(name, solved, reference))
    assert solved.objective == pytest.approx(reference, rel=1e-3)


def test_sdplib_scs_only_theta1_fast():
    """The largest PSD block (50×50) read and solved by SCS alone (no refinement): the
    full-pipeline test of theta1 is slow because of the refinement's null-space work."""
    path = SHARED / "sdplib" / "theta1.dat-s"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    solved = solve(read_problem(path), {**DEFAULT, "refine": False})
    print(report("theta1 (SCS only)", solved, 23.0))
    assert solved.objective == pytest.approx(_optimal_values()["theta1"], rel=1e-3)


def test_sdplib_readme_table():
    path = SHARED / "sdplib" / "README.md"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    values = _optimal_values()
    assert len(values) == 92  # "There are a total of 92 problems in the collection."
    assert values["truss1"] == pytest.approx(-8.999996)
    assert values["theta1"] == pytest.approx(23.0)
    assert values["infp1"] == "primal infeasible"


# The README's example: min 10 x1 + 20 x2 s.t. F1 x1 + F2 x2 − F0 ⪰ 0, two 2×2 blocks.
EXAMPLE = """"A sample problem.
2 =mdim
2 =nblocks
{2, 2}
10.0 20.0
0 1 1 1 1.0
0 1 2 2 2.0
0 2 1 1 3.0
0 2 2 2 4.0
1 1 1 1 1.0
1 1 2 2 1.0
2 1 2 2 1.0
2 2 1 1 5.0
2 2 1 2 2.0
2 2 2 2 6.0
"""
F0 = np.diag([1.0, 2.0, 3.0, 4.0])
F1 = np.diag([1.0, 1.0, 0.0, 0.0])
F2 = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 5, 2], [0, 0, 2, 6]], dtype=float)


def _write(tmp_path, text, name="problem.dat-s"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _blocks(problem, vec):
    """The block matrices of an SCS row vector (nonneg rows as a diagonal block)."""
    out = {}
    for blk in problem.metadata["blocks"]:
        start, stop = blk["rows"]
        part = vec[start:stop]
        out[blk["block"]] = np.diag(part) if blk["kind"] == "nonneg" else smat(part)
    return out


def test_example_layout_is_scs_svec(tmp_path):
    problem = read_sdpa(_write(tmp_path, EXAMPLE))
    prog = problem.program
    data = prog.data(problem.theta)
    A = prog.A.matrix(data["A_values"]).toarray()
    assert prog.dims.psd == (2, 2) and prog.dims.nonneg == 0
    np.testing.assert_array_equal(data["c"], [10.0, 20.0])
    # s = F1 x1 + F2 x2 − F0: A's columns are −svec(Fi), b is −svec(F0).
    for col, F in ((0, F1), (1, F2)):
        blocks = _blocks(problem, -A[:, col])
        np.testing.assert_allclose(blocks[1], F[:2, :2], atol=1e-15)
        np.testing.assert_allclose(blocks[2], F[2:, 2:], atol=1e-15)
    blocks = _blocks(problem, -data["b"])
    np.testing.assert_allclose(blocks[2], F0[2:, 2:], atol=1e-15)
    assert problem.metadata["comments"] == ('"A sample problem.',)


def test_example_objective_vs_cvxpy(tmp_path):
    x = cp.Variable(2)
    ref = cp.Problem(cp.Minimize(10 * x[0] + 20 * x[1]), [F1 * x[0] + F2 * x[1] - F0 >> 0])
    ref.solve(solver=cp.CLARABEL)
    solved = solve(read_sdpa(_write(tmp_path, EXAMPLE)), {"eps": 1e-9})
    assert solved.objective == pytest.approx(ref.value, rel=1e-6)


def test_diagonal_blocks_are_nonneg_rows_first(tmp_path):
    # min x1 + x2 s.t. diag(x1 − 1, x2 − 2) ≥ 0 (block of size −2), [[x1, 1], [1, x2]] ⪰ 0.
    text = "2\n2\n2 -2\n1 1\n0 2 1 1 1\n0 2 2 2 2\n1 2 1 1 1\n2 2 2 2 1\n0 1 1 2 -1\n" \
           "1 1 1 1 1\n2 1 2 2 1\n"
    problem = read_sdpa(_write(tmp_path, text))
    assert problem.program.dims.nonneg == 2 and problem.program.dims.psd == (2,)
    assert [b["block"] for b in problem.metadata["blocks"]] == [2, 1]
    solved = solve(problem, {"eps": 1e-9})
    assert solved.objective == pytest.approx(3.0, rel=1e-7)  # x = (1, 2): x1 x2 = 2 ≥ 1


def test_lower_triangle_entries_and_punctuation(tmp_path):
    lower = EXAMPLE.replace("2 2 1 2 2.0", "2 2 2 1 2.0").replace("{2, 2}", "(2, 2)")
    a, b = read_sdpa(_write(tmp_path, EXAMPLE)), read_sdpa(_write(tmp_path, lower, "l.dat-s"))
    np.testing.assert_array_equal(a.theta, b.theta)


def test_c_on_several_lines(tmp_path):
    wrapped = EXAMPLE.replace("10.0 20.0\n", "10.0\n20.0\n")
    np.testing.assert_array_equal(read_sdpa(_write(tmp_path, wrapped)).theta,
                                  read_sdpa(_write(tmp_path, EXAMPLE, "e.dat-s")).theta)


MALFORMED = [
    ("entry with 4 numbers", EXAMPLE.replace("2 2 1 2 2.0", "2 2 1 2"), 14,
     "expected 5 numbers (matno blkno i j value), got 4"),
    ("not a number", EXAMPLE.replace("2 2 2 2 6.0", "2 2 2 2 six"), 15, "'six'"),
    ("matrix number", EXAMPLE.replace("2 2 1 2 2.0", "3 2 1 2 2.0"), 14,
     "matrix number 3 out of range 0..2"),
    ("block number", EXAMPLE.replace("2 2 1 2 2.0", "2 3 1 2 2.0"), 14,
     "block number 3 out of range 1..2"),
    ("index", EXAMPLE.replace("2 2 1 2 2.0", "2 2 1 3 2.0"), 14, "outside block 2 of order 2"),
    ("duplicate", EXAMPLE.replace("2 2 1 2 2.0", "2 2 1 2 2.0\n2 2 2 1 2.0"), 15,
     "duplicate entry for matrix 2, block 2, (2, 1) (first given on line 14)"),
    ("block sizes", EXAMPLE.replace("{2, 2}", "{2}"), 4, "expected 2 block sizes, got 1"),
    ("zero block", EXAMPLE.replace("{2, 2}", "{2, 0}"), 4, "block 2 has size 0"),
    ("short c", EXAMPLE.replace("10.0 20.0", "10.0"), 6, "should have 2 numbers, got 6"),
    ("m", EXAMPLE.replace("2 =mdim", "two =mdim"), 2, "number of constraint matrices"),
    ("non-integer index", EXAMPLE.replace("2 2 1 2 2.0", "2 2 1.5 2 2.0"), 14,
     "must be integers"),
    ("infinite value", EXAMPLE.replace("2 2 1 2 2.0", "2 2 1 2 inf"), 14, "finite"),
    ("end of file", '"only a comment\n2\n', 2, "unexpected end of file"),
]


@pytest.mark.parametrize("text,line,fragment",
                         [pytest.param(t, ln, f, id=i) for i, t, ln, f in MALFORMED])
def test_malformed_files_name_file_and_line(tmp_path, text, line, fragment):
    path = _write(tmp_path, text, "bad.dat-s")
    with pytest.raises(ProblemFileError) as info:
        read_problem(path)
    message = str(info.value)
    assert message.startswith(f"bad.dat-s:{line}: "), message
    assert fragment in message
    assert info.value.line == line and info.value.path == path
    assert isinstance(info.value, CanonicalizationError)


def test_off_diagonal_entry_in_diagonal_block(tmp_path):
    text = "1\n1\n-2\n1\n1 1 1 2 1.0\n"
    with pytest.raises(ProblemFileError, match=r"^bad\.dat-s:5: off-diagonal entry \(1, 2\) "
                                               r"in diagonal block 1$"):
        read_sdpa(_write(tmp_path, text, "bad.dat-s"))
