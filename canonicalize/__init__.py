"""canonicalize: compile CVXPY problems (and problem files) into parametric cone programs.

Not to be confused with the unrelated PyPI project of the same name; this package ships
with conelayers and its public surface is the few names below.
"""

from canonicalize.cones import ConeDims
from canonicalize.cvxpy_frontend import compile_problem
from canonicalize.errors import CanonicalizationError
from canonicalize.program import ParameterSlot, ParametricConeProgram, Recovery, SparseDataMap

__all__ = [
    "CanonicalizationError",
    "ConeDims",
    "ParameterSlot",
    "ParametricConeProgram",
    "Recovery",
    "SparseDataMap",
    "compile_problem",
]
