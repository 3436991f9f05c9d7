"""Constructing a layer twice for the same problem reuses the compiled program."""

from __future__ import annotations

import cvxpy as cp

from canonicalize import compile_problem


def _problem():
    x = cp.Variable(3, name="x")
    p = cp.Parameter(3, name="p")
    return cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0]), p, x


def test_same_problem_reuses_the_program():
    prob, p, x = _problem()
    first = compile_problem(prob, [p], [x])
    assert compile_problem(prob, [p], [x]) is first


def test_different_outputs_or_problems_recompile():
    prob, p, x = _problem()
    first = compile_problem(prob, [p], [x])
    dual = prob.constraints[0].dual_variables[0]
    assert compile_problem(prob, [p], [dual]) is not first
    # CVXPY problems are immutable (``constraints`` returns a copy): a changed problem is
    # a new object, which compiles anew.
    bigger = cp.Problem(prob.objective, prob.constraints + [cp.sum(x) <= 5])
    again = compile_problem(bigger, [p], [x])
    assert again is not first and again.m == first.m + 1
