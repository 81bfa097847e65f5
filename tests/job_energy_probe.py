"""One process of a multi-process job that meters emulated boards with the trainer's job meter and run profiler
around a trivial step: `python tests/job_energy_probe.py OUT.json` with COORDINATOR, NUM_PROCESSES, PROCESS_ID,
EMULATED_NVML_W (this "host"'s boards), SV_JAX_HOST and NVML_GPUS in the environment. Writes the profile summary
(process 0) and this process's meters to OUT.json."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402

from emulated_nvml import EmulatedNvml, installed  # noqa: E402
from emulated_nvml_main import boards_from_env  # noqa: E402

STEPS, WINDOW_STEPS, STEP_S = 13, 4, 0.06


def main(out: str) -> None:
    from sv_jax import distributed
    distributed.initialize(os.environ["COORDINATOR"], int(os.environ["NUM_PROCESSES"]),
                           int(os.environ["PROCESS_ID"]))
    import jax
    import jax.numpy as jnp

    from configs import default
    from profiling import sensors, xla_cost
    sensors.RAPL_ROOT = os.path.join(os.path.dirname(out), "no-powercap")  # the planted boards alone
    from sv_jax import job_meter, run_profiler

    profile = default.get_config().profile
    profile.update(nvml_gpus=os.environ["NVML_GPUS"], skip_steps=1, window_steps=WINDOW_STEPS, idle_seconds=0.2,
                   idle_settle_s=0.0, idle_parts=2)
    cost = run_profiler.RunCost(global_batch=8, train_step=xla_cost.ProgramCost(1e9, 1e6, 1),
                                forward=xla_cost.ProgramCost(8e8, 1e6, 1), forward_batch=8,
                                forward_flops_per_utt_analytic=1e8, memory=None, peak_tflops=None,
                                peak_source="none")
    job = job_meter.start(profile)

    class Writer:
        def write_scalars(self, step, scalars):
            pass

    step_fn = jax.jit(lambda x: x * 2.0)
    x = jnp.ones(4)
    with run_profiler.RunProfiler(profile, os.path.dirname(out), cost, writer=Writer(), job=job,
                                  write_files=jax.process_index() == 0) as profiler:
        for step in range(1, STEPS + 1):
            x = step_fn(x)
            time.sleep(STEP_S)
            profiler.step(step, x)
        with profiler.evaluation(10):
            time.sleep(0.3)
        summary = profiler.summary(STEPS)
    with open(out, "w") as f:
        json.dump({"summary": summary, "meters": job.meters}, f)


if __name__ == "__main__":
    with installed(EmulatedNvml(boards_from_env())):
        main(sys.argv[1])
