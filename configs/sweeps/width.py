"""Width: the first stage's planes (WeSpeaker's m_channels) 16/32/48/64 on ResNet34 and ResNet50.

    python -m profiling.study run --sweep=configs/sweeps/width.py --out=results/width [--quick]
"""

from configs.sweeps import common


def get_config():
    sweep = common.base_sweep("width", "base width 16/32/48/64 on ResNet34 and ResNet50")
    sweep.variants = tuple((f"ResNet{d}-w{w}", {"model": {"name": f"ResNet{d}", "width": w}})
                           for d in (34, 50) for w in (16, 32, 48, 64))
    return sweep
