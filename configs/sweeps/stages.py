"""Stage distribution at similar FLOPs: WeSpeaker's ResNet34 [3,4,6,3] against stage-concentrated variants.

    python -m profiling.study run --sweep=configs/sweeps/stages.py --out=results/stages [--quick]

All are basic-block ResNets of width 32 with 16 blocks. A basic block costs the same MACs in every stage (planes
double as the pixels quarter), so their forward MACs at 200x80 frames are within 0.4% of each other (analytic count,
4.33-4.35 G), while parameters and memory traffic differ: a stage-4 block has 4x the weights of a stage-3 block.
"""

from configs.sweeps import common

DISTRIBUTIONS = ((3, 4, 6, 3), (2, 2, 10, 2), (1, 2, 12, 1), (2, 4, 8, 2), (1, 3, 10, 2))


def get_config():
    sweep = common.base_sweep("stages", "blocks per stage at ~equal FLOPs, basic blocks, width 32")
    sweep.variants = tuple(("s" + "-".join(map(str, blocks)),
                            {"model": {"name": "ResNet", "block": "basic", "num_blocks": blocks}})
                           for blocks in DISTRIBUTIONS)
    return sweep
