"""Training: data-parallel SGD on the ArcMargin loss, checkpointed, resumable, evaluated at the end.

Reads top to bottom: set up, input, model & optimizer, sharding, step functions, checkpoint restore, loop. The
step is one jit-compiled program over the global batch (sharded on the mesh's 'data' axis), with the state donated;
metrics stay on the device until a log step fetches them all at once, so the loop never waits on the accelerator
except when it logs, checkpoints or evaluates. What the run costs is measured by one profiler object
(sv_jax.run_profiler) that the loop calls once per step.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from cli import ConfigError, UserError
from sv_jax import averaging
from sv_jax import checkpoint as checkpoint_lib
from sv_jax import job_meter
from sv_jax import models
from sv_jax import parallel
from sv_jax import preemption
from sv_jax import programs as programs_lib
from sv_jax import reporting
from sv_jax import run_profiler
from sv_jax import tasks

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or Inf; the last checkpoint (written before it) is kept."""


class _NonFiniteGuard:
    """`train.on_nonfinite` applied to a log interval's fetched metrics, oldest first.

    'stop': the first step with a NaN/Inf loss or gradient raises NonFiniteLossError naming it. 'skip': that step
    already left the state unchanged (sv_jax.step); here it is counted and logged, and more than
    `max_skips_in_a_row` of them in a row raise.
    """

    def __init__(self, train_config, skipped_before: int = 0):
        self.skip = train_config.on_nonfinite == "skip"
        self.max_in_a_row = train_config.max_skips_in_a_row
        self.skipped, self.in_a_row = skipped_before, 0

    def check(self, history: list[dict], first_step: int) -> list[dict]:
        """The metrics of the steps that were applied; raises if the run must stop."""
        applied = []
        for step, metrics in enumerate(history, start=first_step + 1):
            if not self.skip:
                if metrics["nonfinite"]:
                    what = (f"train/loss is {metrics['loss']}" if not np.isfinite(metrics["loss"]) else
                            f"a gradient is NaN/Inf (loss {metrics['loss']:.4g})")
                    raise NonFiniteLossError(
                        f"{what} at step {step}: stopping; the last checkpoint before it is kept (lower "
                        f"optim.initial_lr, check the input data, or set train.on_nonfinite='skip')")
                applied.append(metrics)
            elif metrics["nonfinite"]:
                self.skipped += 1
                self.in_a_row += 1
                log.warning("step %d: loss %s, non-finite loss or gradients: step skipped (%d so far)", step,
                            metrics["loss"], self.skipped)
                if self.in_a_row > self.max_in_a_row:
                    raise NonFiniteLossError(
                        f"train/loss or gradients non-finite in {self.in_a_row} steps in a row up to step {step} "
                        f"(train.max_skips_in_a_row={self.max_in_a_row}): stopping; the last checkpoint is kept")
            else:
                self.in_a_row = 0
                applied.append(metrics)
        return applied


def _all_positions(next_position: int, process_count: int) -> list[int]:
    """Every process's next data-stream position, in process order (a collective when there are several)."""
    if process_count == 1:
        return [next_position]
    return [int(p) for p in multihost_utils.process_allgather(np.asarray(next_position, np.int64))]


def _resume_position(meta: dict, process_index: int, process_count: int) -> int:
    """This process's position to resume its share of the data stream from.

    Each process reads every `process_count`-th position of the stream, so each resumes from its own next position.
    A checkpoint from a run with another process count can only resume from the furthest one: the order differs
    from an uninterrupted run's from there on (said in a warning)."""
    positions = [int(p) for p in meta.get("next_positions", [meta["next_position"]])]
    if len(positions) == process_count:
        return positions[process_index]
    log.warning("the checkpoint was written by %d processes, this run has %d: the data stream resumes from position "
                "%d, so its order is not an uninterrupted run's", len(positions), process_count, max(positions))
    return max(positions)


def _from_imported(state, variables: dict, num_classes: int):
    """The fresh train state with an imported model's backbone variables (sv_jax.commands.import_wespeaker), and its
    head when the class count is the training data's; step 0, a fresh optimizer state: fine-tuning."""
    def placed(new, like):
        if np.shape(new) != like.shape:
            raise UserError(f"the imported variables do not fit the model ({np.shape(new)} for {like.shape}): was "
                            "the config changed since --mode=import?")
        return jax.device_put(np.asarray(new, like.dtype), like.sharding)

    params = dict(state.params)
    params["backbone"] = jax.tree_util.tree_map(placed, variables["params"]["backbone"], state.params["backbone"])
    head = variables["params"].get("head")
    if head is not None and np.shape(head["weight"]) == state.params["head"]["weight"].shape:
        params["head"] = {"weight": placed(head["weight"], state.params["head"]["weight"])}
        log.info("fine-tuning the imported model, its head (%d classes) included", num_classes)
    else:
        log.info("fine-tuning the imported model with a new head: %s", "it had none" if head is None else
                 f"it has {np.shape(head['weight'])[-1]} classes, the training data {num_classes}")
    batch_stats = jax.tree_util.tree_map(placed, variables["batch_stats"], state.batch_stats)
    return state.replace(params=params, batch_stats=batch_stats)


