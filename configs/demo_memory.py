"""The demo trained memory-efficiently: a reversible ResNet ('partial') with 8-bit optimizer states.

    python -m sv_jax.main --config=configs/demo_memory.py

The demo's model has one block per stage, which 'partial' leaves as it is (a stage's first block is its ordinary
transition), so this variant has two blocks per stage (ResNet18's layout at the demo's width): the second block
of every stage becomes a RevNet coupling whose activations are recomputed in the backward pass. Its plain
counterpart for comparison (README) is `--config=configs/demo.py --config.model.num_blocks='(2,2,2,2)'`.
"""

from configs import demo


def get_config():
    config = demo.get_config()
    config.model.num_blocks = (2, 2, 2, 2)
    config.model.reversible = "partial"
    config.optim.state_bits = 8
    return config
