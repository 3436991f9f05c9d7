"""``conelayers diagnose FILE``: solve a problem file, differentiate it, and say whether
the derivative can be trusted.

Reads SDPA ``.dat-s``, Maros–Meszaros ``.mat``, CBF ``.cbf`` and Python files defining a
CVXPY ``problem`` (see ``canonicalize.readers``). Exit code 0: clean verdict; 1: a
conelayers warning fired (trust or accuracy); 2: the file could not be read or solved
(unreadable, infeasible, unbounded, solver failure).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from canonicalize import CanonicalizationError
from conelayers.exceptions import ConelayersError, ConelayersWarning

EXIT_OK, EXIT_WARN, EXIT_ERROR = 0, 1, 2


def _progress(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"[conelayers] {message}", file=sys.stderr, flush=True)


def _entry_names(program) -> list[str]:
    """Readable names of θ's entries: 'b[3]', 'A[2,5]', or 'param[i]' for parameters."""
    names: list[str] = []
    for slot in program.parameters:
        if slot.name in ("A", "P") and len(slot.shape) == 1:
            dm = program.A if slot.name == "A" else program.P
            rows, cols = dm.row_col()
            names += [f"{slot.name}[{r},{c}]" for r, c in zip(rows, cols)]
        elif slot.size == 1:
            names.append(slot.name)
        else:
            idx = np.unravel_index(np.arange(slot.size), slot.shape, order="F")
            names += [f"{slot.name}[{','.join(str(int(i[k])) for i in idx)}]"
                      for k in range(slot.size)]
    return names


KNOWN_OPTIMUM_RTOL = 1e-4
"""Relative distance |objective − known optimum| / (1 + |known|) above which the file's
published optimum counts as not matched (the verdict is then 'inaccurate')."""


