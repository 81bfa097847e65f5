"""Batch size x compute precision on ResNet34: global batch 64/128/256/512 in float32 and bfloat16.

    python -m profiling.study run --sweep=configs/sweeps/batch_precision.py --out=results/batch [--quick]

Energy per utterance, not per step, is the comparable figure here (the report lists both).
"""

from configs.sweeps import common


def get_config():
    sweep = common.base_sweep("batch_precision", "ResNet34, global batch x float32/bfloat16")
    sweep.variants = tuple((f"b{b}-{dtype}", {"model": {"name": "ResNet34", "dtype": dtype}, "data": {"batch_size": b}})
                           for dtype in ("float32", "bfloat16") for b in (64, 128, 256, 512))
    return sweep
