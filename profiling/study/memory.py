"""Memory of the compiled train step: parameters, optimizer state, activations, and the device's measured peak.

    python -m profiling.study.memory --config=configs/r34.py [--batch_size=256] [--json]

Prints sv_jax.costs.StepMemory for one device (state replicated, batch split over all devices): XLA's buffer
assignment of the step (profiling.xla_memory) and, where the backend keeps allocator statistics (GPU, TPU), the
high-water mark of one step run on zeros.
"""

from __future__ import annotations

from absl import app, flags

import cli
from profiling.study import cost_cli
from sv_jax import costs


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    report = costs.memory_report(f.config, batch_size=f.batch_size, num_classes=f.num_classes)
    cost_cli.print_report(report.to_dict())


if __name__ == "__main__":
    cost_cli.define_flags("global batch the step is compiled for (default: the config's data.batch_size)")
    cli.run(main)
