"""The trainer's two programs, lowered, compiled and costed the one way training, benchmarks and sweeps share.

    programs = compile_programs(config, batch_size=256, num_classes=17982)   # all devices, as training runs
    state = programs.init_state(seed)                 # replicated, initialised
    state, metrics = programs.train_step(state, batch)
    programs.train_step_cost                          # profiling.xla_cost.ProgramCost, checked (below)

The programs are `train_step` (sv_jax.step.train_step over the global batch: state replicated and donated, batch
sharded along the mesh's 'data' axis) and `forward` (`model.embed` on full chunks, batch sharded). Lowering needs no
values (the state is abstract, jax.eval_shape), so any model lowers in seconds.

Costs are XLA's counts, checked against the analytic floor of the models' own MAC count (sv_jax.models.macs): a
forward is 2 FLOPs per multiply-add, a train step three times that (the forward, and the gradients with respect to
the activations and to the weights, each as many products). Where XLA's count is under 90% of the floor (cuDNN's -1
on GPU), the FLOPs of the program as lowered, before optimisation, are used instead, with no byte count, and
labelled so (profiling.xla_cost). Reversible models (`model.reversible`) run their couplings in a lax.scan whose body
XLA counts once, and oneDNN's convolutions on CPU (sv_jax.models.cpu_conv) are custom calls that XLA does not count:
such programs are always counted on a copy lowered with the scans unrolled and XLA's convolutions, compiled for the
same devices (the same arithmetic; the note says which). Tagging train steps (sv_jax.tagging_task) are counted before
optimisation, with no bytes: the GRUs' unrolled backward takes minutes to compile (5 min 26 s for the small CRNN at
batch 16), and one source for every family keeps them in one fit.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from profiling import xla_cost
from sv_jax import parallel
from sv_jax import models
from sv_jax import step as step_lib

# Small, so that any model compiles in seconds. Per utterance, r34's FLOPs differ by <0.1% between batch 8 and 128;
# bytes accessed by +9% at 8 (the state's reads and writes are shared by fewer utterances).
COUNTING_BATCH_SIZE = 8
SCANS_UNROLLED, XLA_CONVS, DEPTHWISE = models.SCANS_UNROLLED, models.XLA_CONVS, models.DEPTHWISE
counting_fallback = models.counting_fallback


@dataclasses.dataclass(frozen=True)
class LoweredPrograms:
    """A config's train step and forward, lowered for `mesh` (not yet compiled), and the abstract state."""

    train_step: jax.stages.Lowered
    forward: jax.stages.Lowered
    state: step_lib.TrainState  # of jax.ShapeDtypeStruct leaves
    mesh: jax.sharding.Mesh
    components: step_lib.TrainComponents  # the model, optimizer and schedules they were lowered from
    batch_size: int  # global batch of the train step
    forward_batch_size: int  # global batch of the forward


def lower_programs(config, batch_size: int, num_classes: int, devices: Sequence[jax.Device] | None = None, *,
                   steps_per_epoch: int | None = None, forward_batch_size: int | None = None,
                   for_counting: bool = False) -> LoweredPrograms:
    """Lowers the config's train step and forward for `devices` (default: all, of all processes).

    `steps_per_epoch` sets the schedules' constants (default `train.steps_per_epoch`, or 1000: a schedule is a scalar
    function of the step, so its length does not change the program's cost). `for_counting` lowers the model as XLA
    counts it (models.create_model), not as training runs it.
    """
    mesh = parallel.create_mesh(devices)
    parallel.check_global_batch(batch_size, mesh)
    forward_batch_size = forward_batch_size or batch_size
    components = step_lib.create_train_components(config, num_classes,
                                                  steps_per_epoch or config.train.steps_per_epoch or 1000,
                                                  batch_size, for_counting=for_counting)
    task = components.task
    feat_shape = task.feat_shape(config.data)
    state = jax.eval_shape(lambda: step_lib.create_train_state(jax.random.key(0), components.model, components.tx,
                                                               feat_shape, task))
    batch = {"feats": jax.ShapeDtypeStruct((batch_size, *feat_shape), jnp.float32),
             **task.label_batch(batch_size, num_classes)}
    forward = jax.jit(task.forward(components.model),
                      in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)),
                      out_shardings=parallel.data_sharded(mesh))
    feats = jax.ShapeDtypeStruct((forward_batch_size, *feat_shape), jnp.float32)
    return LoweredPrograms(train_step=step_lib.jit_train_step(components, mesh).lower(state, batch),
                           forward=forward.lower(state.variables, feats), state=state, mesh=mesh,
                           components=components, batch_size=batch_size, forward_batch_size=forward_batch_size)


