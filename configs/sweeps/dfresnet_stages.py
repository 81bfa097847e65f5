"""Stage concentration of DF-ResNets: 18 inverted bottlenecks (DF-ResNet60's) moved between the four stages.

    python -m profiling.study run --sweep=configs/sweeps/dfresnet_stages.py --out=results/dfresnet_stages [--quick]

At constant depth the FLOPs move with the blocks: with T14c strides a block costs 75 M multiply-adds per 200-frame
utterance in stage 1, 70 M in stage 2, 136 M in stage 3 and 267 M in stage 4 (8 d^2 + 36 d per position), and its
parameters grow 4x per stage. The forwards range from 2.40 G MACs (3,9,3,3) to 3.58 G (3,3,3,9), analytic count
with full kernels. DF-ResNet60 (3,3,9,3) puts half its blocks in stage 3, as WeSpeaker's deeper models concentrate
theirs there (DF-ResNet114: 27 of 36 blocks, 70% of its multiply-adds).
"""

from configs.sweeps import common

DISTRIBUTIONS = ((3, 3, 9, 3), (1, 1, 15, 1), (6, 6, 3, 3), (2, 2, 12, 2), (3, 9, 3, 3), (3, 3, 3, 9))


def get_config():
    sweep = common.base_sweep("dfresnet_stages", "18 inverted bottlenecks per DF-ResNet, moved between stages")
    sweep.variants = tuple(("df" + "-".join(map(str, blocks)), {"model": {"name": "DFResNet", "num_blocks": blocks}})
                           for blocks in DISTRIBUTIONS)
    return sweep
