"""The compute–energy study's command line: sweep model variants, then analyse FLOPs against Joules (or time).

    python -m profiling.study run --sweep=configs/sweeps/depth.py --out=results/depth [--quick] [--train]
    python -m profiling.study analyze --out=results/depth

`run` counts (XLA's FLOPs and bytes) and measures (seconds, Joules) every variant of the sweep not yet finished in
--out (profiling.study.measure; a rerun resumes), then analyses what is there. `analyze` alone rewrites
analysis.json, the plots and report.md (profiling.study.report) from the rows, e.g. after editing the plots or adding
variants. Both refuse, with one line and exit status 2, rows whose FLOP counts come from different sources
(`<program>_flops_source`, profiling.study.analysis): re-run on one backend, or filter the rows. Sweep fields can be
overridden like training configs: `--sweep.measure.repetitions=5`, `--sweep.projection.epochs=100`. `--quick`
shrinks batch, chunk and windows so that a sweep finishes in minutes on a 2-core CPU, and says so in its output.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

import cli

_SWEEP = config_flags.DEFINE_config_file("sweep", None, "a sweep file in configs/sweeps/", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "results directory")
_QUICK = flags.DEFINE_bool("quick", False, "small batch, short inputs (the sweep's quick.num_frames) and short windows: a try-out, labelled quick")
_TRAIN = flags.DEFINE_bool("train", None, "also train each variant for its EER (default: the sweep's setting; "
                                          "--quick trains a smoke run on a tiny synthetic corpus)")
_VARIANTS = flags.DEFINE_list("variants", [], "measure only these variants (default: all)")

USAGE = __doc__.split("\n\n")[1]


def main(argv) -> None:
    logging.getLogger("jax").setLevel(logging.WARNING)
    command, *rest = argv[1:] or [None]
    if command not in ("run", "analyze"):
        raise app.UsageError(f"unknown command {command!r}: choose 'run' or 'analyze'\n{USAGE}")
    if rest:
        raise app.UsageError(f"unexpected arguments {rest}\n{USAGE}")
    if not _OUT.value:
        raise cli.ConfigError(f"{command} needs --out=<results directory>")
    out = _OUT.value
    if command == "run":
        if _SWEEP.value is None:
            raise cli.ConfigError("run needs --sweep=<a file in configs/sweeps/>")
        from profiling.study import measure  # pylint: disable=import-outside-toplevel
        from profiling.study import results  # pylint: disable=import-outside-toplevel
        rows = measure.run_sweep(_SWEEP.value, out, quick=_QUICK.value, train=_TRAIN.value, only=_VARIANTS.value)
        for variant, row in rows.items():
            if row["status"] != results.DONE:
                print(f"{variant}: {row['status']}", file=sys.stderr)
    from profiling.study import report  # pylint: disable=import-outside-toplevel
    study = report.write(out)
    sources = "; ".join(f"{program}: {', '.join(found)}" for program, found in study.flops_sources.items())
    print(f"{len(study.rows)} variants analysed ({'energy' if study.energy else 'time only: no energy sensor'})"
          f"{'; QUICK numbers, for trying the tool out' if study.meta['quick'] else ''}; FLOPs counted by XLA "
          f"({sources}): {out}/report.md, {out}/results.csv")


if __name__ == "__main__":
    cli.run(main)
