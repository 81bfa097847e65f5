"""The memory analysis of Liu & Qian (arXiv 2412.01195): what one training step holds, per model and frugal form.

    python -m profiling.study.memory_table [--models=r34,r101,r293,dfresnet114,dfresnet237] [--batch_size=64]
        [--num_frames=200] [--json]

The paper trains ResNets and DF-ResNets reversibly and with 8-bit optimizer states and reports up to 16.2x less
training memory. This command compiles, for each model config and each form (model.reversible 'none' / 'partial' /
'full', optim.state_bits 32 / 8), the train step of one device at the global `--batch_size` and `--num_frames`
(XLA's convolutions, so that the figures are XLA's buffer assignment of the step on this backend, see
sv_jax.costs.memory_report), and prints one row per form:

- params: every trained parameter, the embedding extractor and the ArcMargin head (float32; a count);
- grads: one float32 per parameter (a count: the gradients are among XLA's temporaries);
- opt state: the config's optimizer state (WeSpeaker's SGD: one momentum trace), 32-bit or 8-bit block-wise;
- activations: XLA's temporaries of the compiled step less the gradients, i.e. what the forward keeps for the
  backward pass plus scratch (derived from the compiled figure, so labelled an estimate where it is printed);
- total: params + BN statistics + opt state + XLA's temporaries (outputs alias the donated state);
- saving: plain float32's total / this total.

Compiling takes minutes for the deep models on a CPU; the figures do not depend on the machine's speed, only on
XLA's backend (a GPU's buffer assignment differs somewhat: fusion decisions differ).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from typing import Any, Iterable

import jax
from absl import app, flags

import cli
from sv_jax import costs

MODELS = ("r34", "r101", "r293", "dfresnet114", "dfresnet237")
FORMS = tuple((reversible, bits) for reversible in ("none", "partial", "full") for bits in (32, 8))
PAPER_SAVING = 16.2  # Liu & Qian's "up to 16.2x"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MemoryRow:
    config: str
    model: str
    reversible: str
    state_bits: int
    batch_size: int
    num_frames: int
    params_bytes: int
    batch_stats_bytes: int
    grads_bytes: int
    optimizer_state_bytes: int
    activation_bytes: int  # estimate: XLA temporaries - grads
    xla_temp_bytes: int
    total_bytes: int
    saving: float  # plain float32 total / total

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_for(name: str, reversible: str, state_bits: int, num_frames: int, model: dict | None = None):
    """configs/<name>.py in one form, with XLA's convolutions; `model` overrides config.model's fields."""
    config = importlib.import_module(f"configs.{name}").get_config()
    config.model.update(model or {})
    config.model.reversible = reversible
    config.model.cpu_conv = "xla"
    config.optim.state_bits = state_bits
    config.data.num_frames = num_frames
    return config


def model_rows(name: str, batch_size: int, num_frames: int, forms: Iterable[tuple[str, int]] = FORMS,
               devices=None, model: dict | None = None) -> list[MemoryRow]:
    """One row per form of configs/<name>.py (`model`: overrides of config.model), in `forms` order; `saving`
    against the form ('none', 32). One device (default: the first) holds the whole batch."""
    devices = list(devices or jax.devices()[:1])
    measured = {}
    for reversible, bits in forms:
        config = config_for(name, reversible, bits, num_frames, model)
        log.info("compiling %s reversible=%s state_bits=%d at batch %d", name, reversible, bits, batch_size)
        memory = costs.memory_report(config, batch_size=batch_size, devices=devices, run_step=False)
        grads = memory.params_bytes
        total = memory.params_bytes + memory.batch_stats_bytes + memory.optimizer_state_bytes + memory.activation_bytes
        measured[reversible, bits] = dict(
            config=name, model=config.model.name, reversible=reversible, state_bits=bits, batch_size=batch_size,
            num_frames=num_frames, params_bytes=memory.params_bytes,
            batch_stats_bytes=memory.batch_stats_bytes, grads_bytes=grads,
            optimizer_state_bytes=memory.optimizer_state_bytes, activation_bytes=memory.activation_bytes - grads,
            xla_temp_bytes=memory.activation_bytes, total_bytes=total)
    if ("none", 32) not in measured:
        raise ValueError("the forms need ('none', 32): the savings are against it")
    plain = measured["none", 32]["total_bytes"]
    return [MemoryRow(**row, saving=plain / row["total_bytes"]) for row in measured.values()]


def markdown(rows: list[MemoryRow]) -> str:
    """The README's table: MB (1e6) per column, the saving, and the best saving per model against the paper's."""
    def mb(value: int) -> str:
        return f"{value / 1e6:,.0f}"
    lines = ["| model | reversible | opt state | params | grads | opt state | activations (est.) | total | saving |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.reversible} | {r.state_bits}-bit | {mb(r.params_bytes)} | {mb(r.grads_bytes)} "
                     f"| {mb(r.optimizer_state_bytes)} | {mb(r.activation_bytes)} | {mb(r.total_bytes)} "
                     f"| {r.saving:.1f}x |")
    best = {}
    for r in rows:
        if r.model not in best or r.saving > best[r.model].saving:
            best[r.model] = r
    lines.append("")
    lines.append("Most frugal form per model, total against plain float32 (the paper: up to "
                 f"{PAPER_SAVING}x): " + "; ".join(f"{m} {r.saving:.1f}x ({r.reversible}, {r.state_bits}-bit)"
                                                  for m, r in best.items()) + ".")
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    rows = []
    for name in f.models:
        try:
            importlib.import_module(f"configs.{name}")
        except ModuleNotFoundError as error:
            raise cli.ConfigError(f"--models: no config configs/{name}.py; choose from configs/ "
                                  f"(e.g. {','.join(MODELS)})") from error
        model = model_rows(name, f.batch_size, f.num_frames)
        rows.extend(model)
        if f.json:
            for row in model:
                print(json.dumps(row.to_dict()), flush=True)
    if not f.json:
        print(markdown(rows))


if __name__ == "__main__":
    flags.DEFINE_list("models", list(MODELS), "config names under configs/")
    flags.DEFINE_integer("batch_size", 64, "global batch of the compiled step (one device)")
    flags.DEFINE_integer("num_frames", 200, "frames per training chunk")
    flags.DEFINE_bool("json", False, "one JSON line per row instead of the table")
    cli.run(main)
