"""Peak memory of conelayers' forward and backward passes against nnz(A), on the shared
lasso family (small → large, plus two intermediate sizes built with the same family
code), each size in a fresh process.

Memory is the growth of the resident set's high-water mark (Linux VmHWM, reset through
/proc/self/clear_refs just before the pass) over the resident set at its start: it sees
SuperLU's and SCS's C allocations, which tracemalloc does not. glibc is told to serve
every allocation of 16 KiB or more by mmap and to return it at free (the shared
harness's ``stable_malloc`` with a small threshold), so a pass cannot hide its peak in
heap memory freed by an earlier one. The backward reuses the LU of U from the forward's
last Newton step; what the forward leaves held for it ("retained") is reported beside
the two peaks. Linear memory shows as a log-log slope ≈ 1 of peak against nnz(A).

Usage: python benchmarks/memory_scaling.py [--out benchmarks/results/memory_lasso.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"
SIZES = {  # the shared family's sizes, and two in between (same generator, other m, n)
    "small": dict(m=30, n=10),
    "medium": dict(m=300, n=150),
    "medium+": dict(m=500, n=250),
    "large-": dict(m=750, n=375),
    "large": dict(m=1000, n=500),
}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def measure_one(size: str) -> dict:
    """Run in a fresh process: build, then one forward and one backward, each with the
    peak RSS growth over its start."""
    sys.path.insert(0, str(BENCH))
    import harness as H
    import problems
    import torch

    from conelayers.torch import CvxpyLayer

    H.stable_malloc(mmap_threshold=16 << 10)
    torch.set_default_dtype(torch.float64)
    builder, table = problems.FAMILIES["lasso"]
    rng = problems._seed("lasso", size if size in table else "large", 0)
    prob, params, variables, sample = builder(SIZES[size], rng)
    values = sample(rng)
    layer = CvxpyLayer(prob, parameters=params, variables=variables)
    tensors = [torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True)
               for v in values]
    args = dict(H.SCS_ARGS)
    layer(*tensors, solver_args=args)[0].sum().backward()  # warm-up: imports, caches
    for t in tensors:
        t.grad = None
    start = _rss_kb("VmRSS")
    _reset_peak()
    (beta,) = layer(*tensors, solver_args=args)
    fwd_kb = _rss_kb("VmHWM") - start
    retained_kb = _rss_kb("VmRSS") - start
    start = _rss_kb("VmRSS")
    _reset_peak()
    beta.sum().backward()
    bwd_kb = _rss_kb("VmHWM") - start
    prog = layer.core.program
    return {"size": size, **SIZES[size], "nnz_A": int(prog.A.nnz), "N": prog.n + prog.m,
            "fwd_peak_kb": fwd_kb, "retained_kb": retained_kb, "bwd_peak_kb": bwd_kb}


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results/memory_lasso.json")
    opts = p.parse_args(argv)
    if opts.one:
        print(json.dumps(measure_one(opts.one)))
        return {}
    rows = []
    for size in SIZES:
        out = subprocess.run([sys.executable, __file__, "--one", size], check=True,
                             capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    # Slopes over the sizes where the pass allocates well above the process's noise
    # (a few hundred kB of allocator slack).
    big = [r for r in rows if r["nnz_A"] >= 10_000]
    result = {
        "rows": rows,
        "bwd_slope": slope([r["nnz_A"] for r in big], [max(r["bwd_peak_kb"], 1) for r in big]),
        "fwd_slope": slope([r["nnz_A"] for r in big], [max(r["fwd_peak_kb"], 1) for r in big]),
        "retained_slope": slope([r["nnz_A"] for r in big],
                                [max(r["retained_kb"], 1) for r in big]),
    }
    print("| size | m×n | nnz(A) | N | forward peak (MB) | retained (MB) | backward peak (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['m']}×{r['n']} | {r['nnz_A']} | {r['N']} | "
              f"{r['fwd_peak_kb'] / 1024:.1f} | {r['retained_kb'] / 1024:.1f} | "
              f"{r['bwd_peak_kb'] / 1024:.1f} |")
    print(f"log-log slope vs nnz(A) (nnz ≥ 1e4): forward {result['fwd_slope']:.2f}, "
          f"retained {result['retained_slope']:.2f}, backward {result['bwd_slope']:.2f}")
    Path(opts.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
