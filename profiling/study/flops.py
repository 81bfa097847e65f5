"""FLOPs and bytes per utterance of the compiled train step and forward, next to the analytic counts.

    python -m profiling.study.flops --config=configs/r34.py [--batch_size=8] [--json]

Prints sv_jax.costs.FlopsReport: XLA's checked counts (sv_jax.programs) and the models' own MAC count
(sv_jax.models.macs), per utterance at the config's chunk length. Counts, not timings: they hold for any machine
with the same XLA compiler.
"""

from __future__ import annotations

from absl import app, flags

import cli
from profiling.study import cost_cli
from sv_jax import costs
from sv_jax import programs


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    report = costs.flops_report(f.config, batch_size=f.batch_size or programs.COUNTING_BATCH_SIZE,
                                num_classes=f.num_classes)
    cost_cli.print_report(report.to_dict())


if __name__ == "__main__":
    cost_cli.define_flags("global batch the programs are compiled for (FLOPs per utterance barely depend on it, "
                          f"bytes do a little; default {programs.COUNTING_BATCH_SIZE})")
    cli.run(main)
