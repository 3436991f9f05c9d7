"""read_problem: dispatch on the suffix, the ProblemFile it returns, gzip, and the
errors for unknown suffixes and missing files."""

from __future__ import annotations

import dataclasses
import gzip
import pickle

import numpy as np
import pytest

from canonicalize.errors import CanonicalizationError
from canonicalize.readers import (
    ProblemFile,
    ProblemFileError,
    UnsupportedFeatureError,
    format_of,
    read_problem,
)
from tests.canonicalize.readers.helpers import DATA, solve


@pytest.mark.parametrize("name,fmt", [
    ("a.dat-s", "sdpa"), ("A.DAT-S", "sdpa"), ("a.dat-s.gz", "sdpa"), ("a.mat", "maros_meszaros"),
    ("a.cbf", "cbf"), ("a.CBF", "cbf"), ("a.cbf.gz", "cbf"), ("a.py", "python"),
])
def test_format_of(name, fmt):
    assert format_of(name) == fmt


def test_unknown_suffix():
    with pytest.raises(UnsupportedFeatureError, match=r"^a\.lp: unknown problem file suffix"):
        read_problem("a.lp")
    with pytest.raises(UnsupportedFeatureError, match="dense SDPA .dat files are not supported"):
        read_problem("a.dat")


def test_problem_file_fields():
    problem = read_problem(DATA / "psd.cbf")
    assert isinstance(problem, ProblemFile)
    assert problem.name == "psd" and problem.path == DATA / "psd.cbf"
    assert problem.description.startswith("cbf: minimize over 3 variables, 10 cone rows "
                                          "(nonneg 1, psd [3, 2])")
    assert problem.theta.size == problem.program.num_theta
    assert [s.name for s in problem.program.parameters] == ["A", "b", "c"]
    assert problem.optimal_value is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.format = "sdpa"


def test_gzip_and_format_override(tmp_path):
    raw = (DATA / "exp.cbf").read_bytes()
    (tmp_path / "exp.cbf.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "exp.txt").write_bytes(raw)
    plain = read_problem(DATA / "exp.cbf")
    zipped = read_problem(tmp_path / "exp.cbf.gz")
    renamed = read_problem(tmp_path / "exp.txt", format="cbf")
    np.testing.assert_array_equal(plain.theta, zipped.theta)
    np.testing.assert_array_equal(plain.theta, renamed.theta)
    assert zipped.name == "exp"
    solved = solve(zipped, {"eps": 1e-9})
    assert solved.objective == pytest.approx(2 * np.exp(0.5) - 2 * np.log(2), rel=1e-6)


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_problem(tmp_path / "nothing.cbf")


def test_binary_file_as_text(tmp_path):
    path = tmp_path / "binary.dat-s"
    path.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ProblemFileError, match=r"^binary\.dat-s: not a text file"):
        read_problem(path)


def test_error_class_and_pickling():
    err = ProblemFileError("dir/file.cbf", "expected 3 numbers, got 2", 12)
    assert isinstance(err, CanonicalizationError) and isinstance(err, ValueError)
    assert str(err) == "file.cbf:12: expected 3 numbers, got 2"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.line == 12
    assert str(ProblemFileError("x.mat", "missing field(s) P")) == "x.mat: missing field(s) P"