class CompiledPrograms:
    """The compiled train step and (on first use) forward of a config, with their checked costs (on first use).

    Nothing is counted or compiled until it is asked for: a run without profiling compiles only its train step.
    """

    def __init__(self, config, lowered: LoweredPrograms, num_classes: int):
        self.config, self.lowered, self.num_classes = config, lowered, num_classes
        self.train_step: jax.stages.Compiled = lowered.train_step.compile()

    @property
    def mesh(self) -> jax.sharding.Mesh:
        return self.lowered.mesh

    @property
    def state(self) -> step_lib.TrainState:
        """The abstract state (shapes and dtypes)."""
        return self.lowered.state

    @functools.cached_property
    def forward(self) -> jax.stages.Compiled:
        return self.lowered.forward.compile()

    def init_state(self, seed: int) -> step_lib.TrainState:
        """An initialised state, replicated over the mesh as the train step takes it."""
        components = self.lowered.components
        feat_shape = components.task.feat_shape(self.config.data)
        return jax.jit(lambda rng: step_lib.create_train_state(rng, components.model, components.tx, feat_shape,
                                                               components.task),
                       out_shardings=parallel.replicated(self.mesh))(jax.random.key(seed))

    def random_batch(self, seed: int = 0) -> dict[str, jax.Array]:
        """One random training batch of the train step's shape, sharded as training shards it: for timing."""
        rng, task = np.random.default_rng(seed), self.lowered.components.task
        batch_size = self.lowered.batch_size
        return parallel.shard_batch({
            "feats": rng.standard_normal((batch_size, *task.feat_shape(self.config.data)), np.float32),
            **task.random_labels(rng, batch_size, self.num_classes)}, self.mesh)

    @functools.cached_property
    def forward_macs_per_utt(self) -> int:
        """Analytic multiply-adds of one utterance's (or clip's) forward pass (real-input taps, as XLA counts
        them)."""
        return self.lowered.components.task.forward_macs(self.config, self.num_classes)

    @functools.cached_property
    def _counting_copy(self) -> LoweredPrograms:
        """What is counted: the programs themselves, or (reversible models, oneDNN convolutions) the same programs
        lowered for counting (scans unrolled, XLA's convolutions) for the same devices."""
        if not self._always_fallback():
            return self.lowered
        lowered = self.lowered
        return lower_programs(self.config, lowered.batch_size, self.num_classes, list(self.mesh.devices.flat),
                              forward_batch_size=lowered.forward_batch_size, for_counting=True)

    def _always_fallback(self) -> str:
        return self.lowered.components.task.counting_fallback(self.config.model)

    @functools.cached_property
    def train_step_cost(self) -> xla_cost.ProgramCost:
        """Checked FLOPs and bytes of one train step (see the module docstring)."""
        task = self.lowered.components.task
        minimum = task.train_step_passes * 2 * self.forward_macs_per_utt * self.lowered.batch_size
        return xla_cost.checked_cost(lambda: self.train_step, minimum, lambda: self._counting_copy.train_step,
                                     self.mesh.size, always_fallback=self._always_fallback(),
                                     unoptimized=task.train_step_counted_unoptimized(self.config.model))

    @functools.cached_property
    def forward_cost(self) -> xla_cost.ProgramCost:
        """Checked FLOPs and bytes of one forward call (see the module docstring)."""
        minimum = 2 * self.forward_macs_per_utt * self.lowered.forward_batch_size
        return xla_cost.checked_cost(lambda: self.forward, minimum, lambda: self._counting_copy.forward,
                                     self.mesh.size, always_fallback=self._always_fallback())

    def counted_lowering(self) -> LoweredPrograms:
        """The lowering whose unoptimised count covers the whole program (the unrolled copy for reversible
        models)."""
        return self._counting_copy


def compile_programs(config, batch_size: int, num_classes: int, devices: Sequence[jax.Device] | None = None, *,
                     steps_per_epoch: int | None = None, forward_batch_size: int | None = None) -> CompiledPrograms:
    """`lower_programs` for `devices` (default: all), with the train step compiled; see CompiledPrograms."""
    lowered = lower_programs(config, batch_size, num_classes, devices, steps_per_epoch=steps_per_epoch,
                             forward_batch_size=forward_batch_size)
    return CompiledPrograms(config, lowered, num_classes)

