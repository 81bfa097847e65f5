"""The benchmark's side-by-side PyTorch reference: the same model, batch and optimizer in PyTorch, timed in blocks that
alternate with sv_jax's (`python -m profiling.study.benchmark --torch_reference`).

    require_torch()                                       # a one-line UserError without the package
    spec = reference_spec(config, batch_size, num_classes, devices)
    result = run_reference(spec, {"train_step": jax_train_block, "forward": jax_forward_block}, calls=40, pairs=4,
                           warmup=5, batch_size=batch_size, jax_params=6_634_336)
    result["train_step_s_ratio"]                          # sv_jax seconds per step / torch's

PyTorch runs in a child process (`python -m profiling.study.torch_reference`, a JSON-lines protocol on its stdin and
stdout), never in this one, so that its thread pool and XLA's never coexist in one process, and this module imports
no torch. The child uses as many threads as the cores XLA's CPU thread pool is sized to (the process's affinity
mask). Every block's time is measured where it runs: sv_jax's here (ending with a block on its outputs), torch's in
the child (its CPU operations are synchronous), so the pipe's latency is in neither. Blocks run ABAB (sv_jax, torch,
sv_jax, torch, ...), `pairs` pairs of `calls` calls, first for the train step and then for the forward.

The reference is the float32 ordinary ResNet on CPU: a bfloat16 or reversible model, 8-bit optimizer states or
non-CPU devices are refused with one line. Its margin is the config's final margin and its learning rate the
schedule's peak (constant); neither changes what a step computes, only the values.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from typing import Callable, Mapping, Sequence

import numpy as np

import cli
from profiling import names
from sv_jax import models

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHILD = "profiling.study.torch_reference"
INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
SIDES = ("sv_jax", "torch")
# Both sides' idle OpenMP threads sleep (unless OMP_WAIT_POLICY is set): in ABAB blocks the idle side's threads would
# otherwise spin on the cores the other side's block runs on. ResNet34, batch 16, 2-core AMD EPYC (AVX-512),
# 2026-12-02: libgomp's default policy gave sv_jax 2.54 s and torch 1.80 s per train step, PASSIVE 1.85 s and
# 1.68 s; sv_jax alone took 1.61 s with either policy (its process has no idle side).
WAIT_POLICY = "PASSIVE"


def _libgomp_loaded() -> bool:
    try:
        return "libgomp" in pathlib.Path("/proc/self/maps").read_text()
    except OSError:
        return False


def set_wait_policy() -> str:
    """OMP_WAIT_POLICY for this process and the child: the caller's if set, else WAIT_POLICY. Call it before anything
    loads libgomp here (the oneDNN convolutions, TensorFlow), which reads it once; returns what each side runs with."""
    if "OMP_WAIT_POLICY" in os.environ:
        return f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} (the caller's)"
    already = _libgomp_loaded()
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    if already:
        return f"OMP_WAIT_POLICY={WAIT_POLICY} in torch's process; libgomp's default in sv_jax's (loaded before it was set)"
    return f"OMP_WAIT_POLICY={WAIT_POLICY} (both processes)"


def require_torch() -> None:
    """A cli.UserError (one line, exit status 2) when the package 'torch' cannot be imported (imports nothing)."""
    if importlib.util.find_spec("torch") is None:
        raise cli.UserError(f"--torch_reference needs PyTorch (package 'torch'), which is not installed: {INSTALL} "
                            "(or pip install -r requirements-bench.txt)")


def jax_cores() -> tuple[int, str]:
    """(cores, where the figure comes from): what XLA's CPU thread pool is sized to."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)), "os.sched_getaffinity"  # the cores this process may run on
    return os.cpu_count() or 1, "os.cpu_count"


