"""What the GPU acceptance check runs: `GPU_PLAN` on one H200, `CPU_PLAN` (--allow_cpu) at tiny sizes.

The seconds planned per part on one H200 (`PLANNED_S`; the whole must fit in 8 minutes). Compile times are
estimates (~1 min for a first ResNet293) until a first GPU report's Time table, which shows planned against taken,
replaces them. Before each part and each row the runner checks the time left: a row the budget cannot hold is
recorded as not run, which fails the check instead of overrunning it.

| part | planned s | what runs |
|---|---:|---|
| device | 10 | jax.devices(), NVML driver, versions; a 3-s idle baseline before anything compiles |
| reversible | 30 | 8 small programs: stage inversion and gradients, 2 small reversible ResNets' gradients |
| memory | 140 | ResNet293 b64 'partial', 8-bit, plain: 3 compiles (~60 s the first), one step each |
| throughput | 110 | ResNet34 b128/b256 float32/bfloat16: 4 compiles (~15 s), 1 init, 6 windows of 5 s |
| sweep | 120 | ResNet18/50/101 b128 (ResNet34's row reused): 3 compiles (~10-30 s), 3 inits, 9 windows |
| flops | 60 | forwards of ResNet34 and ResNet293; ResNet34 'partial' and its unrolled counting copy |
| total | 470 | |

Every window is 5 s of back-to-back steps after a 1-s cool-down; a row starts with 2 warm-up steps. XLA keeps
autotuning results in-process, so a model compiles faster after one with the same convolution shapes (ResNet18
after ResNet34, ResNet293 plain after 8-bit). A case of the reversible part out of tolerance runs again at
precision 'highest' (a few more seconds).

Memory runs before anything large: the allocator's peak (`memory_stats()['peak_bytes_in_use']`) is the process's
high-water mark and never goes down, so its variants run from the smallest expected peak up, each one step on a
zero state (values do not change memory, and no initializer is compiled); a variant whose step did not raise the
mark is shown as not separable. ResNet293 'full' is left out for time. `CPU_PLAN` runs every part at tiny sizes,
with three train steps compiled in all, so that the pipeline is exercised end to end on a 2-core CPU in ~35 s.
"""

from __future__ import annotations

import dataclasses
import importlib

from profiling.gpu_check import parity

PLANNED_S = {"device": 10, "reversible": 30, "memory": 140, "throughput": 110, "sweep": 120, "flops": 60}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A model: a file of configs/ and dotted overrides, e.g. Variant('8-bit', 'r293', (('optim.state_bits', 8),))."""

    label: str
    config_module: str
    overrides: tuple = ()

    def config(self, dtype: str | None = None):
        config = importlib.import_module(f"configs.{self.config_module}").get_config()
        for key, value in self.overrides + ((("model.dtype", dtype),) if dtype else ()):
            *path, last = key.split(".")
            node = config
            for name in path:
                node = node[name]
            node[last] = value
        return config


@dataclasses.dataclass(frozen=True)
class Plan:
    """What each part runs, and how long its windows are."""

    mode: str  # 'gpu', or what else it is (the report says so at the top)
    throughput: Variant
    throughput_batches: tuple[int, ...]
    dtypes: tuple[str, ...]
    sweep: tuple[Variant, ...]
    sweep_batch: int
    memory: tuple[Variant, ...]  # smallest expected peak first (see the module docstring)
    memory_batch: int
    flops: tuple[tuple[Variant, int], ...]
    window_s: float = 5.0
    sweep_windows: int = 3
    cooldown_s: float = 1.0
    warmup_steps: int = 2
    idle_s: float = 3.0
    row_min_s: float = 15.0  # no row is started with less time left
    inversion_blocks: int = 64
    gradient_blocks: int = 32
    gradient_stages: tuple = tuple(parity.STAGES)
    parity_models: tuple = (("partial", "bottleneck", (2, 2, 4, 2)), ("full", "basic", (1, 1, 2, 1)))  # ResNets
    diagnose_precision: str | None = "highest"


_R34, _R293 = Variant("ResNet34", "r34"), Variant("ResNet293 plain", "r293")
GPU_PLAN = Plan(
    mode="gpu", throughput=_R34, throughput_batches=(128, 256), dtypes=("float32", "bfloat16"),
    sweep=(Variant("ResNet18", "r18"), _R34, Variant("ResNet50", "r50"), Variant("ResNet101", "r101")),
    sweep_batch=128, memory_batch=64,
    memory=(Variant("ResNet293 partial", "r293", (("model.reversible", "partial"),)),
            Variant("ResNet293 8-bit", "r293", (("optim.state_bits", 8),)), _R293),
    flops=((_R34, 128), (_R293, 64), (Variant("ResNet34 partial", "r34", (("model.reversible", "partial"),)), 128)))
# Tiny: configs/tiny.py (width 4, one block per stage) and a deeper copy. Each train step compiled costs 3-8 s of a
# 2-core CPU, so there are three, shared between the parts: every kind of row runs, but no bfloat16 row, no
# reversible model in memory or FLOPs, and no whole-model parity case (~11 s of compiling; the report notes it).
_TINY, _TINY_1121 = Variant("tiny", "tiny"), Variant("tiny (1,1,2,1)", "tiny", (("model.num_blocks", (1, 1, 2, 1)),))
CPU_PLAN = Plan(
    mode="tiny CPU run (--allow_cpu)", throughput=_TINY, throughput_batches=(8,), dtypes=("float32",),
    sweep=(_TINY, _TINY_1121), sweep_batch=8, memory_batch=8,
    memory=(Variant("tiny 8-bit", "tiny", (("optim.state_bits", 8),)), _TINY), flops=((_TINY, 8),),
    window_s=0.2, sweep_windows=2, cooldown_s=0.0, warmup_steps=1,
    idle_s=0.0, row_min_s=0.0, inversion_blocks=8, gradient_blocks=4, gradient_stages=(("partial", "bottleneck"),),
    parity_models=(), diagnose_precision=None)
