"""A sweep's results directory: rows in results.jsonl (append-only) and results.csv, pinned by sweep.json.

Rows are one JSON object per measured variant; the latest row of a variant wins. results.jsonl survives a kill at
any moment (sv_jax.reporting.append_jsonl); results.csv is rewritten atomically from the latest rows: its columns are
those of the rows, so a column added later (e.g. `train_step_flops_source`) is empty in rows written before it.

Each row names where its FLOP counts come from (`<program>_flops_source`: sv_jax.programs' `ProgramCost.source`,
'xla' or a fallback's label, compared as an opaque string). `flops_source(row, program)` reads it from rows of every
age: rows written before the per-program column carry only `flops_source` (both programs' sources joined), which
stands for both programs and is compared as one string; rows older still say nothing and read as 'unrecorded'.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from typing import Any, Iterable, Mapping

import cli
from profiling import names
from sv_jax import reporting

RESULTS_JSONL, RESULTS_CSV, META = "results.jsonl", "results.csv", "sweep.json"
DONE = "done"
UNRECORDED = "unrecorded"  # the FLOP source of a row written before sources were recorded


def flops_source(row: Mapping[str, Any], program: str) -> str:
    """Where `program`'s FLOP count in `row` comes from (see the module docstring); 'unrecorded' if nowhere."""
    return row.get(names.key(program, "flops_source")) or row.get("flops_source") or UNRECORDED


def read_rows(out: pathlib.Path) -> dict[str, dict[str, Any]]:
    """The latest row per variant in <out>/results.jsonl (a truncated last line, from a kill, is skipped)."""
    return {row["variant"]: row for row in reporting.read_jsonl(pathlib.Path(out) / RESULTS_JSONL)}


def append_row(out: pathlib.Path, row: Mapping[str, Any]) -> None:
    reporting.append_jsonl(pathlib.Path(out) / RESULTS_JSONL, row)


def write_csv(out: pathlib.Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """results.csv with the scalar columns of `rows`, written atomically."""
    rows = list(rows)
    columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if not isinstance(v, (dict, list))))
    tmp = pathlib.Path(out) / (RESULTS_CSV + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, pathlib.Path(out) / RESULTS_CSV)


def read_meta(out: pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(out) / META
    if not path.exists():
        raise cli.MissingInputError(f"{out}: no {META}; run `python -m profiling.study run --out={out}` first")
    return json.loads(path.read_text())


def pin_meta(out: pathlib.Path, meta: dict[str, Any]) -> None:
    """Writes sweep.json, refusing a directory that holds rows measured differently (another sweep, quick/full)."""
    path = pathlib.Path(out) / META
    if path.exists():
        old = json.loads(path.read_text())
        for key in ("sweep", "quick", "base_config"):
            if old.get(key) != meta[key]:
                raise cli.ConfigError(f"{out} holds results of {key}={old.get(key)!r}, this run has {meta[key]!r}: "
                                 "use another --out (rows measured differently must not mix)")
    path.write_text(json.dumps(meta, indent=2, default=str))
