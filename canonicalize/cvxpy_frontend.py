"""Compile a DPP CVXPY problem once into a ParametricConeProgram.

CVXPY does the canonicalization: we take its parametrized SCS problem data
(``ParamConeProg``, with the quadratic objective kept) and only re-express it as sparse
affine maps in SCS's sign convention, plus the linear recovery of the requested
variables.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Sequence
from dataclasses import replace

import cvxpy as cp
import numpy as np
import scipy.sparse as sp
from cvxpy.reductions.cvx_attr2constr import batched_upper_tri_to_full

from canonicalize.cones import ConeDims
from canonicalize.errors import CanonicalizationError
from canonicalize.presolve import fix_bounded_epigraphs
from canonicalize.program import (
    ConstraintRows,
    ParameterSlot,
    ParametricConeProgram,
    Recovery,
    SparseDataMap,
)
from canonicalize.substitute import substitute_defined_variables

_SYMMETRIC_ATTRS = ("symmetric", "PSD", "NSD")


def _label(expr: cp.Expression) -> str:
    name = expr.name()
    return f"'{name}' (shape {expr.shape})"


def _check_problem(problem: cp.Problem, gp: bool = False) -> None:
    if not isinstance(problem, cp.Problem):
        raise CanonicalizationError(
            f"expected a cvxpy.Problem, got {type(problem).__name__}"
        )
    if gp:
        if not problem.is_dgp():
            raise CanonicalizationError(
                "gp=True but the problem is not DGP (log-log convex): see CVXPY's "
                "'Disciplined Geometric Programming' rules"
            )
        if not problem.is_dgp(dpp=True):
            raise CanonicalizationError(
                "the problem is DGP but not DPP: some parameter enters in a way that "
                "is not log-log affine"
            )
        return
    discrete = [v for v in problem.variables()
                if v.attributes.get("integer") or v.attributes.get("boolean")]
    if discrete:
        raise CanonicalizationError(
            f"integer or boolean variables ({', '.join(_label(v) for v in discrete)}) are "
            "not supported: a layer solves and differentiates a continuous convex problem "
            "(relax them to continuous bounds)"
        )
    if not problem.is_dcp():
        raise CanonicalizationError(
            "the problem is not DCP (disciplined convex): CVXPY cannot prove it convex, "
            "so it cannot be turned into a cone program"
        )
    if not problem.is_dcp(dpp=True):
        raise CanonicalizationError(
            "the problem is DCP but not DPP: some parameter enters non-affinely "
            "(e.g. a product of two parameters, or a parameter inside a nonlinear "
            "atom); see CVXPY's 'Disciplined Parametrized Programming' rules"
        )


def _check_parameters(problem: cp.Problem, parameters: Sequence[cp.Parameter]) -> None:
    if not isinstance(parameters, (list, tuple)):
        raise CanonicalizationError(
            f"parameters must be a list or tuple of cvxpy.Parameter, got "
            f"{type(parameters).__name__}"
        )
    for p in parameters:
        if not isinstance(p, cp.Parameter):
            raise CanonicalizationError(
                f"parameters must be cvxpy.Parameter objects; got {type(p).__name__}"
            )
    ids = [p.id for p in parameters]
    if len(set(ids)) != len(ids):
        raise CanonicalizationError("a parameter is listed twice in parameters")
    in_problem = {p.id: p for p in problem.parameters()}
    missing = [p for pid, p in in_problem.items() if pid not in ids]
    extra = [p for p in parameters if p.id not in in_problem]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing from the list: " + ", ".join(_label(p) for p in missing))
        if extra:
            parts.append("not in the problem: " + ", ".join(_label(p) for p in extra))
        raise CanonicalizationError(
            "the layer's parameters must exactly match problem.parameters(); "
            + "; ".join(parts)
        )
    for p in parameters:
        if any(p.attributes.get(a) for a in _SYMMETRIC_ATTRS):
            raise CanonicalizationError(
                f"parameter {_label(p)} is declared symmetric/PSD/NSD, which is not "
                "supported yet; declare it without the attribute and symmetrize it in "
                "the problem (e.g. (S + S.T) / 2)"
            )


def _check_variables(problem: cp.Problem, variables: Sequence[cp.Variable]) -> None:
    if not isinstance(variables, (list, tuple)):
        raise CanonicalizationError(
            f"variables must be a list or tuple of cvxpy.Variable, got "
            f"{type(variables).__name__}"
        )
    in_problem = {v.id for v in problem.variables()}
    in_problem |= {dv.id for c in problem.constraints for dv in c.dual_variables}
    for v in variables:
        if not isinstance(v, cp.Variable):
            raise CanonicalizationError(
                f"variables must be cvxpy.Variable objects; got {type(v).__name__}"
            )
        if v.id not in in_problem:
            raise CanonicalizationError(
                f"variable {_label(v)} is not a variable of the problem: the "
                "requested variables must be a subset of problem.variables() or dual "
                "variables of its constraints (constraint.dual_variables[k])"
            )


def _sparse_map(reduced, fallback_shape: tuple[int, int]) -> SparseDataMap:
    """SparseDataMap from a CVXPY ReducedMat (already cached by get_problem_data)."""
    reduced.cache()
    if reduced.problem_data_index is None:
        n_cols = reduced.reduced_mat.shape[1]
        return SparseDataMap(
            shape=fallback_shape,
            indices=np.zeros(0, dtype=np.int64),
            indptr=np.zeros(fallback_shape[1] + 1, dtype=np.int64),
            values_map=sp.csr_matrix((0, n_cols)),
        )
    indices, indptr, shape = reduced.problem_data_index
    return SparseDataMap(
        shape=(int(shape[0]), int(shape[1])),
        indices=np.asarray(indices, dtype=np.int64),
        indptr=np.asarray(indptr, dtype=np.int64),
        values_map=sp.csr_matrix(reduced.reduced_mat, dtype=np.float64),
    )


def _cone_dims(dims) -> ConeDims:
    power_3d = tuple(float(a) for a in getattr(dims, "p3d", ()) or ())
    power_nd = getattr(dims, "pnd", None) or ()
    if power_nd:
        raise CanonicalizationError(
            "the problem uses n-dimensional power cones, which SCS does not support"
        )
    return ConeDims(
        zero=int(dims.zero),
        nonneg=int(dims.nonneg),
        soc=tuple(int(q) for q in dims.soc),
        psd=tuple(int(s) for s in dims.psd),
        exp=int(dims.exp),
        exp_dual=0,
        power=power_3d,
    )


def _variable_recovery(
    var: cp.Variable, param_prog, n: int, var_id: int | None = None, exp: bool = False
) -> Recovery:
    var_id = var.id if var_id is None else var_id
    col = param_prog.var_id_to_col.get(var_id)
    if col is None:
        raise CanonicalizationError(
            f"variable {_label(var)} does not appear in the canonicalized problem "
            "(CVXPY eliminated it); it cannot be an output"
        )
    reduced = {v.id: v for v in param_prog.variables}[var_id]
    size = int(reduced.size)
    select = sp.csr_matrix(
        (np.ones(size), (np.arange(size), col + np.arange(size))), shape=(size, n)
    )
    if size == var.size:
        matrix = select
    elif any(var.attributes.get(a) for a in _SYMMETRIC_ATTRS) and len(var.shape) == 2:
        fill = sp.csr_matrix(batched_upper_tri_to_full(1, var.shape[-1]))
        matrix = sp.csr_matrix(fill @ select)
    else:
        raise CanonicalizationError(
            f"variable {_label(var)} has attributes whose recovery is not supported yet "
            f"({ {k: v for k, v in var.attributes.items() if v} })"
        )
    return Recovery(
        name=var.name(), shape=tuple(var.shape), source="x", matrix=matrix, exp=exp
    )


def _attribute_replacements(chain, inverse_data: list) -> dict[int, int]:
    """User variable id → id of the plain variable CVXPY's CvxAttr2Constr put in its
    place (empty without that reduction)."""
    for reduction, inv in zip(chain.reductions, inverse_data):
        if type(reduction).__name__ == "CvxAttr2Constr" and isinstance(inv, tuple) and inv:
            return {old: new.id for old, new in inv[0].items() if hasattr(new, "id")}
    return {}


def _final_constraint_ids(problem: cp.Problem, inverse_data: list) -> dict[int, int]:
    """User constraint id → id of the canonical constraint CVXPY turned it into, by
    composing the reductions' constraint-id maps."""
    maps = []
    for inv in inverse_data:
        if isinstance(inv, tuple) and len(inv) == 3 and isinstance(inv[2], dict):
            maps.append(inv[2])  # CvxAttr2Constr
        elif getattr(inv, "cons_id_map", None):
            maps.append(inv.cons_id_map)
    out = {}
    for con in problem.constraints:
        cid = con.id
        for mapping in maps:
            cid = mapping.get(cid, cid)
        out[con.id] = cid
    return out


