"""The GPU acceptance command: one run, at most 8 minutes on one H200, one JSON and one markdown report.

    python -m profiling.gpu_check --out=docs/gpu/$(date +%F)

Checks: device and driver; the reversible stages' inversion and gradient parity on the GPU; ResNet293's peak memory
plain, reversible and 8-bit; ResNet34's train step at batch 128 and 256 in float32 and bfloat16 (utt/s, TFLOP/s,
MFU, J/utt, the same windows measured by Zeus and an nvidia-smi power log); a depth sweep ResNet18..101 with the
J-vs-FLOPs fit; the FLOP source of each program (profiling.gpu_check.plans: what runs, and the seconds per part).
In-memory random batches, no TensorFlow. Writes <out>/gpu_check.json and <out>/gpu_check.md (failures at
the top) and exits with status 1 if any acceptance check failed. Without a GPU it stops before doing anything,
with one line and status 2; `--allow_cpu` (for tests) runs a tiny version on the CPU instead.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags

import cli

_OUT = flags.DEFINE_string("out", None, "report directory (e.g. docs/gpu/<date>): gpu_check.json and gpu_check.md")
_BUDGET = flags.DEFINE_integer("budget_s", 480, "seconds the parts may take; what does not fit is not run (a failure)")
_PARTS = flags.DEFINE_list("parts", [], "run only these parts, e.g. 'device,reversible' (default: all; a partial "
                                        "run fails the acceptance check, since the other parts are missing)")
_ALLOW_CPU = flags.DEFINE_bool("allow_cpu", False, "for tests only: without a GPU, run a tiny version on the CPU "
                                                   "(tiny models, batch 8, 0.2-s windows); its figures mean nothing")


def main(argv) -> None:
    if argv[1:]:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: python -m profiling.gpu_check --out=<directory>")
    if not _OUT.value:
        raise cli.ConfigError("gpu_check needs --out=<report directory>, e.g. --out=docs/gpu/<date>")
    from profiling.gpu_check import checks, plans, report  # pylint: disable=import-outside-toplevel
    unknown = sorted(set(_PARTS.value) - set(report.PARTS))
    if unknown:
        raise cli.ConfigError(f"--parts: unknown {unknown}; choose from {', '.join(report.PARTS)}")
    logging.getLogger("jax").setLevel(logging.ERROR)  # jax's CPU-fallback warning: require_gpu says it in one line
    devices = checks.require_gpu(_ALLOW_CPU.value)
    logging.getLogger("jax").setLevel(logging.WARNING)
    plan = plans.GPU_PLAN if devices[0].platform == "gpu" else plans.CPU_PLAN
    parts = tuple(p for p in report.PARTS if p in _PARTS.value) if _PARTS.value else report.PARTS
    command = " ".join(["python -m profiling.gpu_check", *sys.argv[1:]])
    results = checks.Runner(plan, _BUDGET.value, parts=parts).run(command)
    json_path, md_path = report.write(_OUT.value, results)
    failed = report.failures(results)
    print(f"{json_path}, {md_path}: {len(failed)} failed" + (f" ({plan.mode})" if plan.mode != "gpu" else ""))
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