def diagnose(
    path: str, eps: float = 1e-4, checks: str = "full", max_iters: int = 100_000,
    seed: int = 0, top: int = 8, quiet: bool = True, solver_args: dict | None = None,
) -> dict:
    """Everything ``conelayers diagnose`` reports, as a dict (see the README for keys).
    Raises ConelayersError / CanonicalizationError for unreadable or unsolvable files."""
    from canonicalize.readers import read_problem
    from conelayers.sensitivity import analyze_program

    timings = {}
    t0 = time.perf_counter()
    _progress(quiet, f"reading {path}")
    pf = read_problem(path)
    timings["read_s"] = time.perf_counter() - t0
    program, theta = pf.program, pf.theta
    args = {"eps": eps, "max_iters": max_iters, **(solver_args or {})}

    _progress(quiet, f"solving ({program.n} variables, {program.m} cone rows)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConelayersWarning)
        t0 = time.perf_counter()
        sens = analyze_program(program, theta, solver_args=args, checks=checks)
        timings["solve_s"] = time.perf_counter() - t0
        solution = sens.result.solutions[0]
        _progress(quiet, "checking the derivative's conditions")
        t0 = time.perf_counter()
        report = sens.report
        grads = sens.objective_gradient()
        timings["checks_s"] = time.perf_counter() - t0

        _progress(quiet, "finite-difference spot check")
        t0 = time.perf_counter()
        fd = _fd_check(sens, program, theta, args, seed)
        timings["fd_s"] = time.perf_counter() - t0

    flat = np.concatenate(
        [np.ravel(grads[s.name], order="F") for s in program.parameters] or [np.zeros(0)]
    )
    names = _entry_names(program)
    order = np.argsort(-np.abs(flat))[:top]
    sensitivity = {
        "objective_gradient_norm": float(np.linalg.norm(flat)),
        "top": [{"entry": names[i], "d_objective": float(flat[i])} for i in order],
    }
    checks_out = [
        {"selection": c.selection, "sigma_min_rel": c.sigma_min, "nullity": c.nullity,
         "output_weight": c.output_weight, "parameter_weight": c.parameter_weight,
         "nonunique": c.nonunique, "decoupled": c.decoupled}
        for c in report.selections
    ]
    warn_list = [{"category": w.category.__name__, "message": str(w.message)}
                 for w in caught if issubclass(w.category, ConelayersWarning)]
    A_nnz = program.A.nnz
    known = pf.metadata.get("optimal_value") if pf.metadata else None
    verdict = report.verdict
    if verdict in ("ok", "nonsmooth") and any(
        w["category"] == "SingularJacobianWarning" for w in warn_list
    ):
        verdict = "singular"  # found by an iterative solve (checks.solve_message)
    off_known = (known is not None and np.isfinite(sens.objective)
                 and abs(sens.objective - known) > KNOWN_OPTIMUM_RTOL * (1 + abs(known)))
    inaccurate = off_known or any(
        w["category"] == "InaccurateSolutionWarning" for w in warn_list)
    if inaccurate and verdict != "failed":
        # The checks ran at a point that does not solve the problem: their findings
        # (singular, non-unique) describe that point, not the solution.
        verdict = "inaccurate"
    return {
        "file": str(path),
        "format": pf.format,
        "sizes": {"n": program.n, "m": program.m, "nnz_A": A_nnz,
                  "nnz_P": program.P.nnz if program.P is not None else 0},
        "cones": program.dims.describe(),
        "status": solution.status,
        "iterations": solution.iterations,
        "objective": sens.objective,  # in the file's own sense (the program carries it)
        "known_optimum": known,
        "off_known_optimum": bool(off_known),
        "residuals": {"primal": solution.primal_residual, "dual": solution.dual_residual,
                      "gap": solution.gap, "kkt_relative": report.residual},
        "kinks": list(report.kinks),
        "invertibility": checks_out,
        "verdict": verdict,
        "warnings": warn_list,
        "sensitivity": sensitivity,
        "fd_check": fd,
        "timings": timings,
    }


def _fd_check(sens, program, theta, args, seed: int) -> dict | None:
    """⟨w, dx⟩ along a random relative perturbation of the data (each nonzero entry moved
    in proportion to its size): the jvp against central differences of re-solves (each
    refined to ~1e-12), step h = 1e-6. None when there are no parameters."""
    from conelayers.layer import LayerCore

    if theta.size == 0:
        return None
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(theta.size) * np.abs(theta)
    if not direction.any():
        direction = rng.standard_normal(theta.size)
    direction /= np.linalg.norm(direction)
    x_name = sens.output_names[0]
    w = rng.standard_normal(sens.values[x_name].shape)
    split = program.split_theta(direction)
    analytic = float((w * sens.jvp(dict(zip(sens.parameter_names, split)))[x_name]).sum())
    h = 1e-6 * (1.0 + float(np.linalg.norm(theta)))
    core = LayerCore.from_program(program, checks="off")
    # The re-solves are always refined (with refine=False the difference quotient would
    # measure SCS's 1e-6 noise over h, not the derivative).
    budget = {**args, "eps": min(args["eps"], 1e-6), "refine": True,
              "max_iters": max(2000, 3 * sens.result.solutions[0].iterations)}

    def value(t):
        vals = program.split_theta(t)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConelayersWarning)
            out = core.forward(vals, budget)
        return float((w * out.outputs[0][0]).sum())

    try:
        fd = (value(theta + h * direction) - value(theta - h * direction)) / (2 * h)
    except ConelayersError as err:
        return {"output": x_name, "h": h, "analytic": analytic, "error": str(err)}
    # Noise floor of the difference quotient: re-solves refined to ~1e-10 relative move
    # ⟨w, x⟩ by about 1e-10‖w‖₁(1 + ‖x‖∞), divided by h. Below it a derivative is zero.
    x0 = np.asarray(sens.values[x_name])
    floor = 1e-10 * float(np.abs(w).sum()) * (1.0 + float(np.abs(x0).max(initial=0.0))) / h
    rel = abs(analytic - fd) / max(abs(fd), abs(analytic), floor)
    return {"output": x_name, "h": h, "analytic": analytic, "finite_difference": fd,
            "relative_error": rel, "noise_floor": floor,
            "zero": max(abs(fd), abs(analytic)) < floor}