_ZERO_PROMOTE = re.compile(r"\s*\+\s*Promote\(-?0\.0, \([^)]*\)\)")


def readable(constraint) -> str:
    """A user's constraint as CVXPY prints it, without the zero CVXPY adds to ``X >> 0``
    (printed "X + Promote(-0.0, (3, 3)) >> 0")."""
    return _ZERO_PROMOTE.sub("", str(constraint))


def _constraint_rows(
    problem: cp.Problem, param_prog, m: int, final_ids: dict[int, int]
) -> tuple[ConstraintRows, ...]:
    """Row ranges of the canonical constraints (in SCS's cone order), labelled with the
    user's constraint they come from, if any. Empty if the sizes do not add up."""
    user = {final_ids[c.id]: c for c in problem.constraints}
    position = {c.id: i for i, c in enumerate(problem.constraints)}
    rows, start = [], 0
    for con in param_prog.constraints:
        kind = type(con).__name__
        if kind == "SOC":
            size = int(sum(con.cone_sizes()))
        elif kind == "SvecPSD":  # already vectorized: one row per svec entry
            size = int(con.args[0].size)
        elif kind == "PSD":
            n = int(con.args[0].shape[0])
            size = n * (n + 1) // 2
        elif kind in ("ExpCone", "PowCone3D"):
            size = 3 * int(con.num_cones())
        else:
            size = int(con.size)
        if con.id in user:
            original = user[con.id]
            label = f"constraints[{position[original.id]}]: {readable(original)}"
            is_user, uid = True, original.id
        else:
            label, is_user = f"auxiliary {kind} constraint (from canonicalization)", False
            uid = None
        rows.append(ConstraintRows(label, kind, start, start + size, is_user, uid))
        start += size
    return tuple(rows) if start == m else ()


