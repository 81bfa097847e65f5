"""Multi-process (multi-host) start-up with JAX's own runtime: `jax.distributed.initialize`, nothing home-made.

    python -m sv_jax.main --config=... --coordinator_address=node0:1234 --num_processes=2 --process_id=0   # node 0
    python -m sv_jax.main --config=... --coordinator_address=node0:1234 --num_processes=2 --process_id=1   # node 1
    srun python -m sv_jax.main --config=... --distributed        # SLURM, Open MPI, ...: JAX reads the environment

After initialisation `jax.devices()` lists every process's devices; the trainer's mesh spans them all, each process
reads its share of the data (every process_count-th stream position) and hands it over with
`jax.make_array_from_process_local_data`, every process takes part in orbax checkpoints, and only process 0 writes
TensorBoard events, the train log and summary.json.
"""

from __future__ import annotations

import logging

import jax
from cli import ConfigError

log = logging.getLogger(__name__)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> None:
    """Joins the job: explicitly (all three arguments), from the cluster environment (`auto`), or not at all.

    Must run before anything touches a JAX backend. On CPU the cross-process collectives are gloo's.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise ConfigError("multi-process start needs --coordinator_address, --num_processes and --process_id "
                         f"together (got {coordinator_address!r}, {num_processes!r}, {process_id!r}); or "
                         "--distributed to read them from the cluster environment (SLURM, Open MPI, ...)")
    if not auto and coordinator_address is None:
        return
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id={process_id} must be in [0, {num_processes})")
    # CPU processes need a collectives implementation to talk to each other (GPUs use NCCL regardless).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    log.info("process %d of %d: %d local of %d devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
