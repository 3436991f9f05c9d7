"""The parametric cone program: an affine map θ ↦ (P, A, b, c) and the recovery of the
user's variables from the cone solution, each with its adjoint.

Sign conventions are SCS's: min ½xᵀPx + cᵀx s.t. Ax + s = b, s ∈ K. P is stored as the
full symmetric matrix (both triangles), so ½xᵀPx and Px use it as is.

Every data array is one sparse product away from the stacked parameter vector
θ̃ = [θ; 1] (the trailing 1 carries the constants), and batches are columns: the map of a
batch of B parameter vectors is one sparse-dense product.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from canonicalize.cones import ConeDims


@dataclass(frozen=True)
class ParameterSlot:
    """Where one user parameter lives in θ (values flattened in column-major order)."""

    name: str
    shape: tuple[int, ...]
    offset: int
    size: int
    nonneg: bool = False
    nonpos: bool = False
    positive: bool = False
    log: bool = False  # θ holds log(value) (positive parameters of log-log convex problems)


@dataclass(frozen=True)
class Recovery:
    """A user-visible output as a linear function of the cone solution.

    ``vec_F(output) = matrix @ source_vector``, with ``source`` naming the vector of the
    cone solution it reads: ``"x"`` (primal) or ``"y"`` (dual).
    """

    name: str
    shape: tuple[int, ...]
    source: str
    matrix: sp.csr_matrix
    exp: bool = False  # the output is exp(matrix @ source) (log-log convex problems)

    def apply(self, vec: np.ndarray) -> np.ndarray:
        """The output's values from one source vector (or a (len, B) batch as columns)."""
        return self.matrix @ vec

    def adjoint(self, grad: np.ndarray) -> np.ndarray:
        """The gradient on the source vector from the gradient on the output's vec_F."""
        return self._matrix_T @ grad

    @cached_property
    def _matrix_T(self) -> sp.csr_matrix:
        # Built once: a SciPy transpose costs ~20 µs, a noticeable part of a small
        # problem's backward.
        return self.matrix.T.tocsr()


@dataclass(frozen=True)
class ConstraintRows:
    """The rows of the cone program that one canonical constraint occupies.

    ``label`` is the user's constraint as CVXPY prints it when the constraint comes
    from the user's problem, else a description of the auxiliary constraint that
    canonicalization introduced (``user`` tells which).
    """

    label: str
    kind: str
    start: int
    stop: int
    user: bool
    user_id: int | None = None  # id of the user's cvxpy constraint


