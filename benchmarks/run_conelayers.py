"""conelayers on the shared benchmark families (``../shared/bench``), with the shared
settings, loss, timing, finite-difference reference and JSON schema, so the numbers are
comparable with ``results_anchor.json`` (cvxpylayers + diffcp).

Per (family, size, batch): construct, forward (with grad) and backward time, forward
without grad, the backward with the trust checks off (their overhead), and for batch 1
the bare SCS solve of the same cone program (the floor any layer pays), plus the
gradient against central finite differences at the benchmark tolerance and a tight one.

Usage: python benchmarks/run_conelayers.py [--families lp,qp] [--sizes small,medium]
       [--batches 1,32] [--reps 5] [--out results_conelayers.json]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"
sys.path.insert(0, str(BENCH))

import harness as H  # noqa: E402
import problems  # noqa: E402

from conelayers.solvers.scs import solve as scs_solve  # noqa: E402
from conelayers.torch import CvxpyLayer  # noqa: E402

torch.set_default_dtype(torch.float64)


def run_layer(layer, tensors, weights, args):
    for t in tensors:
        t.grad = None
    t0 = time.perf_counter()
    outs = layer(*tensors, solver_args=dict(args))
    t1 = time.perf_counter()
    loss = sum((w * o).sum() for w, o in zip(weights, outs, strict=True))
    loss.backward()
    return t1 - t0, time.perf_counter() - t1


def caught_messages(caught) -> list[str]:
    return sorted({f"{c.category.__name__}: {str(c.message)[:160]}" for c in caught
                   if not issubclass(c.category, DeprecationWarning)})


def layer_grad(layer, values, weights, args):
    tensors = [torch.tensor(v, requires_grad=True) for v in values]
    w = [torch.tensor(x) for x in weights]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_layer(layer, tensors, w, args)
    return [t.grad.numpy().copy() for t in tensors], caught_messages(caught)


def bare_scs(layer, values, args, reps, budget) -> dict:
    """SCS alone on the cone program the layer builds (with P) for draw 0."""
    core = layer.core
    theta, _, _ = core.parameter_values(values)
    program = core.instances(theta[:, :1])[0]
    settings = {**args, "verbose": False}
    last = {}

    def solve():
        last["sol"] = scs_solve(program, settings)

    out = {"solve_s": H.time_reps(solve, reps, budget_s=budget)}
    out.update(iters=last["sol"].iterations, status=last["sol"].status)
    return out


def bench_case(name, size, batch, opts):
    inst = problems.make(name, size, opts.seed, batch=None if batch == 1 else batch)
    rec = {"library": "conelayers", "family": name, "size": size, "batch": batch,
           "solver": "SCS", "solver_args": opts.args}
    t0 = time.perf_counter()
    layer = CvxpyLayer(inst.problem, parameters=inst.parameters, variables=inst.variables)
    rec["construct_s"] = time.perf_counter() - t0
    prog = layer.core.program
    rec["dims"] = {"n": prog.n, "m": prog.m, "N": prog.n + prog.m, "nnz_A": prog.A.nnz,
                   "cones": prog.dims.describe()}
    weights = H.loss_weights(inst.variables)
    w = [torch.tensor(x) for x in weights]
    tensors = [torch.tensor(v, requires_grad=True) for v in inst.values]
    timings = {"fwd": [], "bwd": [], "bwd_nocheck": []}

    def fwd_bwd(key="bwd", args=opts.args):
        tf, tb = run_layer(layer, tensors, w, args)
        if key == "bwd":
            timings["fwd"].append(tf)
        timings[key].append(tb)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        H.time_reps(fwd_bwd, opts.reps, budget_s=opts.budget)
        H.time_reps(lambda: fwd_bwd("bwd_nocheck", {**opts.args, "checks": "off"}),
                    opts.reps, budget_s=opts.budget)
        plain = [t.detach() for t in tensors]

        def fwd_nograd():
            with torch.no_grad():
                layer(*plain, solver_args=dict(opts.args))

        rec["fwd_nograd_s"] = H.time_reps(fwd_nograd, opts.reps, budget_s=opts.budget)
    rec["fwd_s"] = H.summarize(timings["fwd"][1:])
    rec["bwd_s"] = H.summarize(timings["bwd"][1:])
    rec["bwd_nocheck_s"] = H.summarize(timings["bwd_nocheck"][1:])
    rec["warnings"] = caught_messages(caught)
    values0 = inst.values if batch == 1 else [v[0] for v in inst.values]
    if batch == 1:
        rec["scs"] = bare_scs(layer, values0, opts.args, opts.reps, opts.budget)
        if size in opts.gradcheck_sizes:
            ref = H.fd_reference(inst, weights, h=opts.fd_h)
            gc = {k: ref[k] for k in ("kind", "h", "fd_solver", "ref_norm")}
            gc["default_mode"] = "default"
            for label, args in (("bench", opts.args), ("tight", H.TIGHT_SCS_ARGS)):
                g, warns = layer_grad(layer, inst.values, weights, args)
                gc[f"{label}_default"] = {**H.fd_compare(ref, g), "warnings": warns}
            rec["gradcheck"] = gc
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(problems.FAMILIES))
    p.add_argument("--sizes", default="small,medium,large")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--large-batched", action="store_true")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--budget", type=float, default=8.0)
    p.add_argument("--gradcheck-sizes", default="small,medium")
    p.add_argument("--fd-h", type=float, default=None)
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results_conelayers.json")
    opts = p.parse_args(argv)
    opts.args = dict(H.SCS_ARGS)
    if opts.eps is not None:
        opts.args.update(eps_abs=opts.eps, eps_rel=opts.eps)
    opts.gradcheck_sizes = opts.gradcheck_sizes.split(",")
    H.stable_malloc()
    torch.set_num_threads(2)
    records = []
    t_start = time.perf_counter()
    for name in opts.families.split(","):
        for size in opts.sizes.split(","):
            if size not in problems.sizes(name):
                continue
            for batch in (int(b) for b in opts.batches.split(",")):
                if batch > 1 and size == "large" and not opts.large_batched:
                    continue
                print(f"{name}/{size}/B={batch} ...", flush=True)
                try:
                    records.append(bench_case(name, size, batch, opts))
                except Exception as err:  # noqa: BLE001 - record and go on
                    traceback.print_exc()
                    records.append({"library": "conelayers", "family": name, "size": size,
                                    "batch": batch, "error": f"{type(err).__name__}: {err}"})
    meta = {"versions": {k: version(k) for k in ("cvxpy", "scs", "numpy", "scipy", "torch")},
            "machine": H.machine_info(), "solver_args": opts.args,
            "wall_s": time.perf_counter() - t_start}
    H.write_json(opts.out, records, meta)
    H.print_tables(records)
    return records


if __name__ == "__main__":
    main()