def format_report(d: dict) -> str:
    lines = [
        f"file        {d['file']} ({d['format']})",
        f"sizes       n = {d['sizes']['n']} variables, m = {d['sizes']['m']} cone rows, "
        f"nnz(A) = {d['sizes']['nnz_A']}, nnz(P) = {d['sizes']['nnz_P']}",
        f"cones       {d['cones']}",
        f"status      {d['status']} after {d['iterations']} SCS iterations",
        f"objective   {d['objective']:.10g}"
        + (f"   (file's known optimum {d['known_optimum']:.10g}"
           + (": NOT MATCHED" if d.get("off_known_optimum") else "") + ")"
           if d.get("known_optimum") is not None else ""),
        f"residuals   primal {d['residuals']['primal']:.2e}, dual {d['residuals']['dual']:.2e}, "
        f"gap {d['residuals']['gap']:.2e}; after refinement ‖N(z)‖ = "
        f"{d['residuals']['kkt_relative']:.1e} (relative)",
        f"timings     read {d['timings']['read_s']:.2f} s, solve {d['timings']['solve_s']:.2f} s, "
        f"checks {d['timings']['checks_s']:.2f} s, spot check {d['timings']['fd_s']:.2f} s",
        f"kinks       {len(d['kinks'])}" + (": " + "; ".join(d["kinks"][:4]) if d["kinks"] else ""),
    ]
    for c in d["invertibility"]:
        lines.append(
            f"invertible  selection '{c['selection']}': σ_min/σ_max ≈ {c['sigma_min_rel']:.1e}, "
            f"null space dim {c['nullity']}, weight on outputs {c['output_weight']:.1e}, "
            f"on the gradient {c['parameter_weight']:.1e}"
            + (f" ({c['decoupled']} coordinates decoupled from the outputs set aside)"
               if c.get("decoupled") else "")
            + (", NOT UNIQUE" if c["nonunique"] else "")
        )
    lines.append("sensitivity d(optimal value)/d(data), largest entries:")
    for t in d["sensitivity"]["top"]:
        lines.append(f"              {t['entry']:>16s}  {t['d_objective']:+.4e}")
    f = d["fd_check"]
    if f is None:
        lines.append("fd check    (no parameters)")
    elif "error" in f:
        lines.append(f"fd check    not possible: a perturbed re-solve failed ({f['error']})")
    else:
        lines.append(
            f"fd check    d⟨w, {f['output']}⟩ along a random direction: derivative "
            f"{f['analytic']:+.6e}, central difference {f['finite_difference']:+.6e}, "
            + (f"both zero within the difference quotient's noise ({f['noise_floor']:.0e})"
               if f.get("zero") else f"relative error {f['relative_error']:.1e}")
        )
    for w in d["warnings"]:
        lines.append(f"warning     {w['category']}: {w['message']}")
    lines.append(f"verdict     {d['verdict']}")
    return "\n".join(lines)


def plot_report(d: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    top = d["sensitivity"]["top"][::-1]
    ax1.barh([t["entry"] for t in top], [t["d_objective"] for t in top], color="C0")
    ax1.set_xlabel("d(optimal value) / d(entry)")
    ax1.set_title("largest sensitivities of the optimal value")
    sel = [c["selection"] for c in d["invertibility"]] or ["(not computed)"]
    sig = [max(c["sigma_min_rel"], 1e-300) for c in d["invertibility"]] or [1.0]
    ax2.bar(sel, sig, color=["C3" if s < 1e-10 else "C2" for s in sig])
    ax2.set_yscale("log")
    ax2.axhline(1e-10, color="0.5", ls=":", label="singular below")
    ax2.set_ylabel("σ_min(U) / σ_max(U) (estimate)")
    ax2.set_title(f"invertibility; verdict: {d['verdict']}")
    ax2.legend()
    fig.suptitle(Path(d["file"]).name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _parse_solver_args(items: Sequence[str]) -> dict:
    """'key=value' strings → a dict, values as int, float or bool where they parse."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConelayersError(f"--solver-arg expects KEY=VALUE, got {item!r}")
        low = value.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
            continue
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conelayers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    diag = sub.add_parser("diagnose", help="solve, differentiate and check a problem file")
    diag.add_argument("file")
    diag.add_argument("--json", action="store_true", help="print one JSON object")
    diag.add_argument("--plot", metavar="OUT.png", help="write a figure")
    diag.add_argument("--eps", type=float, default=1e-4, help="SCS eps_abs = eps_rel")
    diag.add_argument("--max-iters", type=int, default=100_000)
    diag.add_argument("--check", choices=("off", "fast", "full"), default="full")
    diag.add_argument("--seed", type=int, default=0, help="seed of the spot check")
    diag.add_argument("--quiet", action="store_true", help="no progress on stderr")
    diag.add_argument("--solver-arg", action="append", default=[], metavar="KEY=VALUE",
                      help="another SCS setting, e.g. acceleration_lookback=0 (repeatable)")
    args = parser.parse_args(argv)
    try:
        extra = _parse_solver_args(args.solver_arg)
        report = diagnose(args.file, eps=args.eps, checks=args.check,
                          max_iters=args.max_iters, seed=args.seed, quiet=args.quiet,
                          solver_args=extra)
    except (ConelayersError, CanonicalizationError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if args.json:
            print(json.dumps({"file": args.file, "status": "error",
                              "error": type(err).__name__, "message": message}))
        print(f"conelayers: {args.file}: {type(err).__name__}: {message}", file=sys.stderr)
        return EXIT_ERROR
    if args.plot:
        try:
            plot_report(report, args.plot)
        except OSError as err:  # e.g. a directory that does not exist
            print(f"conelayers: --plot {args.plot}: {type(err).__name__}: {err}",
                  file=sys.stderr)
            return EXIT_ERROR
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return EXIT_WARN if report["warnings"] or report["verdict"] != "ok" else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