@dataclass(frozen=True)
class SparseDataMap:
    """An affine map θ̃ ↦ the nonzeros of a sparse matrix with a fixed CSC pattern."""

    shape: tuple[int, int]
    indices: np.ndarray
    indptr: np.ndarray
    values_map: sp.csr_matrix  # (nnz, len(θ̃))

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    @cached_property
    def is_constant(self) -> bool:
        """True when no parameter enters (only the last column of the map is used)."""
        return self.values_map[:, :-1].count_nonzero() == 0

    def values(self, theta_tilde: np.ndarray) -> np.ndarray:
        """Nonzero values for θ̃ of shape (p+1,) or (p+1, B)."""
        return self.values_map @ theta_tilde

    def matrix(self, values: np.ndarray) -> sp.csc_matrix:
        """The sparse matrix with the given nonzero values (one instance)."""
        return sp.csc_matrix((values, self.indices, self.indptr), shape=self.shape)

    def row_col(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column index of each stored entry, in storage order."""
        cols = np.repeat(np.arange(self.shape[1]), np.diff(self.indptr))
        return self.indices, cols

    def constant_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Per stored entry: whether no parameter enters it, and its constant part."""
        values_map = sp.csr_matrix(self.values_map)
        constant = np.diff(values_map[:, :-1].indptr) == 0
        return constant, values_map[:, -1].toarray().ravel()


@dataclass(frozen=True)
class ParametricConeProgram:
    """θ ↦ (P, A, b, c) over a fixed cone, with the recovery of the user's outputs.

    ``A`` and ``P`` give nonzero values on fixed CSC patterns; ``b_map`` and ``c_map``
    are dense-row maps (m × (p+1) and n × (p+1)); ``offset_map`` gives the constant
    objective offset (1 × (p+1)).
    """

    n: int
    m: int
    dims: ConeDims
    parameters: tuple[ParameterSlot, ...]
    A: SparseDataMap
    P: SparseDataMap | None
    b_map: sp.csr_matrix
    c_map: sp.csr_matrix
    offset_map: sp.csr_matrix
    recoveries: tuple[Recovery, ...] = field(default=())
    constraints: tuple[ConstraintRows, ...] = field(default=())
    objective_sign: float = 1.0  # −1 when the user's problem maximizes: value = sign·p*
    # ½θ̃ᵀQθ̃ added to the constant term (variables substituted out, canonicalize.substitute)
    offset_quadratic: sp.csr_matrix | None = None
    # The user's objective is exp of this program's (log-log convex problems: CVXPY's
    # Dgp2Dcp minimizes log f), so its optimal value is exp(sign·p*).
    objective_exp: bool = False

    def offset(self, theta_tilde: np.ndarray) -> np.ndarray:
        """The objective's constant term at θ̃ of shape (p+1,) or (p+1, B): shape (1,) or
        (1, B)."""
        value = self.offset_map @ theta_tilde
        if self.offset_quadratic is not None:
            quadratic = theta_tilde * (self.offset_quadratic @ theta_tilde)
            value = value + 0.5 * np.sum(quadratic, axis=0, keepdims=True)
        return value

    def read_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Masks of the x coordinates (n,) and the y rows (m,) the outputs read."""
        x_read = np.zeros(self.n, dtype=bool)
        y_read = np.zeros(self.m, dtype=bool)
        for rec in self.recoveries:
            target = y_read if rec.source == "y" else x_read
            target[np.unique(rec.matrix.indices)] = True
        return x_read, y_read

    def constraint_at(self, row: int) -> ConstraintRows | None:
        """The constraint that owns cone row ``row`` (None if unknown)."""
        for con in self.constraints:
            if con.start <= row < con.stop:
                return con
        return None

    @property
    def num_theta(self) -> int:
        """Length p of the parameter vector θ (without the trailing 1)."""
        return self.c_map.shape[1] - 1

    def split_theta(self, theta: np.ndarray) -> list[np.ndarray]:
        """θ (p,) split into one array per parameter slot, shaped like the parameter
        (column-major), e.g. the values ``LayerCore.forward`` takes."""
        theta = np.asarray(theta, dtype=np.float64)
        return [theta[s.offset : s.offset + s.size].reshape(s.shape, order="F")
                for s in self.parameters]

    def theta_tilde(self, theta: np.ndarray) -> np.ndarray:
        """Append the constant 1 to θ of shape (p,) or (p, B)."""
        theta = np.asarray(theta, dtype=np.float64)
        ones = np.ones((1,) + theta.shape[1:])
        return np.concatenate([theta, ones], axis=0)

    def data(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Problem data for θ of shape (p,) or (p, B): nonzero values of A and P, b, c."""
        tt = self.theta_tilde(theta)
        out = {
            "A_values": self.A.values(tt),
            "b": self.b_map @ tt,
            "c": self.c_map @ tt,
            "offset": self.offset(tt),
        }
        out["P_values"] = self.P.values(tt) if self.P is not None else None
        return out

    def data_adjoint(
        self,
        A_values_bar: np.ndarray | None,
        b_bar: np.ndarray,
        c_bar: np.ndarray,
        P_values_bar: np.ndarray | None = None,
        offset_bar: np.ndarray | None = None,
        theta_tilde: np.ndarray | None = None,
    ) -> np.ndarray:
        """θ̄ from the gradients on the data (each of shape (·,) or (·, B)): the adjoint of
        ``data``, without the constant's row. A quadratic offset needs θ̃ with
        ``offset_bar``."""
        T = self._transposed_maps
        theta_bar = T["b"] @ b_bar + T["c"] @ c_bar
        if A_values_bar is not None:  # None: A is constant, nothing to pass back
            theta_bar = theta_bar + T["A"] @ A_values_bar
        if P_values_bar is not None and self.P is not None:
            theta_bar = theta_bar + T["P"] @ P_values_bar
        if offset_bar is not None:
            theta_bar = theta_bar + T["offset"] @ offset_bar
            if self.offset_quadratic is not None:
                if theta_tilde is None:
                    raise ValueError("a quadratic offset's adjoint needs theta_tilde")
                theta_bar = theta_bar + (self.offset_quadratic @ theta_tilde) * offset_bar
        return np.asarray(theta_bar)[:-1]

    @cached_property
    def _transposed_maps(self) -> dict[str, sp.csr_matrix]:
        """The maps' transposes, built once (each SciPy transpose costs ~20 µs, a
        noticeable part of a small problem's backward)."""
        maps = {"b": self.b_map, "c": self.c_map, "A": self.A.values_map,
                "offset": self.offset_map}
        if self.P is not None:
            maps["P"] = self.P.values_map
        return {key: M.T.tocsr() for key, M in maps.items()}


def _identity_map(rows: int, offset: int, total: int) -> sp.csr_matrix:
    """Rows of θ̃ ↦ θ̃[offset:offset+rows] (θ̃ has ``total`` entries, the last being 1)."""
    return sp.csr_matrix(
        (np.ones(rows), (np.arange(rows), offset + np.arange(rows))), shape=(rows, total)
    )


def fixed_program(
    A: sp.spmatrix,
    b: np.ndarray,
    c: np.ndarray,
    dims: ConeDims,
    P: sp.spmatrix | None = None,
    offset: float = 0.0,
) -> tuple[ParametricConeProgram, np.ndarray]:
    """A fixed cone program (e.g. read from a file) whose data are the parameters.

    θ stacks the stored entries of A (in CSC order), b, c and, if given, the stored
    entries of P (full symmetric), as parameters named "A", "b", "c", "P"; the outputs
    are x (primal) and y (dual). Returns the program and the θ of the given data, so
    derivatives with respect to any entry of the data come from the same machinery as
    CVXPY layers.
    """
    A = sp.csc_matrix(A, dtype=np.float64)
    A.sort_indices()
    m, n = A.shape
    b = np.asarray(b, dtype=np.float64).ravel()
    c = np.asarray(c, dtype=np.float64).ravel()
    if b.size != m or c.size != n or dims.size != m:
        raise ValueError(
            f"inconsistent sizes: A is {m}x{n}, b has {b.size}, c has {c.size}, the cone "
            f"has {dims.size} rows"
        )
    Pm = None
    if P is not None:
        Pm = sp.csc_matrix(P, dtype=np.float64)
        Pm.sort_indices()
        if Pm.shape != (n, n):
            raise ValueError(f"P is {Pm.shape}, expected {(n, n)}")
    sizes = [("A", A.nnz, (A.nnz,)), ("b", m, (m,)), ("c", n, (n,))]
    if Pm is not None:
        sizes.append(("P", Pm.nnz, (Pm.nnz,)))
    total = sum(s for _, s, _ in sizes) + 1
    slots, start = [], 0
    for name, size, shape in sizes:
        slots.append(ParameterSlot(name=name, shape=shape, offset=start, size=size))
        start += size
    o = {s.name: s.offset for s in slots}
    A_map = SparseDataMap((m, n), A.indices.astype(np.int64), A.indptr.astype(np.int64),
                          _identity_map(A.nnz, o["A"], total))
    P_map = None
    if Pm is not None and Pm.nnz:
        P_map = SparseDataMap((n, n), Pm.indices.astype(np.int64), Pm.indptr.astype(np.int64),
                              _identity_map(Pm.nnz, o["P"], total))
    offset_map = sp.csr_matrix(([offset], ([0], [total - 1])), shape=(1, total))
    recoveries = (
        Recovery("x", (n,), "x", sp.identity(n, format="csr")),
        Recovery("y", (m,), "y", sp.identity(m, format="csr")),
    )
    program = ParametricConeProgram(
        n=n, m=m, dims=dims, parameters=tuple(slots), A=A_map, P=P_map,
        b_map=_identity_map(m, o["b"], total), c_map=_identity_map(n, o["c"], total),
        offset_map=offset_map, recoveries=recoveries,
    )
    theta = np.concatenate([A.data, b, c] + ([Pm.data] if Pm is not None else []))
    return program, theta
