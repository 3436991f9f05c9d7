"""Conic Benchmark Format (CBF, versions 1–3; the CBLIB format), continuous problems.

A CBF file states

    min/max  aᵀx + β   s.t.  x ∈ K_var,  g = Gx + h ∈ K_con,  Σⱼ xⱼHᵢⱼ + Dᵢ ⪰ 0,

with K_var and K_con products of cones listed in VAR and CON (0-based indices
throughout). Supported keywords: VER, OBJSENSE, VAR, CON, PSDCON, OBJACOORD, OBJBCOORD,
ACOORD, BCOORD, HCOORD, DCOORD. Supported cones: F (free), L+, L-, L= (zero), Q
(x₁ ≥ ‖x₂:ₙ‖), QR (rotated: 2x₁x₂ ≥ ‖x₃:ₙ‖², x₁, x₂ ≥ 0), EXP
(x₁ ≥ x₂·exp(x₃/x₂), x₂ > 0, the bound first) and EXP* (its dual). Matrix variables
(PSDVAR, OBJFCOORD, FCOORD), integers (INT), power cones (POWCONES, POW*CONES, @k:POW)
and CHANGE raise UnsupportedFeatureError.

SCS form (Ax + s = b, s ∈ K), every cone mapped by a linear bijection T onto an SCS
cone, s = T·(the file's vector):

- a constraint cone on g = Gx + h: s = T(Gx + h), so A = −TG, b = Th; F rows are
  dropped; L- uses T = −I (then nonneg);
- a variable cone on x_J: s = T x_J, so A = −T on columns J, b = 0 (the x ∈ K rows
  −x + s = 0); free variables give no rows;
- QR → SOC by T = [[1, 1], [1, −1]]/√2 on (x₁, x₂) (identity on the rest), since
  ((x₁+x₂)² − (x₁−x₂)²)/2 = 2x₁x₂;
- EXP → SCS's primal exponential cone (r, s, t), s·exp(r/s) ≤ t, by reversing the
  triple: (r, s, t) = (x₃, x₂, x₁); EXP* → SCS's dual exponential cone the same way
  (a permutation is orthogonal, so it maps the dual cone onto the dual cone);
- PSDCON i: s = svec(Σ xⱼHᵢⱼ + Dᵢ), so A = −svec(Hᵢⱼ), b = svec(Dᵢ) (HCOORD and
  DCOORD give lower-triangle entries; an upper one is read as its mirror).

OBJSENSE MAX minimizes −(aᵀx + β): c = −a, offset = −β and objective_sign = −1, so
``objective_sign · (cᵀx + offset)`` is the file's objective.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from canonicalize.readers._cones import SQRT2, ConeRows, svec_index, svec_scale
from canonicalize.readers._text import (
    Lines,
    check_size,
    expect_count,
    parse_float,
    parse_int,
    read_text,
)
from canonicalize.readers.errors import ProblemFileError, UnsupportedFeatureError
from canonicalize.readers.problem_file import ProblemFile, fixed_problem_file

SUPPORTED_VERSIONS = (1, 2, 3)
_CONES = ("F", "L+", "L-", "L=", "Q", "QR", "EXP", "EXP*")
_KEYWORDS = ("VER", "OBJSENSE", "VAR", "CON", "PSDCON", "OBJACOORD", "OBJBCOORD",
             "ACOORD", "BCOORD", "HCOORD", "DCOORD")
_UNSUPPORTED = {
    "PSDVAR": "matrix variables (PSDVAR) are not supported",
    "OBJFCOORD": "matrix variables (OBJFCOORD) are not supported",
    "FCOORD": "matrix variables (FCOORD) are not supported",
    "INT": "integer variables (INT) are not supported: the layer solves continuous "
           "problems",
    "POWCONES": "power cones (POWCONES) are not supported",
    "POW*CONES": "power cones (POW*CONES) are not supported",
    "CHANGE": "parametric CHANGE sections are not supported",
}


class _Cone:
    def __init__(self, name: str, dim: int, start: int, line: int) -> None:
        self.name, self.dim, self.start, self.line = name, dim, start, line


def _transform(name: str, dim: int) -> tuple[str, sp.csr_matrix | None]:
    """(SCS cone kind, T) for a CBF cone of dimension dim (None: no rows)."""
    eye = sp.identity(dim, format="csr")
    if name == "F":
        return "free", None
    if name in ("L+",):
        return "nonneg", eye
    if name == "L-":
        return "nonneg", -eye
    if name == "L=":
        return "zero", eye
    if name == "Q":
        return ("soc" if dim > 1 else "nonneg"), eye
    if name == "QR":
        T = sp.lil_matrix((dim, dim))
        T[0, 0] = T[0, 1] = T[1, 0] = 1.0 / SQRT2
        T[1, 1] = -1.0 / SQRT2
        for k in range(2, dim):
            T[k, k] = 1.0
        return "soc", T.tocsr()
    if name in ("EXP", "EXP*"):
        rev = sp.csr_matrix((np.ones(3), (np.arange(3), np.arange(3)[::-1])), shape=(3, 3))
        return ("exp" if name == "EXP" else "exp_dual"), rev
    raise AssertionError(name)


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = Lines(path, read_text(path), is_comment=lambda s: s.startswith("#"))
        self.version: int | None = None
        self.sense = "MIN"
        self.var: list[_Cone] | None = None
        self.n = 0
        self.con: list[_Cone] | None = None
        self.m = 0
        self.psdcon: list[int] | None = None
        self.seen: dict[str, int] = {}
        self.objA: tuple | None = None
        self.objB = 0.0
        self.acoord: tuple | None = None
        self.bcoord: tuple | None = None
        self.hcoord: tuple | None = None
        self.dcoord: tuple | None = None

    def error(self, detail: str, line: int | None) -> ProblemFileError:
        return ProblemFileError(self.path, detail, line)

    # -- structure ------------------------------------------------------------------
    def parse(self) -> None:
        lines = self.lines
        while not lines.at_end():
            ln, text = lines.next("a keyword")
            key = text.split()[0].upper() if len(text.split()) == 1 else None
            if key is None:
                raise self.error(f"expected a keyword on its own line, got {text!r}", ln)
            if key in _UNSUPPORTED:
                raise UnsupportedFeatureError(self.path, _UNSUPPORTED[key], ln)
            if key not in _KEYWORDS:
                raise self.error(f"unknown keyword {text!r}", ln)
            if self.version is None and key != "VER":
                raise self.error(f"the file must start with VER, got {key}", ln)
            if key in self.seen:
                raise self.error(f"{key} appears twice (first on line {self.seen[key]})", ln)
            self.seen[key] = ln
            getattr(self, "_" + key.lower())(ln)
        if self.version is None:
            raise self.error("empty file (no VER section)", self.lines.last_line)
        if self.var is None:
            raise self.error("missing VAR section", self.lines.last_line)

    def _check_remaining(self, count: int, what: str, ln: int) -> None:
        remaining = len(self.lines.items) - self.lines.pos
        if count > remaining:
            raise self.error(f"expected {count} {what}, but only {remaining} lines follow", ln)

    def _single(self, what: str) -> tuple[int, list[str]]:
        ln, text = self.lines.next(what)
        return ln, text.split()

    def _ver(self, _ln: int) -> None:
        ln, toks = self._single("the format version")
        expect_count(self.path, ln, toks, 1, "VER")
        self.version = parse_int(self.path, ln, toks[0], "VER")
        if self.version not in SUPPORTED_VERSIONS:
            raise UnsupportedFeatureError(
                self.path, f"CBF version {self.version} is not supported (supported: "
                           f"{', '.join(map(str, SUPPORTED_VERSIONS))})", ln)

    def _objsense(self, _ln: int) -> None:
        ln, toks = self._single("MIN or MAX")
        if len(toks) != 1 or toks[0].upper() not in ("MIN", "MAX"):
            raise self.error(f"OBJSENSE: expected MIN or MAX, got {' '.join(toks)!r}", ln)
        self.sense = toks[0].upper()

    def _cones(self, key: str) -> tuple[int, list[_Cone]]:
        ln, toks = self._single(f"the {key} sizes")
        expect_count(self.path, ln, toks, 2, f"{key} (total size and number of cones)")
        total = parse_int(self.path, ln, toks[0], f"{key} size")
        count = parse_int(self.path, ln, toks[1], f"{key} number of cones")
        if total < 0 or count < 0:
            raise self.error(f"{key}: sizes must be nonnegative", ln)
        check_size(self.path, ln, total, f"{key} size")
        self._check_remaining(count, f"{key} cones", ln)
        cones, start = [], 0
        for _ in range(count):
            cl, ctoks = self._single(f"a {key} cone")
            expect_count(self.path, cl, ctoks, 2, f"{key} cone (name and dimension)")
            name = ctoks[0].upper()
            dim = parse_int(self.path, cl, ctoks[1], f"{key} cone dimension")
            if "POW" in name:
                raise UnsupportedFeatureError(self.path, f"power cone {ctoks[0]} is not "
                                                         "supported", cl)
            if name not in _CONES:
                raise self.error(f"unknown cone {ctoks[0]!r} (supported: "
                                 f"{', '.join(_CONES)})", cl)
            if dim < 1:
                raise self.error(f"{key} cone {name}: dimension must be ≥ 1, got {dim}", cl)
            if name == "QR" and dim < 2:
                raise self.error(f"QR cone: dimension must be ≥ 2, got {dim}", cl)
            if name in ("EXP", "EXP*") and dim != 3:
                raise self.error(f"{name} cone: dimension must be 3, got {dim}", cl)
            cones.append(_Cone(name, dim, start, cl))
            start += dim
        if start != total:
            raise self.error(f"{key}: the cone dimensions add up to {start}, not {total}", ln)
        return total, cones

    def _var(self, _ln: int) -> None:
        self.n, self.var = self._cones("VAR")

    def _con(self, _ln: int) -> None:
        self.m, self.con = self._cones("CON")

    def _psdcon(self, _ln: int) -> None:
        ln, toks = self._single("the number of PSD constraints")
        expect_count(self.path, ln, toks, 1, "PSDCON")
        count = parse_int(self.path, ln, toks[0], "PSDCON")
        if count < 0:
            raise self.error("PSDCON: the number must be nonnegative", ln)
        self._check_remaining(count, "PSDCON dimensions", ln)
        self.psdcon = []
        for _ in range(count):
            cl, ctoks = self._single("a PSDCON dimension")
            expect_count(self.path, cl, ctoks, 1, "PSDCON dimension")
            dim = parse_int(self.path, cl, ctoks[0], "PSDCON dimension")
            if dim < 1:
                raise self.error(f"PSDCON dimension must be ≥ 1, got {dim}", cl)
            check_size(self.path, cl, dim * (dim + 1) // 2, "the PSDCON svec length")
            self.psdcon.append(dim)

    # -- data -----------------------------------------------------------------------
    def _entries(self, key: str, n_ints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read a count line and that many lines of n_ints integers and a value."""
        ln, toks = self._single(f"the number of {key} entries")
        expect_count(self.path, ln, toks, 1, f"{key} (number of entries)")
        count = parse_int(self.path, ln, toks[0], f"{key} number of entries")
        if count < 0:
            raise self.error(f"{key}: the number of entries must be nonnegative", ln)
        self._check_remaining(count, f"{key} entries", ln)
        width = n_ints + 1
        line_of = np.zeros(count, dtype=np.int64)
        tokens: list[str] = []
        for k in range(count):
            el, etoks = self._single(f"{key} entry {k + 1} of {count}")
            expect_count(self.path, el, etoks, width, f"{key} entry")
            line_of[k] = el
            tokens.extend(etoks)
        try:
            data = np.array(tokens, dtype=np.float64).reshape(count, width)
        except ValueError:
            data = np.array(
                [parse_float(self.path, int(line_of[q // width]), t, f"{key} entry")
                 for q, t in enumerate(tokens)]
            ).reshape(count, width)
        bad = ~np.isfinite(data).all(axis=1)
        if bad.any():
            raise self.error(f"{key} entry: expected finite numbers",
                             int(line_of[np.argmax(bad)]))
        idx = data[:, :n_ints]
        bad = (idx != np.round(idx)).any(axis=1)
        if bad.any():
            raise self.error(f"{key} entry: indices must be integers",
                             int(line_of[np.argmax(bad)]))
        return idx.astype(np.int64), data[:, n_ints], line_of

    def _check_range(self, key: str, what: str, values: np.ndarray, upper: np.ndarray | int,
                     line_of: np.ndarray) -> None:
        bad = (values < 0) | (values >= upper)
        if bad.any():
            k = int(np.argmax(bad))
            hi = upper if np.isscalar(upper) else upper[k]
            raise self.error(f"{key}: {what} {values[k]} out of range 0..{hi - 1}",
                             int(line_of[k]))

    def _require(self, key: str, section: str, ln: int) -> None:
        if section not in self.seen:
            raise self.error(f"{key} must come after {section}", ln)

    def _check_duplicates(self, key: str, keys: list[np.ndarray], line_of: np.ndarray) -> None:
        if line_of.size < 2:
            return
        order = np.lexsort(tuple(reversed(keys)))
        same = np.ones(order.size - 1, dtype=bool)
        for arr in keys:
            same &= np.diff(arr[order]) == 0
        if same.any():
            k = int(np.argmax(same))
            a, b = sorted((order[k], order[k + 1]), key=lambda q: line_of[q])
            raise self.error(f"{key}: duplicate entry (first given on line {line_of[a]})",
                             int(line_of[b]))

    def _objacoord(self, ln: int) -> None:
        self._require("OBJACOORD", "VAR", ln)
        idx, val, line_of = self._entries("OBJACOORD", 1)
        self._check_range("OBJACOORD", "variable", idx[:, 0], self.n, line_of)
        self._check_duplicates("OBJACOORD", [idx[:, 0]], line_of)
        self.objA = (idx[:, 0], val)

    def _objbcoord(self, _ln: int) -> None:
        ln, toks = self._single("the objective constant")
        expect_count(self.path, ln, toks, 1, "OBJBCOORD")
        self.objB = parse_float(self.path, ln, toks[0], "OBJBCOORD")

    def _acoord(self, ln: int) -> None:
        self._require("ACOORD", "VAR", ln)
        self._require("ACOORD", "CON", ln)
        idx, val, line_of = self._entries("ACOORD", 2)
        self._check_range("ACOORD", "constraint", idx[:, 0], self.m, line_of)
        self._check_range("ACOORD", "variable", idx[:, 1], self.n, line_of)
        self._check_duplicates("ACOORD", [idx[:, 0], idx[:, 1]], line_of)
        self.acoord = (idx[:, 0], idx[:, 1], val)

    def _bcoord(self, ln: int) -> None:
        self._require("BCOORD", "CON", ln)
        idx, val, line_of = self._entries("BCOORD", 1)
        self._check_range("BCOORD", "constraint", idx[:, 0], self.m, line_of)
        self._check_duplicates("BCOORD", [idx[:, 0]], line_of)
        self.bcoord = (idx[:, 0], val)

    def _psd_entries(self, key: str, ln: int, n_ints: int) -> tuple:
        self._require(key, "PSDCON", ln)
        idx, val, line_of = self._entries(key, n_ints)
        self._check_range(key, "PSD constraint", idx[:, 0], len(self.psdcon), line_of)
        dims = np.array(self.psdcon, dtype=np.int64)[idx[:, 0]]
        if n_ints == 4:
            self._check_range(key, "variable", idx[:, 1], self.n, line_of)
        self._check_range(key, "row", idx[:, -2], dims, line_of)
        self._check_range(key, "column", idx[:, -1], dims, line_of)
        i, j = idx[:, -2], idx[:, -1]
        lo, hi = np.maximum(i, j), np.minimum(i, j)
        keys = [idx[:, 0]] + ([idx[:, 1]] if n_ints == 4 else []) + [lo, hi]
        self._check_duplicates(key, keys, line_of)
        return idx, val, dims

    def _hcoord(self, ln: int) -> None:
        self._require("HCOORD", "VAR", ln)
        self.hcoord = self._psd_entries("HCOORD", ln, 4)

    def _dcoord(self, ln: int) -> None:
        self.dcoord = self._psd_entries("DCOORD", ln, 3)

    # -- SCS form -------------------------------------------------------------------
    def build(self) -> ProblemFile:
        n, m = self.n, self.m
        rows = ConeRows(n)
        for k, cone in enumerate(self.var):
            kind, T = _transform(cone.name, cone.dim)
            if T is None:
                continue
            cols = sp.csr_matrix(
                (np.ones(cone.dim), (np.arange(cone.dim), cone.start + np.arange(cone.dim))),
                shape=(cone.dim, n),
            )
            label = (f"VAR cone {k} ({cone.name} {cone.dim}, variables "
                     f"{cone.start}..{cone.start + cone.dim - 1})")
            rows.add(kind, -(T @ cols), np.zeros(cone.dim), label)
        if self.con:
            if self.acoord is not None:
                r, cidx, v = self.acoord
                G = sp.csr_matrix((v, (r, cidx)), shape=(m, n))
            else:
                G = sp.csr_matrix((m, n))
            h = np.zeros(m)
            if self.bcoord is not None:
                h[self.bcoord[0]] = self.bcoord[1]
            for k, cone in enumerate(self.con):
                kind, T = _transform(cone.name, cone.dim)
                if T is None:
                    continue
                sl = slice(cone.start, cone.start + cone.dim)
                label = (f"CON cone {k} ({cone.name} {cone.dim}, rows "
                         f"{cone.start}..{cone.start + cone.dim - 1})")
                rows.add(kind, -(T @ G[sl]), T @ h[sl], label)
        for k, dim in enumerate(self.psdcon or []):
            size = dim * (dim + 1) // 2
            A_blk = sp.csr_matrix((size, n))
            b_blk = np.zeros(size)
            if self.hcoord is not None:
                idx, val, _ = self.hcoord
                mine = idx[:, 0] == k
                i, j = idx[mine, 2], idx[mine, 3]
                A_blk = sp.csr_matrix(
                    (-val[mine] * svec_scale(i, j), (svec_index(i, j, dim), idx[mine, 1])),
                    shape=(size, n),
                )
            if self.dcoord is not None:
                idx, val, _ = self.dcoord
                mine = idx[:, 0] == k
                i, j = idx[mine, 1], idx[mine, 2]
                b_blk[svec_index(i, j, dim)] = val[mine] * svec_scale(i, j)
            rows.add("psd", A_blk, b_blk, f"PSDCON {k} ({dim}x{dim})", order=dim)
        A, b, dims, constraints, _owners = rows.assemble()

        a = np.zeros(n)
        if self.objA is not None:
            a[self.objA[0]] = self.objA[1]
        sign = -1.0 if self.sense == "MAX" else 1.0
        meta = {
            "version": self.version,
            "objsense": self.sense,
            "var_cones": tuple((c.name, c.dim) for c in self.var),
            "con_cones": tuple((c.name, c.dim) for c in (self.con or [])),
            "psdcon": tuple(self.psdcon or ()),
            "objective_constant": self.objB,
        }
        cones = ", ".join(sorted({c.name for c in self.var + (self.con or [])}))
        extra = f"CBF v{self.version}, cones {cones}" + (
            f", {len(self.psdcon)} PSDCON" if self.psdcon else "")
        try:
            return fixed_problem_file(
                self.path, "cbf", A, b, sign * a, dims, offset=sign * self.objB,
                objective_sign=sign, constraints=constraints, metadata=meta,
                extra_description=extra,
            )
        except ValueError as err:
            raise ProblemFileError(self.path, f"could not build the cone program: {err}") from err


def read_cbf(path: str | Path) -> ProblemFile:
    """Read a CBF file into a fixed cone program (see the module docstring). Raises
    ProblemFileError with the line number for malformed files and
    UnsupportedFeatureError for features outside the supported subset."""
    parser = _Parser(Path(path))
    parser.parse()
    return parser.build()
