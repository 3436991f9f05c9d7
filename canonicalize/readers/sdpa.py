"""SDPA sparse format (``.dat-s``, the format of SDPLIB).

The file describes the SDPA primal problem over block-diagonal symmetric matrices

    (P)  min  c₁x₁ + … + c_m x_m   s.t.  X = F₁x₁ + … + F_m x_m − F₀ ⪰ 0,

whose dual is (D) max tr(F₀Y) s.t. tr(FᵢY) = cᵢ, Y ⪰ 0. SDPLIB's optimal values are those
of (P) (= (D) at optimality), so the objective sign is +1: the reported objective is
cᵀx + 0. A block of negative size −d is diagonal: its d diagonal entries must be ≥ 0.

SCS form: s = Σ Fᵢxᵢ − F₀ ∈ K, i.e. A = −[svec(F₁) … svec(F_m)], b = −svec(F₀), with
svec SCS's (lower triangle, column-major, off-diagonal entries × √2). The rows of all
diagonal blocks and of 1×1 blocks come first (nonnegative cone), in file order, then
the PSD blocks of order ≥ 2 in file order. With this scaling the SCS dual y is svec(Y),
block by block (``metadata["blocks"]`` gives each block's rows).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from canonicalize.cones import ConeDims
from canonicalize.program import ConstraintRows
from canonicalize.readers._cones import svec_index, svec_scale
from canonicalize.readers._text import Lines, check_size, parse_float, parse_int, read_text
from canonicalize.readers.errors import ProblemFileError
from canonicalize.readers.problem_file import ProblemFile, fixed_problem_file

_PUNCTUATION = re.compile(r"[,(){}]")


def _header_tokens(line: str) -> list[str]:
    return _PUNCTUATION.sub(" ", line).split()


def _leading_numbers(tokens: list[str]) -> list[str]:
    """The tokens up to the first one that is not a number (trailing text is ignored)."""
    out = []
    for tok in tokens:
        try:
            float(tok)
        except ValueError:
            break
        out.append(tok)
    return out


def read_sdpa(path: str | Path) -> ProblemFile:
    """Read an SDPA sparse (``.dat-s``) file into a fixed cone program (see the module
    docstring for the conventions). Raises ProblemFileError with the line number for
    malformed files."""
    path = Path(path)
    lines = Lines(path, read_text(path))
    comments = []
    while not lines.at_end() and lines.peek()[1][0] in "\"*":
        comments.append(lines.next("a comment")[1])

    # m: the number of constraint matrices (= variables); text after it is ignored.
    ln, text = lines.next("the number of constraint matrices m")
    toks = _leading_numbers(_header_tokens(text))
    if not toks:
        raise lines.error(f"expected the number of constraint matrices m, got {text!r}", ln)
    m = parse_int(path, ln, toks[0], "number of constraint matrices m")
    if m < 1:
        raise lines.error(f"the number of constraint matrices m must be ≥ 1, got {m}", ln)
    check_size(path, ln, m, "the number of constraint matrices m")

    ln, text = lines.next("the number of blocks")
    toks = _leading_numbers(_header_tokens(text))
    if not toks:
        raise lines.error(f"expected the number of blocks, got {text!r}", ln)
    nblocks = parse_int(path, ln, toks[0], "number of blocks")
    if nblocks < 1:
        raise lines.error(f"the number of blocks must be ≥ 1, got {nblocks}", ln)

    ln, text = lines.next("the block sizes")
    toks = _leading_numbers(_header_tokens(text))
    if len(toks) != nblocks:
        raise lines.error(f"expected {nblocks} block sizes, got {len(toks)}", ln)
    sizes = [parse_int(path, ln, t, "block size") for t in toks]
    for k, s in enumerate(sizes, start=1):
        if s == 0:
            raise lines.error(f"block {k} has size 0", ln)
    rows_needed = sum(abs(s) if s < 0 or s == 1 else s * (s + 1) // 2 for s in sizes)
    check_size(path, ln, rows_needed, "the number of cone rows the block sizes imply")

    # c: m numbers, normally on one line (continued on following lines if short).
    ln_c, text = lines.next("the objective vector c")
    c_toks = _header_tokens(text)
    ln = ln_c
    while len(c_toks) < m and not lines.at_end():
        ln, text = lines.next("the objective vector c")
        c_toks += _header_tokens(text)
    if len(c_toks) != m:
        where = "" if ln == ln_c else f" (lines {ln_c}-{ln})"
        raise lines.error(
            f"the objective vector c should have {m} numbers, got {len(c_toks)}{where}", ln
        )
    c = np.array([parse_float(path, ln, t, "objective vector c") for t in c_toks])

    # Entries: <matno> <blkno> <i> <j> <value>, one per line.
    entry_lines, entry_tokens = [], []
    while not lines.at_end():
        ln, text = lines.next("an entry")
        toks = text.split()
        if len(toks) != 5:
            raise lines.error(
                f"expected 5 numbers (matno blkno i j value), got {len(toks)}", ln
            )
        entry_lines.append(ln)
        entry_tokens.extend(toks)
    line_of = np.array(entry_lines, dtype=np.int64)
    try:
        data = np.array(entry_tokens, dtype=np.float64).reshape(-1, 5)
    except ValueError:
        data = np.array(
            [parse_float(path, int(line_of[k // 5]), t, "entry")
             for k, t in enumerate(entry_tokens)]
        ).reshape(-1, 5)
    bad = ~np.isfinite(data).all(axis=1)
    if bad.any():
        raise lines.error("entry: expected finite numbers", int(line_of[np.argmax(bad)]))
    idx = data[:, :4]
    bad = (idx != np.round(idx)).any(axis=1)
    if bad.any():
        k = int(np.argmax(bad))
        raise lines.error(
            f"matno, blkno, i and j must be integers, got {entry_tokens[5 * k: 5 * k + 4]}",
            int(line_of[k]),
        )
    mat, blk, ii, jj = (idx[:, q].astype(np.int64) for q in range(4))
    val = data[:, 4]

    def fail_first(mask: np.ndarray, message) -> None:
        if mask.any():
            k = int(np.argmax(mask))
            raise lines.error(message(k), int(line_of[k]))

    fail_first((mat < 0) | (mat > m),
               lambda k: f"matrix number {mat[k]} out of range 0..{m}")
    fail_first((blk < 1) | (blk > nblocks),
               lambda k: f"block number {blk[k]} out of range 1..{nblocks}")
    dim = np.abs(np.array(sizes, dtype=np.int64))[blk - 1]
    fail_first((ii < 1) | (ii > dim) | (jj < 1) | (jj > dim),
               lambda k: f"entry ({ii[k]}, {jj[k]}) outside block {blk[k]} of order {dim[k]}")
    diagonal = np.array([s < 0 for s in sizes])[blk - 1]
    fail_first(diagonal & (ii != jj),
               lambda k: f"off-diagonal entry ({ii[k]}, {jj[k]}) in diagonal block {blk[k]}")

    # Row layout: nonneg rows (diagonal and 1×1 blocks), then PSD blocks, file order.
    block_start = np.zeros(nblocks, dtype=np.int64)
    blocks_meta, constraints, row = [], [], 0
    nonneg_blocks = [k for k, s in enumerate(sizes) if s < 0 or s == 1]
    psd_blocks = [k for k, s in enumerate(sizes) if s > 1]
    for k in nonneg_blocks + psd_blocks:
        s = sizes[k]
        kind = "nonneg" if k in nonneg_blocks else "psd"
        rows = abs(s) if kind == "nonneg" else s * (s + 1) // 2
        block_start[k] = row
        label = f"block {k + 1} ({'diagonal ' if s < 0 else ''}{abs(s)}x{abs(s)})"
        constraints.append(ConstraintRows(label, kind, row, row + rows, user=True))
        blocks_meta.append({"block": k + 1, "size": s, "kind": kind, "rows": (row, row + rows)})
        row += rows
    total_rows = row
    dims = ConeDims(
        nonneg=sum(abs(sizes[k]) for k in nonneg_blocks),
        psd=tuple(sizes[k] for k in psd_blocks),
    )

    is_psd = np.array([s > 1 for s in sizes])[blk - 1]
    local = np.where(is_psd, svec_index(ii - 1, jj - 1, dim), ii - 1)
    rows_all = block_start[blk - 1] + local
    coef = np.where(is_psd, svec_scale(ii, jj), 1.0) * val

    # Duplicates ((i, j) and (j, i) are the same entry): an error, not a silent sum.
    order = np.lexsort((rows_all, mat))
    same = (np.diff(mat[order]) == 0) & (np.diff(rows_all[order]) == 0)
    if same.any():
        k = int(np.argmax(same))
        first, second = order[k], order[k + 1]
        first, second = sorted((first, second), key=lambda q: line_of[q])
        raise lines.error(
            f"duplicate entry for matrix {mat[second]}, block {blk[second]}, "
            f"({ii[second]}, {jj[second]}) (first given on line {line_of[first]})",
            int(line_of[second]),
        )

    in_A = mat > 0
    A = sp.csc_matrix(
        (-coef[in_A], (rows_all[in_A], mat[in_A] - 1)), shape=(total_rows, m)
    )
    b = np.zeros(total_rows)
    b[rows_all[~in_A]] = -coef[~in_A]
    meta = {
        "m": m,
        "block_sizes": tuple(sizes),
        "blocks": tuple(blocks_meta),
        "comments": tuple(comments),
        "convention": "SDPA primal: min c'x s.t. sum_i F_i x_i - F_0 >= 0 (PSD); "
                      "objective_sign +1; the SCS dual y is svec(Y) of the SDPA dual",
    }
    # An SDPLIB file next to SDPLIB's README: its published optimum, for comparison.
    readme = Path(path).with_name("README.md")
    if readme.is_file():
        try:
            known = sdplib_optimal_values(readme).get(Path(path).name.split(".")[0])
        except (OSError, UnicodeDecodeError):
            known = None
        if isinstance(known, float):
            meta["optimal_value"] = known
    try:
        return fixed_problem_file(
            path, "sdpa", A, b, c, dims, objective_sign=1.0, constraints=constraints,
            metadata=meta,
            extra_description=f"{nblocks} blocks {list(sizes)}",
        )
    except ValueError as err:  # inconsistent sizes: a reader bug, but name the file
        raise ProblemFileError(path, f"could not build the cone program: {err}") from err


def sdplib_optimal_values(readme: str | Path) -> dict[str, float | str]:
    """The optimal objective values of SDPLIB's README table, by problem name.

    Values are floats in SDPA's convention (those of (P) min cᵀx, so they compare
    directly with ``ProblemFile.objective``), or the table's text for the infeasible
    problems ("primal infeasible", "dual infeasible"). The table is returned as
    printed: note 14 of the README says qap10's value is −1.093e+03, not −1.093e+01.
    """
    readme = Path(readme)
    values: dict[str, float | str] = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[1].isdigit() or not cells[2].isdigit():
            continue
        try:
            values[cells[0]] = float(cells[3])
        except ValueError:
            values[cells[0]] = cells[3]
    return values
