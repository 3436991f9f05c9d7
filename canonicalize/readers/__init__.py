"""Readers of problem files: each returns a ProblemFile holding a cone program in
SCS's form whose data are differentiable parameters.

``read_problem(path)`` dispatches on the file's suffix:

| suffix | format | reader |
|---|---|---|
| ``.dat-s`` | SDPA sparse (SDPLIB) | ``sdpa.read_sdpa`` |
| ``.mat`` | Maros–Meszaros QP (P, q, r, A, l, u) | ``maros_meszaros.read_maros_meszaros`` |
| ``.cbf`` | Conic Benchmark Format v1–3 | ``cbf.read_cbf`` |
| ``.py`` | a Python file defining a CVXPY ``problem`` | ``python_file.read_python_file`` |

Text formats may be gzipped (``.dat-s.gz``, ``.cbf.gz``). The data formats become fixed
programs (``canonicalize.program.fixed_program``): parameters "A", "b", "c" (and "P")
hold the stored entries of SCS's data, and the outputs are x and y. Solve one with

    problem = read_problem("qap5.dat-s")
    core = conelayers.layer.LayerCore.from_program(problem.program)
    result = core.forward(problem.values(), {"eps": 1e-6})
    value = problem.objective(result.outputs[0][0])   # in the file's own sense

Malformed files raise ``ProblemFileError`` ("file.dat-s:12: expected 5 numbers, got 4");
features outside a reader's subset raise ``UnsupportedFeatureError`` (a subclass).
Both derive from ``canonicalize.errors.CanonicalizationError``. OSError (e.g. a
missing file) propagates unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from canonicalize.readers.cbf import read_cbf
from canonicalize.readers.errors import ProblemFileError, UnsupportedFeatureError
from canonicalize.readers.maros_meszaros import read_maros_meszaros
from canonicalize.readers.problem_file import ProblemFile
from canonicalize.readers.python_file import read_python_file
from canonicalize.readers.sdpa import read_sdpa

READERS: dict[str, Callable[[Path], ProblemFile]] = {
    "sdpa": read_sdpa,
    "maros_meszaros": read_maros_meszaros,
    "cbf": read_cbf,
    "python": read_python_file,
}
SUFFIXES: dict[str, str] = {
    ".dat-s": "sdpa",
    ".dat-s.gz": "sdpa",
    ".mat": "maros_meszaros",
    ".cbf": "cbf",
    ".cbf.gz": "cbf",
    ".py": "python",
}


def format_of(path: str | Path) -> str:
    """The format name for the file's suffix (case-insensitive)."""
    path = Path(path)
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return SUFFIXES[suffix]
    hint = " (dense SDPA .dat files are not supported; use .dat-s)" if name.endswith(
        ".dat") else ""
    raise UnsupportedFeatureError(
        path, f"unknown problem file suffix{hint}; expected one of {', '.join(SUFFIXES)}"
    )


def read_problem(path: str | Path, format: str | None = None) -> ProblemFile:
    """Read a problem file into a ProblemFile (``format`` overrides the suffix: one of
    "sdpa", "maros_meszaros", "cbf", "python")."""
    path = Path(path)
    fmt = format_of(path) if format is None else format
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(READERS)}")
    return READERS[fmt](path)


__all__ = [
    "ProblemFile",
    "ProblemFileError",
    "READERS",
    "UnsupportedFeatureError",
    "format_of",
    "read_cbf",
    "read_maros_meszaros",
    "read_problem",
    "read_python_file",
    "read_sdpa",
]
