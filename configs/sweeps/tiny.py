"""A seconds-long sweep for tests and for trying the tool: three tiny ResNets on configs/tiny.py.

    python -m profiling.study run --sweep=configs/sweeps/tiny.py --out=/tmp/tiny_sweep --quick
"""

from configs.sweeps import common


def get_config():
    sweep = common.base_sweep("tiny", "tiny basic-block ResNets (width 4) of 4, 8 and 12 blocks")
    sweep.base_config = "configs/tiny.py"
    sweep.variants = tuple((f"b{4 * n}", {"model": {"name": "ResNet", "block": "basic", "num_blocks": (n, n, n, n)}})
                           for n in (1, 2, 3))
    sweep.quick.batch_divisor = 2  # tiny's batch 8 -> 4
    sweep.quick.num_frames = 50
    return sweep
