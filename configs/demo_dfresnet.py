"""The demo with a small DF-ResNet trained memory-efficiently: reversible 'partial' and 8-bit optimizer states.

    python -m sv_jax.main --config=configs/demo_dfresnet.py

configs/demo.py's corpus, schedule and optimizer (AdamW), with a DF-ResNet of width 8 (channels 8, 16, 32, 64) and
(1, 1, 2, 1) inverted bottlenecks: every one of them is a RevNet coupling under 'partial' (a DF-ResNet's blocks all
keep their shape; the downsampling layers stay ordinary convolutions). Its plain counterpart for comparison (README):
`--config.model.reversible=none --config.optim.state_bits=32`.
"""

from configs import demo


def get_config():
    config = demo.get_config()
    config.model.name = "DFResNet"
    config.model.block = None
    config.model.num_blocks = (1, 1, 2, 1)
    config.model.width = 8
    config.model.reversible = "partial"
    config.optim.state_bits = 8
    return config
