"""Reliability report (issue 7): the bad-input matrix, the solver-limit matrix and the
two fuzzers, with counts.

For every section it counts the cases tried and sorts them into

* clear errors: an error of the expected class whose message names the parameter (bad
  input), or a warning/SolverError naming status and residuals (solver limits);
* accepted: no error and the right answer where that is allowed (a valid input, a
  Python list for the NumPy core, a solve that refinement made accurate);
* unclear errors: the expected kind of error, but the message lacks the parameter name
  (or status/residuals);
* not rejected: no error and a right answer where an error is required;
* silent failures: no error and a wrong or non-finite output/gradient. Must be 0;
* crashes: an exception of an unexpected class.

Cells that the test suite marks as known faults (strict xfails) are listed by name.
The exit status is 1 if there is any silent failure, else 0.

Usage: python benchmarks/reliability_report.py [--programs 200] [--cones 500]
       [--seed 0] [--no-limits] [--frameworks core,torch,jax,jax_jit]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conelayers.exceptions import ConelayersError  # noqa: E402
from tests.conftest import ZOO_NAMES  # noqa: E402
from tests.reliability import bad_inputs, fuzz, limits  # noqa: E402

COLUMNS = ("tried", "clear errors", "accepted", "unclear errors", "not rejected",
           "silent failures", "crashes")


def _row(title: str, counts: Counter) -> str:
    cells = [f"{counts.get(c, 0):>{max(len(c), 5)}}" for c in COLUMNS]
    return f"{title:<22} " + " ".join(cells)


def _header() -> str:
    return f"{'section':<22} " + " ".join(f"{c:>{max(len(c), 5)}}" for c in COLUMNS)


def bad_input_section(frameworks: set[str]) -> tuple[Counter, list[str]]:
    counts: Counter = Counter()
    notes: list[str] = []
    mapping = {"clear_error": "clear errors", "accepted": "accepted",
               "unclear_error": "unclear errors", "not_rejected": "not rejected",
               "silent_failure": "silent failures", "crash": "crashes"}
    for kind, fw in bad_inputs.cells():
        if fw not in frameworks:
            continue
        out = bad_inputs.classify(kind, fw)
        case = bad_inputs.CASE_BY_KIND[kind]
        counts["tried"] += 1
        if out.outcome == "accepted" and fw not in case.may_accept:
            counts["not rejected"] += 1
        else:
            counts[mapping[out.outcome]] += 1
        if not out.ok:
            known = " [known fault, xfail]" if fw in case.xfail else " [NEW]"
            notes.append(f"  {fw:8s} {kind:28s} {out.outcome}: {out.detail[:150]}{known}")
    return counts, notes


def limits_section() -> tuple[Counter, list[str]]:
    counts: Counter = Counter()
    notes: list[str] = []
    mapping = {"warned": "clear errors", "solver_error": "clear errors",
               "accurate": "accepted", "unclear_error": "unclear errors",
               "silent_failure": "silent failures", "crash": "crashes"}
    for name in ZOO_NAMES:
        for refine in (True, False):
            for it in range(1, 6):
                out = limits.limited_outcome(name, it, refine)
                counts["tried"] += 1
                counts[mapping[out.outcome]] += 1
                if out.outcome not in ("warned", "solver_error", "accurate"):
                    notes.append(f"  {name} max_iters={it} refine={refine}: {out.outcome}: "
                                 f"{out.detail[:150]}")
    return counts, notes


def program_section(count: int, seed: int) -> tuple[Counter, list[str], Counter]:
    counts: Counter = Counter()
    notes: list[str] = []
    generated: Counter = Counter()
    rng = np.random.default_rng(seed)
    worst = Counter()
    while counts["tried"] < count:
        dims = fuzz.random_dims(rng)
        s = int(rng.integers(2**32))
        kp = fuzz.known_program(dims, s, float(rng.uniform()))
        if kp is None:
            generated["no program from this draw"] += 1
            continue
        counts["tried"] += 1
        generated["cones"] += len(dims.soc) + len(dims.psd) + dims.exp + dims.exp_dual
        try:
            chk = fuzz.check_program(kp, seed=s)
        except ConelayersError as err:
            counts["unclear errors"] += 1  # an error on a valid, well-posed program
            notes.append(f"  {kp.describe()}: {type(err).__name__}: {err}")
            continue
        except Exception as err:  # noqa: BLE001
            counts["crashes"] += 1
            notes.append(f"  {kp.describe()}: {type(err).__name__}: {err}")
            continue
        for key in ("x_err", "y_err", "s_err", "fd_err", "adjoint_err"):
            worst[key] = max(worst[key], getattr(chk, key))
        failures = fuzz.program_failures(chk)
        if failures:
            counts["silent failures"] += 1
            notes.append(f"  {kp.describe()} (seed {s}): {failures}")
        else:
            counts["accepted"] += 1
    notes.insert(0, "  worst errors: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    return counts, notes, generated


def cone_section(count: int, seed: int) -> tuple[Counter, list[str]]:
    counts: Counter = Counter()
    notes: list[str] = []
    rng = np.random.default_rng(seed + 1)
    for _ in range(count):
        dims = fuzz.random_dims(rng)
        if dims.size == 0:
            continue
        styles = [str(s) for s in rng.choice(fuzz.STYLES, 6)]
        v = fuzz.cone_point(dims, styles, rng)
        for tol in (0.0, 1e-9):
            counts["tried"] += 1
            try:
                failures = fuzz.cone_failures(dims, v, tol)
            except Exception as err:  # noqa: BLE001
                counts["crashes"] += 1
                notes.append(f"  {dims.describe()} {styles}: {type(err).__name__}: {err}")
                continue
            if failures:
                counts["silent failures"] += 1
                notes.append(f"  {dims.describe()} {styles} tol {tol}: {failures}")
            else:
                counts["accepted"] += 1
    return counts, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=200,
                        help="fuzzed cone programs with known solutions (default 200)")
    parser.add_argument("--cones", type=int, default=500,
                        help="fuzzed cone points, each at two kink tolerances (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-limits", action="store_true", help="skip the max_iters matrix")
    parser.add_argument("--frameworks", default=",".join(bad_inputs.FRAMEWORKS),
                        help="frameworks of the bad-input matrix")
    args = parser.parse_args(argv)
    frameworks = set(args.frameworks.split(","))
    for fw in list(frameworks):
        module = {"torch": "torch", "jax": "jax", "jax_jit": "jax"}.get(fw)
        if module is not None:
            try:
                __import__(module)
            except ImportError:
                print(f"({fw}: {module} not installed, skipped)")
                frameworks.discard(fw)

    warnings.simplefilter("ignore")
    sections = []
    t0 = time.perf_counter()
    counts, notes = bad_input_section(frameworks)
    sections.append(("bad inputs", counts, notes, time.perf_counter() - t0))
    if not args.no_limits:
        t0 = time.perf_counter()
        counts, notes = limits_section()
        sections.append(("solver limits", counts, notes, time.perf_counter() - t0))
    t0 = time.perf_counter()
    counts, notes, generated = program_section(args.programs, args.seed)
    notes.append(f"  draws without a program: {generated['no program from this draw']}; "
                 f"non-polyhedral cones in the programs: {generated['cones']}")
    sections.append(("fuzz: programs", counts, notes, time.perf_counter() - t0))
    t0 = time.perf_counter()
    counts, notes = cone_section(args.cones, args.seed)
    sections.append(("fuzz: cones", counts, notes, time.perf_counter() - t0))

    print(_header())
    total: Counter = Counter()
    for title, counts, _notes, _t in sections:
        print(_row(title, counts))
        total.update(counts)
    print(_row("total", total))
    print()
    for title, _counts, notes, seconds in sections:
        print(f"{title} ({seconds:.1f} s)")
        print("\n".join(notes) if notes else "  (nothing to report)")
    silent = total.get("silent failures", 0)
    print(f"\nsilent failures: {silent} (must be 0)")
    return 1 if silent else 0


if __name__ == "__main__":
    sys.exit(main())