def reference_spec(config, batch_size: int, num_classes: int, devices: Sequence) -> dict:
    """The torch_reference.ReferenceSpec fields (JSON-ready) of the config's model, head, optimizer and batch."""
    model, optim = config.model, config.optim
    platforms = sorted({d.platform for d in devices})
    refusals = {"the benchmark's devices": (platforms != ["cpu"], f"{platforms} (the reference runs on CPU: "
                                                                  "JAX_PLATFORMS=cpu)"),
                "model.dtype": (model.dtype != "float32", f"{model.dtype!r} (the reference is float32)"),
                "model.reversible": (model.reversible != "none", f"{model.reversible!r} (the reference is 'none')"),
                "optim.state_bits": (optim.state_bits != 32, f"{optim.state_bits} (the reference keeps 32)")}
    for key, (refused, why) in refusals.items():
        if refused:
            raise cli.ConfigError(f"--torch_reference cannot compare {key} {why}")
    block, num_blocks = models.resolve_architecture(model)
    time_strides = models.resolve_time_strides(model) or models.GEMINI_TIME_STRIDES
    scale = batch_size / 64.0 if optim.scale_lr_by_batch else 1.0
    return {"block": block, "num_blocks": list(num_blocks), "time_strides": list(time_strides), "width": model.width, "embed_dim": model.embed_dim,
            "num_mel_bins": config.data.num_mel_bins, "num_frames": config.data.num_frames,
            "num_classes": num_classes, "batch_size": batch_size, "scale": model.head.scale,
            "easy_margin": model.head.easy_margin, "margin": config.loss.final_margin, "optimizer": optim.name,
            "learning_rate": optim.initial_lr * scale, "momentum": optim.momentum, "nesterov": optim.nesterov,
            "weight_decay": optim.weight_decay, "betas": [optim.beta1, optim.beta2], "eps": optim.eps,
            "seed": config.seed}


