"""SCS as conelayers drives it, against fresh workspaces at SCS's defaults: iterations,
workspace setups and time of the forward's SCS part, on the shared families.

Two patterns, both on the same distinct draws of each family (``problems.make(...,
batch=D)``), and both only for layers whose A and P no parameter enters (the others get
no workspace pool):

- ``calls``: a training loop at batch 1, one draw per call. "layer" is
  ``solve_batch`` with the layer's ``WorkspacePool`` (kept workspaces and the scale
  memory), "fresh" a new SCS workspace per call at SCS's default scale.
- ``batches``: the same batch of D draws solved in ``--calls`` successive calls, with
  the pool (call 0 has nothing to remember yet) and without.

This is where the numbers for the workspace pool and the scale memory in docs/DESIGN.md
come from. Timings on a busy machine move; iterations and setups do not.

Usage: python benchmarks/scs_iterations.py [--families lp,qp] [--sizes small,medium]
       [--draws 16] [--calls 4] [--out benchmarks/results/scs_iterations.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"
sys.path.insert(0, str(BENCH))

import harness as H  # noqa: E402
import problems  # noqa: E402

import conelayers.solvers.scs as scs_mod  # noqa: E402
from conelayers.layer import LayerCore  # noqa: E402
from conelayers.solvers.scs import WorkspacePool, normalize_settings, solve_batch  # noqa: E402


class _SetupCounter:
    """Counts SCS workspaces built (setups paid) while installed."""

    def __init__(self) -> None:
        self.count = 0
        self._real = scs_mod._workspace

    def __enter__(self) -> _SetupCounter:
        def counting(program, settings):
            self.count += 1
            return self._real(program, settings)

        scs_mod._workspace = counting
        return self

    def __exit__(self, *exc) -> None:
        scs_mod._workspace = self._real


def _programs(name: str, size: str, draws: int, seed: int):
    inst = problems.make(name, size, seed, batch=draws)
    core = LayerCore(inst.problem, inst.parameters, inst.variables)
    theta, _, _ = core.parameter_values(inst.values)
    return core, core.instances(theta)


def _run(programs, settings, pool_of, n_jobs=None) -> dict:
    """Solve ``programs`` as one call (a list) or one call each (a list of lists)."""
    with _SetupCounter() as setups:
        t0 = time.perf_counter()
        sols = [s for call in programs for s in solve_batch(call, settings, n_jobs=n_jobs,
                                                           pool=pool_of())]
        elapsed = time.perf_counter() - t0
    return {"iterations": sum(s.iterations for s in sols), "setups": setups.count,
            "ms": round(elapsed * 1e3, 2),
            "unsolved": sum(s.status != "solved" for s in sols)}


def calls_pattern(name, size, draws, seed, settings) -> dict | None:
    core, programs = _programs(name, size, draws, seed)
    if core.constant != (True, True):
        return None
    pool = WorkspacePool()
    layer = _run([[p] for p in programs], settings, lambda: pool)
    fresh = _run([[p] for p in programs], settings, lambda: None)
    return {"family": name, "size": size, "draws": draws, "layer": layer, "fresh": fresh}


def batches_pattern(name, size, draws, seed, settings, calls) -> dict | None:
    core, programs = _programs(name, size, draws, seed)
    if core.constant != (True, True):
        return None
    pool = WorkspacePool()
    with_pool = [_run([programs], settings, lambda: pool) for _ in range(calls)]
    without = [_run([programs], settings, lambda: None) for _ in range(calls)]
    return {"family": name, "size": size, "batch": draws, "with_pool": with_pool,
            "without_pool": without}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="lp,qp,qp_factor,lasso,socp,sdp,projection_simplex")
    p.add_argument("--sizes", default="small,medium")
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/scs_iterations.json")
    opts = p.parse_args()
    settings = normalize_settings(H.SCS_ARGS)  # what a layer hands SCS for these args
    out = {"settings": {k: v for k, v in settings.items() if k != "verbose"},
           "calls": [], "batches": []}
    for name in opts.families.split(","):
        for size in opts.sizes.split(","):
            if size not in problems.sizes(name):
                continue
            row = calls_pattern(name, size, opts.draws, opts.seed, settings)
            if row is None:
                print(f"{name:18s} {size:6s} A or P has parameters: no pool")
                continue
            out["calls"].append(row)
            lay, fr = row["layer"], row["fresh"]
            print(f"{name:18s} {size:6s} calls   iterations {fr['iterations']:6d} -> "
                  f"{lay['iterations']:6d}  setups {fr['setups']:3d} -> {lay['setups']:3d}  "
                  f"ms {fr['ms']:8.1f} -> {lay['ms']:8.1f}")
            row = batches_pattern(name, size, opts.draws, opts.seed, settings, opts.calls)
            out["batches"].append(row)
            w = " ".join(f"{c['iterations']}/{c['setups']}/{c['ms']:.0f}" for c in row["with_pool"])
            wo = " ".join(f"{c['iterations']}/{c['setups']}/{c['ms']:.0f}"
                          for c in row["without_pool"])
            print(f"{'':25s} batches (iterations/setups/ms per call) pool: {w} | none: {wo}")
    Path(opts.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
