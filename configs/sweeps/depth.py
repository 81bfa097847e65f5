"""Depth: WeSpeaker's ResNet18 ... ResNet293 at width 32 (basic blocks to 34, bottlenecks from 50).

    python -m profiling.study run --sweep=configs/sweeps/depth.py --out=results/depth [--quick]
    python -m profiling.study analyze results/depth

Expected (README): FLOPs rise 13x from ResNet18 to ResNet293 and time (or Joules) per step follows them closely;
the quick run takes about a quarter of an hour on a 2-core CPU.
"""

from configs.sweeps import common

DEPTHS = (18, 34, 50, 101, 152, 221, 293)


def get_config():
    sweep = common.base_sweep("depth", "WeSpeaker's ResNet18-293, width 32")
    sweep.variants = tuple((f"ResNet{d}", {"model": {"name": f"ResNet{d}"}}) for d in DEPTHS)
    return sweep
