"""Both libraries in a training-loop pattern: batch-1 forward + backward calls, each
with parameter values different from the previous call's (the draws of the shared
families with ``batch=K``), in one session. Reported per call (median ms) and as a
ratio (cvxpylayers / conelayers).

Why it exists: the shared harness repeats the same values in every timed repetition.
conelayers keeps SCS workspaces across calls when A and P are fixed
(``conelayers.solvers.scs.WorkspacePool``), and a kept workspace that just solved the
same data converges in fewer iterations (SCS's acceleration memory), which a training
loop would not see. Distinct values per call measure what a user gets.

Needs the ``bench`` extra. Usage:

    python benchmarks/distinct_values.py [--families lp,qp] [--sizes small,medium]
        [--draws 16] [--out benchmarks/results/distinct_values.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"
sys.path.insert(0, str(BENCH))

import harness as H  # noqa: E402
import problems  # noqa: E402
from cvxpylayers.torch import CvxpyLayer as AnchorLayer  # noqa: E402

from conelayers.torch import CvxpyLayer  # noqa: E402

torch.set_default_dtype(torch.float64)


def per_call_ms(layer, draws: list[list], weights: list[torch.Tensor]) -> float:
    """Median wall time of forward + backward over calls 2..K (call 1 warms up)."""
    times = []
    for values in draws:
        tensors = [torch.tensor(v, requires_grad=True) for v in values]
        t0 = time.perf_counter()
        outs = layer(*tensors, solver_args=dict(H.SCS_ARGS))
        sum((w * o).sum() for w, o in zip(weights, outs, strict=True)).backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1e3


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="lp,qp,qp_factor,lasso,socp,sdp,projection_simplex,"
                                          "cyclic")
    p.add_argument("--sizes", default="small,medium")
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/distinct_values.json")
    opts = p.parse_args(argv)
    H.stable_malloc()
    torch.set_num_threads(2)
    rows = []
    for name in opts.families.split(","):
        for size in opts.sizes.split(","):
            if size not in problems.sizes(name):
                continue
            inst = problems.make(name, size, opts.seed, batch=opts.draws)
            draws = [[v[k] for v in inst.values] for k in range(opts.draws)]
            weights = [torch.tensor(w) for w in H.loss_weights(inst.variables)]
            row = {"family": name, "size": size, "draws": opts.draws}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for label, cls in (("cvxpylayers", AnchorLayer), ("conelayers", CvxpyLayer)):
                    layer = cls(inst.problem, parameters=inst.parameters,
                                variables=inst.variables)
                    row[f"{label}_ms"] = per_call_ms(layer, draws, weights)
            row["ratio"] = row["cvxpylayers_ms"] / row["conelayers_ms"]
            rows.append(row)
            print(f"{name:20s} {size:7s} cvxpylayers {row['cvxpylayers_ms']:8.2f} ms  "
                  f"conelayers {row['conelayers_ms']:8.2f} ms  ratio {row['ratio']:5.2f}",
                  flush=True)
    ratios = [r["ratio"] for r in rows]
    summary = {"median_ratio": statistics.median(ratios), "min_ratio": min(ratios),
               "machine": H.machine_info(), "solver_args": H.SCS_ARGS}
    print(json.dumps(summary, indent=1, default=str))
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1,
                                         default=str))
    return rows


if __name__ == "__main__":
    main()
