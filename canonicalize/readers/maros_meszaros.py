"""Maros–Meszaros QPs as MATLAB ``.mat`` files (the osqp_benchmarks conversion).

A file holds P, q, r, A, l, u (and optionally n, m) for

    min ½xᵀPx + qᵀx + r   s.t.  l ≤ Ax ≤ u,

with P the full symmetric matrix (both triangles stored). Bounds whose magnitude is at
least ``infinity`` (1e20 in these files; ±inf also accepted) are absent.

SCS form, with the quadratic objective kept (SCS's P, full symmetric, so the objective
is ½xᵀPx + qᵀx exactly as in the file) and r as the objective offset:

- rows with finite l = u: zero cone, A row and b = u;
- other rows with finite u: nonnegative cone, u − Ax ≥ 0 (A row, b = u);
- other rows with finite l: nonnegative cone, Ax − l ≥ 0 (−A row, b = −l);
- rows with neither bound are dropped.

A two-sided row thus appears twice (once per bound); ``metadata["rows"]`` maps the SCS
rows of each group back to rows of the file's A.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse as sp

from canonicalize.cones import ConeDims
from canonicalize.program import ConstraintRows
from canonicalize.readers.errors import ProblemFileError, UnsupportedFeatureError
from canonicalize.readers.problem_file import ProblemFile, fixed_problem_file

INFINITY = 1e19
"""Bounds with |value| ≥ this are infinite: the files store ±1e20, which can read back as
9.999999999999998e19 after the round trip through the .mat encoding (seen in PRIMALC1)."""


def _load(path: Path) -> dict:
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5)
        raise UnsupportedFeatureError(
            path, f"this .mat version is not supported by scipy.io.loadmat ({err})"
        ) from err
    except (ValueError, TypeError, KeyError, IndexError, EOFError, UnicodeDecodeError,
            AttributeError, scipy.io.matlab.MatReadError) as err:  # empty/garbage files
        raise ProblemFileError(path, f"not a readable MATLAB .mat file ({err})") from err


def _float_array(path: Path, name: str, value) -> np.ndarray | sp.csc_matrix:
    try:
        if sp.issparse(value):
            mat = sp.csc_matrix(value, dtype=np.float64)
            mat.sum_duplicates()
            return mat
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"dtype {arr.dtype}")
        return arr.astype(np.float64)  # before any negation: files store uint8/int16
    except (TypeError, ValueError) as err:
        raise ProblemFileError(path, f"field '{name}' is not numeric ({err})") from err


def _vector(path: Path, fields: dict, name: str, size: int | None) -> np.ndarray:
    arr = _float_array(path, name, fields[name])
    if sp.issparse(arr):
        arr = arr.toarray()
    if arr.ndim > 2 or (arr.ndim == 2 and min(arr.shape) > 1 and arr.size > 0):
        raise ProblemFileError(path, f"field '{name}' has shape {arr.shape}, expected a vector")
    arr = arr.ravel()
    if size is not None and arr.size != size:
        raise ProblemFileError(path, f"field '{name}' has {arr.size} entries, expected {size}")
    if np.isnan(arr).any():
        first = int(np.argmax(np.isnan(arr)))
        raise ProblemFileError(path, f"field '{name}' contains NaN (entry {first})")
    return arr


def _matrix(path: Path, fields: dict, name: str, shape: tuple[int, int] | None) -> sp.csc_matrix:
    mat = _float_array(path, name, fields[name])
    if not sp.issparse(mat):
        if mat.ndim != 2:
            raise ProblemFileError(path, f"field '{name}' has shape {mat.shape}, expected a matrix")
        mat = sp.csc_matrix(mat)
    if shape is not None and mat.shape != shape:
        if mat.nnz == 0 and 0 in shape:
            return sp.csc_matrix(shape)
        raise ProblemFileError(path, f"field '{name}' has shape {mat.shape}, expected {shape}")
    if not np.isfinite(mat.data).all():
        raise ProblemFileError(path, f"field '{name}' contains NaN or Inf")
    return mat


def read_maros_meszaros(path: str | Path, infinity: float = INFINITY) -> ProblemFile:
    """Read a Maros–Meszaros ``.mat`` file (fields P, q, r, A, l, u; r optional, 0 if
    absent) into a fixed cone program with a quadratic objective (see the module
    docstring). Raises ProblemFileError naming the field for malformed files."""
    path = Path(path)
    fields = _load(path)
    missing = [k for k in ("P", "q", "A", "l", "u") if k not in fields]
    if missing:
        raise ProblemFileError(path, f"missing field(s) {', '.join(missing)} (expected P, q, "
                                     "r, A, l, u)")
    q = _vector(path, fields, "q", None)
    if not np.isfinite(q).all():
        raise ProblemFileError(path, "field 'q' contains Inf")
    n = q.size
    P = _matrix(path, fields, "P", (n, n))
    A = _matrix(path, fields, "A", None)
    if A.shape[0] == 0:  # no constraints (MATLAB may store the empty matrix as 0×0)
        A = sp.csc_matrix((0, n))
    elif A.shape[1] != n:
        raise ProblemFileError(path, f"field 'A' has {A.shape[1]} columns, expected {n}")
    m = A.shape[0]
    lo = _vector(path, fields, "l", m)
    up = _vector(path, fields, "u", m)
    r = 0.0
    if "r" in fields:
        r_arr = _vector(path, fields, "r", 1)
        if not np.isfinite(r_arr).all():
            raise ProblemFileError(path, "field 'r' is not finite")
        r = float(r_arr[0])
    for name, expected in (("n", n), ("m", m)):
        if name in fields:
            stated = _vector(path, fields, name, 1)[0]
            if stated != expected:
                raise ProblemFileError(
                    path, f"field '{name}' says {stated:g}, but the data have {expected}"
                )

    asym = abs(P - P.T)
    scale = max(1.0, float(abs(P).max()) if P.nnz else 1.0)
    if asym.nnz and float(asym.max()) > 1e-12 * scale:
        raise ProblemFileError(
            path,
            f"P is not symmetric (max |P - P'| = {float(asym.max()):.3g}); the format stores "
            "the full symmetric matrix (an upper triangle alone would be misread)",
        )
    P = sp.csc_matrix((P + P.T) * 0.5)

    has_lo = lo > -infinity
    has_up = up < infinity
    bad = (lo >= infinity) | (up <= -infinity) | (has_lo & has_up & (lo > up))
    if bad.any():
        i = int(np.argmax(bad))
        raise ProblemFileError(path, f"row {i} of A has bounds l = {lo[i]:g} > u = {up[i]:g}")
    eq = has_lo & has_up & (lo == up)
    upper = has_up & ~eq
    lower = has_lo & ~eq
    rows_eq, rows_up, rows_lo = (np.flatnonzero(mask) for mask in (eq, upper, lower))
    A_csr = A.tocsr()
    A_scs = sp.vstack([A_csr[rows_eq], A_csr[rows_up], -A_csr[rows_lo]], format="csc")
    b_scs = np.concatenate([up[rows_eq], up[rows_up], -lo[rows_lo]])
    dims = ConeDims(zero=rows_eq.size, nonneg=rows_up.size + rows_lo.size)
    k0, k1, k2 = rows_eq.size, rows_eq.size + rows_up.size, b_scs.size
    constraints = [
        ConstraintRows(label, kind, start, stop, user=True)
        for label, kind, start, stop in (
            ("Ax == l == u (equality rows)", "zero", 0, k0),
            ("Ax <= u", "nonneg", k0, k1),
            ("Ax >= l", "nonneg", k1, k2),
        )
        if stop > start
    ]
    free = int((~has_lo & ~has_up).sum())
    meta = {
        "n": n,
        "m": m,
        "rows": {"equality": rows_eq, "upper": rows_up, "lower": rows_lo},
        "free_rows": free,
        "infinity": infinity,
        "offset": r,
    }
    try:
        return fixed_problem_file(
            path, "maros_meszaros", A_scs, b_scs, q, dims, P=P if P.nnz else None,
            offset=r, objective_sign=1.0, constraints=constraints, metadata=meta,
            extra_description=f"QP with {m} rows in l <= Ax <= u ({k0} equalities, "
                              f"{rows_up.size} upper, {rows_lo.size} lower, {free} free)",
        )
    except ValueError as err:
        raise ProblemFileError(path, f"could not build the cone program: {err}") from err