class TorchProcess:
    """The child process and the parent's side of its protocol (profiling/study/torch_reference.py's docstring).

    `info` holds the child's answer to 'init': torch_version, threads, params (without the head), optimizer."""

    def __init__(self, spec: Mapping, threads: int):
        self._process = subprocess.Popen([sys.executable, "-m", CHILD], cwd=ROOT, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        try:
            self.info = self._ask({"op": "init", "spec": dict(spec), "threads": threads})
        except BaseException:
            self.close()
            raise

    def _ask(self, request: Mapping) -> dict:
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise RuntimeError(f"the torch reference process ended (exit status {self._process.wait()}) at "
                               f"{request['op']!r}; its error is above")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the torch reference process failed at {request['op']!r}:\n{answer['error']}")
        return answer

    def warmup(self, calls: int) -> None:
        """`calls` train steps, then `calls` forward calls, untimed."""
        self._ask({"op": "warmup", "calls": calls})

    def time_block(self, program: str, calls: int) -> float:
        """Seconds of `calls` back-to-back calls of `program` (names.PROGRAMS), measured in the child."""
        return float(self._ask({"op": program, "calls": calls})["seconds"])

    def close(self) -> None:
        try:
            self._process.stdin.close()  # the end of its input ends the child
        except BrokenPipeError:  # it has ended already
            pass
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> "TorchProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def alternate(blocks: Mapping[str, Callable[[int], float]], calls: int, pairs: int) -> dict[str, list[float]]:
    """Seconds per call of every block of each side, run ABAB: side 0's block, side 1's, `pairs` times."""
    seconds = {side: [] for side in blocks}
    for _ in range(pairs):
        for side, block in blocks.items():
            seconds[side].append(block(calls) / calls)
    return seconds


def _side_figures(train_s: list[float], forward_s: list[float], batch_size: int) -> dict:
    utt_per_s = [batch_size / s for s in forward_s]
    return {names.key(names.TRAIN_STEP, "s"): float(np.median(train_s)),
            names.key(names.TRAIN_STEP, "s_blocks"): train_s,
            names.key(names.FORWARD, "utt_per_s"): float(np.median(utt_per_s)),
            names.key(names.FORWARD, "utt_per_s_blocks"): utt_per_s}


def compare(jax_blocks: Mapping[str, Callable[[int], float]], process: TorchProcess, *, calls: int, pairs: int,
            batch_size: int, openmp: str = "") -> dict:
    """Both sides' seconds per train step and forward utt/s (medians over blocks, and every block's figure) and their
    ratios (sv_jax / torch: < 1 means sv_jax's step is faster, > 1 that its inference is), with the child's info.
    `jax_blocks[program](n)` runs n calls of sv_jax's program and returns their seconds."""
    measured = {program: alternate({"sv_jax": jax_blocks[program],
                                    "torch": lambda n, p=program: process.time_block(p, n)}, calls, pairs)
                for program in names.PROGRAMS}
    sides = {side: _side_figures(measured[names.TRAIN_STEP][side], measured[names.FORWARD][side], batch_size)
             for side in SIDES}
    train_key, forward_key = names.key(names.TRAIN_STEP, "s"), names.key(names.FORWARD, "utt_per_s")
    pair_ratios = {key: [round(a / b, 4) for a, b in zip(sides["sv_jax"][key + "_blocks"],
                                                         sides["torch"][key + "_blocks"])]
                   for key in (train_key, forward_key)}
    cores, cores_source = jax_cores()
    return {"torch_version": process.info["torch_version"], "threads": process.info["threads"],
            "openmp": openmp, "torch_omp_wait_policy": process.info["omp_wait_policy"],
            "jax_cores": cores, "jax_cores_source": cores_source, "optimizer": process.info["optimizer"],
            "params": process.info["params"], "order": "ABAB (sv_jax block, torch block) per pair",
            "calls_per_block": calls, "pairs": pairs, **sides,
            f"{train_key}_ratio": sides["sv_jax"][train_key] / sides["torch"][train_key],
            f"{forward_key}_ratio": sides["sv_jax"][forward_key] / sides["torch"][forward_key],
            f"{train_key}_pair_ratios": pair_ratios[train_key],
            f"{forward_key}_pair_ratios": pair_ratios[forward_key]}


def run_reference(spec: Mapping, jax_blocks: Mapping[str, Callable[[int], float]], *, calls: int, pairs: int,
                  warmup: int, batch_size: int, jax_params: int, openmp: str = "") -> dict:
    """Starts the child with JAX's core count as its threads, checks that it built the same model (`jax_params`
    parameters without the head), warms it up (`warmup` calls of each program) and returns `compare`'s result;
    `openmp` is set_wait_policy's answer, reported with it."""
    with TorchProcess(spec, threads=jax_cores()[0]) as process:
        if process.info["params"] != jax_params:
            raise RuntimeError(f"the torch reference has {process.info['params']:,} parameters, sv_jax's model "
                               f"{jax_params:,}: they are not the same model")
        process.warmup(warmup)
        return compare(jax_blocks, process, calls=calls, pairs=pairs, batch_size=batch_size, openmp=openmp)


def report_lines(result: Mapping) -> list[str]:
    """The comparison as a few printed lines."""
    train_key, forward_key = names.key(names.TRAIN_STEP, "s"), names.key(names.FORWARD, "utt_per_s")
    lines = [f"torch reference: torch {result['torch_version']} in a child process, {result['threads']} threads "
             f"(JAX's cores: {result['jax_cores']}, from {result['jax_cores_source']}), {result['optimizer']}, "
             f"{result['pairs']} ABAB pairs of {result['calls_per_block']}-call blocks"
             + (f", {result['openmp']}" if result.get("openmp") else ""),
             f"{'':<28} {'sv_jax':>10} {'torch':>10} {'sv_jax/torch':>13}"]
    for key in (train_key, forward_key):
        jax_value, torch_value = result["sv_jax"][key], result["torch"][key]
        lines.append(f"{key + ' (median)':<28} {jax_value:>10.4g} {torch_value:>10.4g} {result[key + '_ratio']:>13.3f}")
        blocks = lambda side: ", ".join(f"{v:.4g}" for v in result[side][key + "_blocks"])  # noqa: E731
        lines.append(f"  blocks: sv_jax {blocks('sv_jax')}; torch {blocks('torch')}; pair ratios "
                     f"{', '.join(f'{r:.3f}' for r in result[key + '_pair_ratios'])}")
    return lines
