"""cvxpylayers (the shared anchor runner) and conelayers on the same families, in one
session on one machine, then the shared side-by-side table and a summary of ratios.

Needs the ``bench`` extra (cvxpylayers, diffcp). Usage:

    python benchmarks/side_by_side.py [--families lp,qp] [--sizes small,medium]
        [--batches 1,32] [--reps 5] [--outdir benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402
import run_anchor  # noqa: E402
import run_conelayers  # noqa: E402


def _total(r: dict) -> float | None:
    f, b = r.get("fwd_s"), r.get("bwd_s")
    if not f or not b:
        return None
    return f["median"] + b["median"]


def summarize(anchor_path: Path, ours_path: Path) -> dict:
    """Ratios of forward+backward medians (anchor / conelayers), gradient errors, the
    cost over a bare SCS solve, and the trust checks' share of the backward pass."""
    anchor = {(r["family"], r["size"], r["batch"]): r
              for r in json.loads(anchor_path.read_text())["records"] if "error" not in r}
    ours = {(r["family"], r["size"], r["batch"]): r
            for r in json.loads(ours_path.read_text())["records"] if "error" not in r}
    rows, ratios, batch32, over_scs, check_share, grad_errs = [], [], [], [], [], []
    for key, r in ours.items():
        a = anchor.get(key)
        t_ours = _total(r)
        ratio = _total(a) / t_ours if a and t_ours and _total(a) else None
        if ratio is not None:
            ratios.append(ratio)
            if key[2] > 1:
                batch32.append((key, ratio))
        if key[2] == 1 and r.get("scs"):
            over_scs.append(t_ours / r["scs"]["solve_s"]["median"])
        if r.get("bwd_nocheck_s"):
            share = (r["bwd_s"]["median"] - r["bwd_nocheck_s"]["median"]) / r["bwd_s"]["median"]
            check_share.append(max(share, 0.0))
        gc = r.get("gradcheck") or {}
        err = (gc.get("bench_default") or {})
        if err and gc.get("ref_norm", 0) > 1e-6:
            grad_errs.append((key, err["rel_err"]))
        rows.append((key, ratio))
    return {
        "cells": len(ratios),
        "median_ratio": statistics.median(ratios) if ratios else None,
        "min_ratio": min(ratios) if ratios else None,
        "slowest_cells": sorted(rows, key=lambda kr: kr[1] or 1e9)[:5],
        "batch32": batch32,
        "median_over_scs": statistics.median(over_scs) if over_scs else None,
        "median_check_share_of_backward": statistics.median(check_share) if check_share
        else None,
        "max_grad_rel_err": max((e for _, e in grad_errs), default=None),
        "grad_errs": grad_errs,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="lp,qp,qp_factor,lasso,socp,sdp,projection_simplex,"
                                          "cyclic")
    p.add_argument("--sizes", default="small,medium")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--outdir", default="benchmarks/results")
    opts = p.parse_args(argv)
    out = Path(opts.outdir)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--families", opts.families, "--sizes", opts.sizes, "--batches", opts.batches,
              "--reps", str(opts.reps)]
    anchor_path, ours_path = out / "results_anchor.json", out / "results_conelayers.json"
    run_anchor.main(common + ["--out", str(anchor_path), "--no-cyclic-probe"])
    run_conelayers.main(common + ["--out", str(ours_path)])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        compare.two(compare.load(str(anchor_path)), compare.load(str(ours_path)))
    table = buf.getvalue()
    (out / "side_by_side.md").write_text(table)
    summary = summarize(anchor_path, ours_path)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(table)
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
