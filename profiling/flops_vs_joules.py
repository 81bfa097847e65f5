"""The compute–energy study: sweep model variants, measure FLOPs, memory, Joules (or time) and EER, correlate them.

    python -m profiling.flops_vs_joules run --sweep=configs/sweeps/depth.py --out=results/depth [--quick] [--train]
    python -m profiling.flops_vs_joules analyze results/depth

`run` measures every variant of the sweep not yet finished in --out (profiling.sweep; a rerun resumes), then
analyses what is there. `analyze` alone rewrites analysis.json, the plots and report.md (profiling.study) from the
rows, e.g. after editing the plots or adding variants. Sweep fields can be overridden like training configs:
`--sweep.measure.repetitions=5`, `--sweep.projection.epochs=100`. `--quick` shrinks batch, chunk and windows so
that a sweep finishes in minutes on a 2-core CPU, and says so in its output.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_SWEEP = config_flags.DEFINE_config_file("sweep", None, "a sweep file in configs/sweeps/", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "results directory (run); analyze takes it as its argument")
_QUICK = flags.DEFINE_bool("quick", False, "small batch, 0.5-s chunks and short windows: a try-out, labelled quick")
_TRAIN = flags.DEFINE_bool("train", None, "also train each variant for its EER (default: the sweep's setting; "
                                          "--quick trains a smoke run on a tiny synthetic corpus)")
_VARIANTS = flags.DEFINE_list("variants", [], "measure only these variants (default: all)")

USAGE = __doc__.split("\n\n")[1]


def main(argv) -> None:
    logging.getLogger("jax").setLevel(logging.WARNING)
    command, *rest = argv[1:] or [None]
    if command == "run":
        if rest:
            raise app.UsageError(f"unexpected arguments {rest}\n{USAGE}")
        if _SWEEP.value is None or not _OUT.value:
            raise app.UsageError(f"run needs --sweep and --out\n{USAGE}")
        from profiling import sweep as sweep_lib
        out = _OUT.value
        rows = sweep_lib.run_sweep(_SWEEP.value, out, quick=_QUICK.value, train=_TRAIN.value,
                                   only=_VARIANTS.value)
        failed = {v: r["status"] for v, r in rows.items() if r["status"] != sweep_lib.DONE}
        for variant, why in failed.items():
            print(f"{variant}: {why}", file=sys.stderr)
    elif command == "analyze":
        if len(rest) != 1 and not _OUT.value:
            raise app.UsageError(f"analyze takes one results directory\n{USAGE}")
        out = rest[0] if rest else _OUT.value
    else:
        raise app.UsageError(f"unknown command {command!r}: choose 'run' or 'analyze'\n{USAGE}")
    from profiling import study as study_lib
    result = study_lib.analyze(out)
    print(f"{len(result.rows)} variants analysed ({'energy' if result.energy else 'time only: no energy sensor'})"
          f"{'; QUICK numbers, for trying the tool out' if result.meta['quick'] else ''}: "
          f"{out}/report.md, {out}/results.csv")


if __name__ == "__main__":
    app.run(main)