def _dual_owner(problem: cp.Problem, var: cp.Variable):
    """(constraint, k) such that ``var`` is ``constraint.dual_variables[k]``, or None."""
    for con in problem.constraints:
        for k, dv in enumerate(con.dual_variables):
            if dv.id == var.id:
                return con, k
    return None


def _dual_recovery(var, con, k: int, rows: ConstraintRows, m: int) -> Recovery:
    """y rows → the dual variable's values (vec_F), in CVXPY's dual conventions."""
    size = int(var.size)
    start = rows.start
    if rows.kind in ("Zero", "NonNeg"):
        idx, coef = start + np.arange(size), np.ones(size)
        out_idx = np.arange(size)
    elif rows.kind == "SOC":
        cone_sizes = list(con.cone_sizes())
        axis = getattr(con, "axis", 0)
        offsets = start + np.concatenate([[0], np.cumsum(cone_sizes)[:-1]]).astype(int)
        if k == 0:  # t: the first row of each cone
            idx, out_idx = offsets, np.arange(len(cone_sizes))
        else:  # X: the other rows; cone i is column i (axis=0) or row i (axis=1)
            shape = var.shape if len(var.shape) == 2 else (var.size, 1)
            rows_i, cols_i = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
            cone = cols_i if axis == 0 else rows_i
            within = rows_i if axis == 0 else cols_i
            idx = (offsets[cone] + 1 + within).ravel()
            out_idx = np.ravel_multi_index((rows_i.ravel(), cols_i.ravel()), shape, order="F")
        coef = np.ones(idx.size)
    elif rows.kind in ("ExpCone", "PowCone3D"):
        cones = np.arange(size)
        idx, out_idx, coef = start + 3 * cones + k, cones, np.ones(size)
    elif rows.kind in ("PSD", "SvecPSD"):
        n = int(var.shape[0])
        r, c = np.tril_indices(n)  # column-major lower triangle: sort by column
        order = np.lexsort((r, c))
        r, c = r[order], c[order]
        svec_rows = start + np.arange(r.size)
        scale = np.where(r == c, 1.0, 1.0 / np.sqrt(2.0))
        idx = np.concatenate([svec_rows, svec_rows[r != c]])
        coef = np.concatenate([scale, scale[r != c]])
        out_idx = np.concatenate([r + n * c, (c + n * r)[r != c]])
    else:
        raise CanonicalizationError(
            f"dual variables of {rows.kind} constraints are not supported as outputs"
        )
    matrix = sp.csr_matrix((coef, (out_idx, idx)), shape=(size, m))
    return Recovery(name=var.name(), shape=tuple(var.shape), source="y", matrix=matrix)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _fingerprint(problem: cp.Problem) -> tuple:
    """What a compiled program depends on besides parameter values: the objective and
    constraint objects (CVXPY expressions are immutable; the constraint list is not)."""
    return (id(problem.objective), tuple(id(c) for c in problem.constraints))


