"""Depth of the DF-ResNets: WeSpeaker's Gemini DF-ResNet60 ... DF-ResNet237 (width 32, T14c time strides).

    python -m profiling.study run --sweep=configs/sweeps/dfresnet_depth.py --out=results/dfresnet_depth [--quick]

The added blocks all go to stages 2 and 3 (3,3,9,3 -> 3,8,63,3), whose inverted bottlenecks cost 70 M and 136 M
multiply-adds each per 200-frame utterance: the forward grows from 2.79 to 10.47 G MACs (analytic, full-kernel).
"""

from configs.sweeps import common

DEPTHS = (60, 114, 183, 237)


def get_config():
    sweep = common.base_sweep("dfresnet_depth", "WeSpeaker's Gemini DF-ResNet60-237, width 32, T14c")
    sweep.variants = tuple((f"DFResNet{d}", {"model": {"name": f"DFResNet{d}"}}) for d in DEPTHS)
    return sweep
