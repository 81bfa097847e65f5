"""FLOPs and bytes of a compiled JAX program, read from XLA's cost analysis, and checked against a floor.

    cost = compiled_cost(jax.jit(f).lower(x).compile())         # ProgramCost: flops, bytes_accessed, ...
    cost = checked_cost(lambda: compiled, minimum_flops=2 * macs, fallback=lambda: lowered_for_cpu)

XLA's `cost_analysis()` is a count, not a measurement, and four things make it easy to misread:
- For a program sharded over N devices it describes one device's partition (checked on 4 fake CPU devices with
  jax 0.10.2: a data-sharded jit reports 1/4 of the single-device FLOPs, and `memory_analysis()` likewise), so
  `compiled_cost` multiplies by N. Replicated work (an optimizer update) is then counted once per device, as it runs.
- Convolution taps that fall on padding are skipped, so it matches a count of the multiply-adds that touch real
  input (profiling.macs' 'real' convention), and it also counts elementwise work (BN, ReLU, adds) that a MAC
  count leaves out.
- It counts what the optimised program executes, after fusion: XLA's CPU loop fusion recomputes elementwise chains
  inside later fusions, and a GPU backend may report cuDNN convolutions as -1 (unusable). `checked_cost` treats a
  count under 90% of an analytic floor as unusable and counts a fallback program instead, naming it in `source`.
- A `lax.scan` body is counted once, not once per iteration: programs with scans must be counted on a copy with the
  scans unrolled (`checked_cost(..., always_fallback=True)`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

SOURCE_XLA = "xla"
# A usable count is at least this fraction of the analytic floor (CPU forward counts: 100.8-113.6% of it, r18-r293).
USABLE_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """XLA's cost analysis of one call of a compiled program, summed over the devices it runs on.

    Attributes:
        flops: floating-point operations of one call, all devices (XLA counts a multiply-add as 2).
        bytes_accessed: bytes read and written by the program's HLO ops, all devices.
        num_devices: devices the per-device figures were multiplied by.
        source: 'xla', or what was counted instead where the program's own count was unusable or incomplete.
    """

    flops: float
    bytes_accessed: float
    num_devices: int
    source: str = SOURCE_XLA

    def per(self, count: int) -> tuple[float, float]:
        """(flops, bytes_accessed) per item of a call that processes `count` items (e.g. utterances of a batch)."""
        return self.flops / count, self.bytes_accessed / count

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _analysis(stage: Any) -> dict[str, float]:
    analysis = stage.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per module
        analysis = analysis[0] if analysis else {}
    return analysis or {}


def program_devices(compiled: jax.stages.Compiled) -> int:
    """Number of devices a compiled program runs on (all processes), from its input shardings."""
    shardings = jax.tree_util.tree_leaves(compiled.input_shardings)
    return max((len(s.device_set) for s in shardings), default=1)


def program_platform(compiled: jax.stages.Compiled) -> str:
    """The platform ('cpu', 'gpu', 'tpu') of a compiled program's first input's devices."""
    return next(iter(jax.tree_util.tree_leaves(compiled.input_shardings)[0].device_set)).platform


def compiled_cost(compiled: jax.stages.Compiled, num_devices: int | None = None) -> ProgramCost:
    """FLOPs and bytes of one call of `compiled`, over all its devices (default: those of its input shardings).

    XLA's figures as they are: a missing count is 0 and XLA's -1 stays negative; `checked_cost` validates.
    """
    analysis = _analysis(compiled)
    num_devices = program_devices(compiled) if num_devices is None else num_devices
    return ProgramCost(flops=float(analysis.get("flops", 0.0)) * num_devices,
                       bytes_accessed=float(analysis.get("bytes accessed", 0.0)) * num_devices,
                       num_devices=num_devices)


def unoptimized_flops(lowered: jax.stages.Lowered) -> float:
    """XLA's FLOP count of a lowered program before optimisation: the whole (global) computation, as written,
    with no fusion or custom calls; NaN where the backend gives none."""
    try:
        flops = _analysis(lowered).get("flops", -1.0)
    except Exception:  # pylint: disable=broad-except  # backends without a cost model raise various errors
        return float("nan")
    return float(flops) if flops >= 0 else float("nan")


def checked_cost(compiled: Callable[[], jax.stages.Compiled], minimum_flops: float,
                 fallback: Callable[[], jax.stages.Lowered], num_devices: int | None = None, *,
                 always_fallback: str = "") -> ProgramCost:
    """`compiled_cost` of `compiled()`, validated against `minimum_flops` (an analytic floor for the whole program).

    Under `USABLE_FRACTION` of the floor the count is unusable (cuDNN's -1, a missing cost model): the cost of
    `fallback()` compiled (the same program lowered for one CPU device) is returned instead, labelled so in `source`.
    With `always_fallback` (a reason, e.g. "scans unrolled for counting") `compiled()` is not counted at all: its
    count is known to be incomplete. Both programs are callables, so that nothing is compiled that is not counted.
    """
    if always_fallback:
        return dataclasses.replace(compiled_cost(fallback().compile(), 1), source=f"xla-cpu ({always_fallback})")
    program = compiled()
    cost = compiled_cost(program, num_devices)
    if cost.flops >= USABLE_FRACTION * minimum_flops:
        return cost
    return dataclasses.replace(compiled_cost(fallback().compile(), 1),
                               source=f"xla-cpu ({program_platform(program)} count unusable)")