def compile_problem(
    problem: cp.Problem,
    parameters: Sequence[cp.Parameter],
    variables: Sequence[cp.Variable],
    gp: bool = False,
    presolve: bool = True,
) -> ParametricConeProgram:
    """Compile ``problem`` (see ``_compile``), reusing an earlier compilation of the same
    problem object with the same arguments when the problem's objective and constraint
    list are unchanged (programs are immutable, so sharing them between layers is
    safe)."""
    try:
        key = (tuple(p.id for p in parameters), tuple(v.id for v in variables), gp, presolve)
    except (TypeError, AttributeError):  # let _compile produce the error message
        return _compile(problem, parameters, variables, gp, presolve)
    if isinstance(problem, cp.Problem):
        with _CACHE_LOCK:
            cached = _CACHE.get(problem, {}).get(key)
        if cached is not None and cached[0] == _fingerprint(problem):
            return cached[1]
    program = _compile(problem, parameters, variables, gp, presolve)
    with _CACHE_LOCK:
        _CACHE.setdefault(problem, {})[key] = (_fingerprint(problem), program)
    return program


def _compile(
    problem: cp.Problem,
    parameters: Sequence[cp.Parameter],
    variables: Sequence[cp.Variable],
    gp: bool = False,
    presolve: bool = True,
) -> ParametricConeProgram:
    """Compile ``problem`` into a ParametricConeProgram whose θ lists ``parameters``.

    With ``presolve`` (the default), epigraph variables of bounds such as
    ``norm(·) <= r`` are fixed at the bound where that leaves the optimal x unchanged
    (``canonicalize.presolve``): fewer variables, and no harmless null space of U; then
    variables defined by a two-entry equality (``sum_squares(x − p)``'s t) are
    substituted out (``canonicalize.substitute``).

    With ``gp=True`` the problem is log-log convex (DGP): CVXPY's Dgp2Dcp reduction
    works in logs, so positive parameters enter θ as log(value) and variables come out
    as exp(·) (recorded in the slots and recoveries).

    Raises CanonicalizationError naming the offender for non-DCP/non-DPP problems,
    parameter lists that differ from the problem's, and variables not in the problem.
    """
    _check_problem(problem, gp)
    _check_parameters(problem, parameters)
    _check_variables(problem, variables)

    try:
        data, chain, inverse_data = problem.get_problem_data(
            cp.SCS, gp=gp, enforce_dpp=True, solver_opts={"use_quad_obj": True}
        )
    except cp.error.DPPError as err:
        # is_dpp() passed, but a reduction multiplied parameters together (quad_form of
        # a parameter-dependent expression, e.g. quad_form(x - p, G)).
        raise CanonicalizationError(
            "the problem is not DPP once CVXPY canonicalizes it (a parameter enters a "
            "product with itself or another parameter, e.g. quad_form(x - p, G): write "
            "sum_squares(L @ (x - p)) with G = L^T L instead): " + str(err).split(".")[0]
        ) from err
    log_params: dict[int, int] = {}
    log_vars: dict[int, int] = {}
    if gp:
        dgp = chain.reductions[0].canon_methods
        log_params = {p.id: q.id for p, q in dgp._parameters.items()}
        log_vars = {v.id: w.id for v, w in dgp._variables.items()}
    param_prog = data[cp.settings.PARAM_PROB]
    n = int(param_prog.x.size)
    dims = _cone_dims(param_prog.cone_dims)
    m = dims.size

    # [A | b] of CVXPY's "Ax + b ∈ K" form, as one CSC pattern with b as last column.
    aug = _sparse_map(param_prog.reduced_A, (m, n + 1))
    split = int(aug.indptr[n])
    # SCS form: A_scs = -A_cvx, b_scs = b_cvx.
    A = SparseDataMap(
        shape=(m, n),
        indices=aug.indices[:split],
        indptr=aug.indptr[: n + 1],
        values_map=sp.csr_matrix(-aug.values_map[:split]),
    )
    b_rows = aug.indices[split:]
    scatter = sp.csr_matrix(
        (np.ones(b_rows.size), (b_rows, np.arange(b_rows.size))), shape=(m, b_rows.size)
    )
    b_map = sp.csr_matrix(scatter @ aug.values_map[split:])

    q = sp.csr_matrix(param_prog.q, dtype=np.float64)
    c_map, offset_map = q[:n], q[n : n + 1]

    P = None
    if param_prog.P is not None:
        P = _sparse_map(param_prog.reduced_P, (n, n))
        if P.nnz == 0:
            P = None

    slots = []
    for p in parameters:
        offset = param_prog.param_id_to_col.get(log_params.get(p.id, p.id))
        if offset is None:
            raise CanonicalizationError(
                f"parameter {_label(p)} was eliminated by CVXPY's canonicalization"
            )
        slots.append(
            ParameterSlot(
                name=p.name(),
                shape=tuple(p.shape),
                offset=int(offset),
                size=int(p.size),
                nonneg=bool(p.attributes.get("nonneg")),
                nonpos=bool(p.attributes.get("nonpos")),
                positive=bool(p.attributes.get("pos")),
                log=p.id in log_params,
            )
        )

    final_ids = _final_constraint_ids(problem, inverse_data)
    constraint_rows = _constraint_rows(problem, param_prog, m, final_ids)
    if m == 0:
        # No constraints at all: SCS needs a cone row. An always-slack 0·x + s = 1,
        # s ≥ 0 (y = 0, J = 0: U gains a decoupled identity row) changes nothing else.
        total = b_map.shape[1]
        m, dims = 1, replace(dims, nonneg=1)
        A = SparseDataMap(shape=(1, n), indices=A.indices, indptr=A.indptr,
                          values_map=A.values_map)
        b_map = sp.csr_matrix(([1.0], ([0], [total - 1])), shape=(1, total))
        constraint_rows = (ConstraintRows(
            "auxiliary row 0 ≤ 1 (the problem has no constraints; SCS needs one)",
            "nonneg", 0, 1, False),)
    # Variables with attributes (nonneg, bounds, ...) are replaced by plain ones plus
    # constraints (CVXPY's CvxAttr2Constr); the replacement is what the program holds.
    replaced = _attribute_replacements(chain, inverse_data)
    recoveries = []
    for v in variables:
        owner = _dual_owner(problem, v)
        if owner is None:
            var_id = log_vars.get(v.id)
            if var_id is None and v.id not in param_prog.var_id_to_col:
                var_id = replaced.get(v.id)
            recoveries.append(_variable_recovery(v, param_prog, n, var_id, exp=gp))
            continue
        if gp:
            raise CanonicalizationError(
                f"dual variables of log-log convex problems (gp=True) are not supported "
                f"as outputs ({_label(v)})"
            )
        con, k = owner
        rows = next((r for r in constraint_rows if r.user_id == con.id), None)
        if rows is None:
            raise CanonicalizationError(
                f"the dual variable of constraint '{con}' could not be located in the "
                "cone program"
            )
        recoveries.append(_dual_recovery(v, con, k, rows, m))
    program = ParametricConeProgram(
        n=n,
        m=m,
        dims=dims,
        parameters=tuple(slots),
        A=A,
        P=P,
        b_map=b_map,
        c_map=sp.csr_matrix(c_map),
        offset_map=sp.csr_matrix(offset_map),
        recoveries=tuple(recoveries),
        constraints=constraint_rows,
        objective_sign=-1.0 if isinstance(problem.objective, cp.Maximize) else 1.0,
        objective_exp=gp,
    )
    if not presolve:
        return program
    return substitute_defined_variables(fix_bounded_epigraphs(program)[0])
