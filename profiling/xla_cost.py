"""FLOPs and bytes of a compiled JAX program, counted by XLA's cost analysis, and checked against a floor.

    cost = compiled_cost(jax.jit(f).lower(x).compile())         # ProgramCost: flops, bytes_accessed, ...
    cost = checked_cost(lambda: compiled, minimum_flops=2 * macs, counting=lambda: lowered)

XLA's `cost_analysis()` is a count, not a measurement, and four things make it easy to misread:
- For a program sharded over N devices it describes one device's partition (checked on 4 fake CPU devices with
  jax 0.10.2: a data-sharded jit reports 1/4 of the single-device FLOPs, and `memory_analysis()` likewise), so
  `compiled_cost` multiplies by N. Replicated work (an optimizer update) is then counted once per device, as it runs.
- Convolution taps that fall on padding are skipped, so it matches a count of the multiply-adds that touch real
  input (profiling.macs' 'real' convention), and it also counts elementwise work (BN, ReLU, adds) that a MAC
  count leaves out.
- It counts what the optimised program executes, after fusion: XLA's CPU loop fusion recomputes elementwise chains
  inside later fusions, and a GPU backend may report cuDNN convolutions as -1 (unusable). `checked_cost` treats a
  count under 90% of an analytic floor as unusable and falls back to the FLOPs of the program as lowered, before
  optimisation (`Lowered.cost_analysis()`: backend-independent, the whole global computation), with no byte count:
  bytes of another backend's program say nothing of this one's memory traffic. Its `source` says which count it is
  ('xla' or 'xla-unoptimized'); a study must not fit rows of both kinds together.
- A `lax.scan` body is counted once, not once per iteration: programs with scans must be counted on a copy with the
  scans unrolled, compiled for the same devices (`checked_cost(..., always_fallback=reason)`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

SOURCE_XLA = "xla"  # the compiled program's own count, on the backend that runs it
SOURCE_UNOPTIMIZED = "xla-unoptimized"  # the lowered program's count before optimisation; no bytes
# A usable count is at least this fraction of the analytic floor (CPU forward counts: 100.8-113.6% of it, r18-r293).
USABLE_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """XLA's cost analysis of one call of a compiled program, summed over the devices it runs on.

    Attributes:
        flops: floating-point operations of one call, all devices (XLA counts a multiply-add as 2).
        bytes_accessed: bytes read and written by the program's HLO ops, all devices; None where the count is not
            the running backend's (SOURCE_UNOPTIMIZED).
        num_devices: devices the program runs on.
        source: which kind of count: SOURCE_XLA or SOURCE_UNOPTIMIZED.
        note: why the program itself was not what was counted, if it was not ('' when it was).
    """

    flops: float
    bytes_accessed: float | None
    num_devices: int
    source: str = SOURCE_XLA
    note: str = ""

    def per(self, count: int) -> tuple[float, float | None]:
        """(flops, bytes_accessed) per item of a call that processes `count` items (e.g. utterances of a batch)."""
        return self.flops / count, None if self.bytes_accessed is None else self.bytes_accessed / count

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
                 counting: Callable[[], jax.stages.Lowered], num_devices: int | None = None, *,
                 always_fallback: str = "", unoptimized: str = "") -> ProgramCost:
    """`compiled_cost` of `compiled()`, validated against `minimum_flops` (an analytic floor for the whole program).

    `counting()` is the same program lowered for the same devices (with its scans unrolled where the program has
    scans). Under `USABLE_FRACTION` of the floor the count is unusable (cuDNN's -1, a missing cost model): the FLOPs
    of `counting()` before optimisation are returned instead, with no bytes, as SOURCE_UNOPTIMIZED. With
    `always_fallback` (the reason, e.g. "scans unrolled for counting") `compiled()` is not counted at all, its count
    being known to be incomplete: `counting()` is compiled and counted in its place (same backend, same kind of
    count), and checked in turn. With `unoptimized` (the reason: a counting copy too slow to compile) `counting()` is
    counted before optimisation, with no bytes, as SOURCE_UNOPTIMIZED, and nothing is compiled. Both are callables,
    so that nothing is compiled that is not counted.
    """
    if unoptimized:
        flops = unoptimized_flops(counting())
        if not flops >= USABLE_FRACTION * minimum_flops:
            unoptimized += f"; the unoptimised count {flops:.4g} is under {USABLE_FRACTION:g} x the floor"
        return ProgramCost(flops=flops, bytes_accessed=None, num_devices=num_devices or 1, source=SOURCE_UNOPTIMIZED,
                           note=unoptimized)
    if always_fallback:
        lowered = counting()
        program, note = lowered.compile(), always_fallback
    else:
        lowered, program, note = None, compiled(), ""
    cost = dataclasses.replace(compiled_cost(program, num_devices), note=note)
    if cost.flops >= USABLE_FRACTION * minimum_flops:
        return cost
    lowered = lowered or counting()
    flops = unoptimized_flops(lowered)
    why = f"{program_platform(program)} count unusable ({cost.flops:.4g} < {USABLE_FRACTION:g} x floor)"
    if not flops >= USABLE_FRACTION * minimum_flops:
        why += f"; the unoptimised count {flops:.4g} is under the floor too"
    return ProgramCost(flops=flops, bytes_accessed=None, num_devices=cost.num_devices, source=SOURCE_UNOPTIMIZED,
                       note="; ".join(n for n in (note, why) if n))