_LAST_VALUE = ("lr", "margin")  # train-step metrics logged at an interval's last step, not averaged
_UNITS = {"utterance": "utt", "clip": "clips"}


def _log_convolutions(model_config) -> None:
    """Which convolutions a speaker model runs on this backend, in the log."""
    lowering = models.conv_lowering(model_config)
    reason = "" if lowering == "onednn" or jax.default_backend() != "cpu" else models.cpu_conv.unavailable_reason()
    depthwise = models.resolve_architecture(model_config)[0] == models.INVERTED
    log.info("convolutions: %s%s%s", {"onednn": "oneDNN (sv_jax.models.cpu_conv)", "xla": "XLA's"}[lowering],
             f" (oneDNN unavailable: {reason})" if reason else "",
             "; depthwise: shifted multiply-adds on CPU (sv_jax.models.depthwise)" if depthwise else "")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
    """Trains (resuming from workdir's latest checkpoint), evaluates, writes summary.json; returns the summary."""
    # Set up.
    workdir_path = pathlib.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    wall_start = time.time()
    process_index, process_count = jax.process_index(), jax.process_count()

    # Input: the task's (sv_jax.tasks: speaker verification, or audio tagging).
    task = tasks.get(config)
    data = task.resolve_data(config.data, workdir)
    global_batch = config.data.batch_size
    steps_per_epoch = config.train.steps_per_epoch or max(task.num_train_items(data) // global_batch, 1)
    total_steps = config.train.num_epochs * steps_per_epoch
    checkpoint_every = config.train.checkpoint_every_steps or steps_per_epoch  # 0: every epoch, as WeSpeaker
    average_last = config.train.average_last
    if average_last < 0 or config.train.checkpoint_every_steps < 0:
        raise ConfigError(f"train.average_last={average_last} and train.checkpoint_every_steps="
                          f"{config.train.checkpoint_every_steps} must be >= 0")

    # The job's energy sensors, and their idle baseline, before anything is compiled or run.
    mesh = parallel.create_mesh(devices)
    job = job_meter.start(config.profile, devices=mesh.local_devices) if config.profile.enabled else None

    # Model, optimizer and sharding (state replicated, batch split along 'data'): the train step compiled ahead of
    # time, as sv_jax.programs compiles it for benchmarks and sweeps; its FLOPs and memory are part of the profile.
    if task.name == "speaker":
        _log_convolutions(config.model)
    programs = programs_lib.compile_programs(
        config, global_batch, data.num_classes, list(mesh.devices.flat), steps_per_epoch=steps_per_epoch,
        forward_batch_size=parallel.round_up(programs_lib.COUNTING_BATCH_SIZE, mesh.size))
    state = programs.init_state(config.seed)
    p_train_step = programs.train_step
    evaluator = task.evaluator(config, data, programs.lowered.components.model, mesh)

    # Checkpoint restore.
    checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=averaging.checkpoints_to_keep(
        config.train.keep_checkpoints, average_last))
    next_position, meta = 0, {}
    latest = checkpointer.latest_step()
    imported = latest is not None and bool(checkpointer.read_meta(latest).get("imported_from"))
    restored = None if imported else checkpointer.restore(state)
    if imported:  # step 0 of an imported model: fine-tune it
        state = _from_imported(state, checkpointer.restore_raw(latest), data.num_classes)
    if restored is not None:
        state, meta = restored
        next_position = _resume_position(meta, process_index, process_count)
    nonfinite = _NonFiniteGuard(config.train, skipped_before=int(meta.get("skipped_steps", 0)))
    start_step = int(state.step)
    if start_step:
        log.info("resuming at step %d of %d (data stream position %d)", start_step, total_steps, next_position)

    # Loop.
    bad_audio_log = task.new_bad_audio_log()
    batches = task.train_batches(config, data, batch_size=global_batch // process_count, seed=config.seed,
                                 start_index=next_position, bad_audio_log=bad_audio_log,
                                 process_index=process_index, process_count=process_count)
    writer = reporting.create_writer(workdir, enabled=process_index == 0)
    progress = reporting.Progress(total_steps, global_batch, start_step, unit=_UNITS[task.item])
    train_log = reporting.TrainLog(workdir, enabled=process_index == 0, resume_step=start_step)
    pending, last_metrics = [], {}

    def flush_metrics(step) -> dict:
        """The one host sync of a log interval; it runs before every checkpoint, so NaN/Inf is never saved."""
        history = jax.device_get(pending)
        pending.clear()
        applied = nonfinite.check(history, step - len(history))
        # Means over the interval's applied steps; the schedules' values (lr, margin) at its last step.
        means = {k: float(np.mean([m[k] for m in applied])) for k in history[-1]
                 if k not in _LAST_VALUE + ("nonfinite",)} if applied else {}
        means.update({k: float(history[-1][k]) for k in _LAST_VALUE if k in history[-1]})
        if nonfinite.skip:
            means["skipped_steps"] = nonfinite.skipped
        rates = progress.update(step, len(history))
        writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()} | rates)
        log.info(progress.line(step, means))
        train_log.append({"step": step, **means, **rates})
        return means

    preempted_at = None
    with run_profiler.create(config, workdir, programs, writer=writer, start_step=start_step,
                             write_files=process_index == 0, job=job) as profiler, \
            preemption.PreemptionWatcher() as watcher:  # SIGTERM/SIGINT: checkpoint the step, stop
        try:
            for step in range(start_step + 1, total_steps + 1):
                asked = time.perf_counter()
                batch = next(batches)
                progress.waited(time.perf_counter() - asked)
                next_position = int(batch.pop("index")[-1]) + 1
                state, metrics = p_train_step(state, parallel.shard_batch(batch, mesh))
                pending.append(metrics)
                profiler.step(step, metrics)
                is_last = step == total_steps
                stop = watcher.should_stop(step)  # a preemption notice: checkpoint this step and leave
                on_cadence = step % checkpoint_every == 0 or is_last
                is_checkpoint = on_cadence or stop
                if step % config.train.log_every_steps == 0 or is_checkpoint:
                    last_metrics = flush_metrics(step)
                if is_checkpoint:
                    positions = _all_positions(next_position, process_count)
                    checkpointer.save(step, state, {"next_position": max(positions), "next_positions": positions,
                                                     "step": step, "skipped_steps": nonfinite.skipped,
                                                     "on_cadence": on_cadence})
                if stop and not is_last:
                    preempted_at = step
                    break
                if config.train.eval_every_steps and step % config.train.eval_every_steps == 0 and not is_last:
                    with profiler.paused():  # evaluation time is not training time
                        writer.write_scalars(step, task.eval_scalars(evaluator(state.variables)))
        finally:
            with profiler.paused():  # waiting for the last checkpoint's write is not training time either
                checkpointer.close()  # waits for an in-flight save, also when the loop fails
            # Free the endless input iterator here, also when the loop fails: left to interpreter shutdown (e.g.
            # held by a traceback), TF's map threads that call into Python can hang the exit (seen in a script
            # that kept a speed-perturbed pipeline's iterator in a global).
            batches.close()

        if preempted_at is not None:
            log.warning("stopped by %s after step %d of %d; its checkpoint is saved: run the same command to resume",
                        watcher.signal_name, preempted_at, total_steps)
            writer.flush()
            return {"preempted_at_step": preempted_at, "signal": watcher.signal_name, "steps": preempted_at}

        eval_variables, averaged = state.variables, None
        if average_last > 1:  # WeSpeaker's avg_model: the recipe evaluates the average of the last checkpoints
            with profiler.paused():
                average, averaged = averaging.average_last(workdir, average_last)
                eval_variables = jax.device_put(average, parallel.replicated(mesh))
        with profiler.evaluation(evaluator.num_items):
            eval_results = evaluator(eval_variables)
        writer.write_scalars(int(state.step), task.eval_scalars(eval_results))
        writer.flush()
        summary = {
            "config": config.to_dict(),
            "task": task.name,
            **task.param_counts(state.params),
            "steps": int(state.step),
            "resumed_from_step": start_step,
            "wall_seconds": time.time() - wall_start,
            "devices": [str(d) for d in mesh.devices.flat],
            "train": last_metrics,
            "nonfinite_steps_skipped": nonfinite.skipped,
            "throughput_utt_per_s": progress.steady_utt_per_s(),
            "data": task.data_summary(data, bad_audio_log),
            "eval": eval_results,
            "eval_checkpoint": f"average of steps {averaged}" if averaged else f"step {int(state.step)}",
            **profiler.summary(total_steps_run=int(state.step)),
        }
    if process_index == 0:
        (workdir_path / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("eval: %s", json.dumps(eval_results))
    return summary
