"""Audio-tagging families in three sizes each: `--config=configs/tagging/<family>.py:<size>`, size small | medium |
large (default medium).

Sizes span each family's range on the same input (10-s clips, 625 frames x 128 bins). Multiply-adds per clip
(sv_jax.tagging.macs, real-input taps), for orientation: MLP 24 M / 211 M / 1.41 G; CNN 250 M / 999 M / 3.97 G;
RNN 48 M / 310 M / 1.85 G; CRNN 218 M / 858 M (the DCASE task-4 baseline; 930.9 M in THOP's convention) / 3.41 G.
"""

from configs import tagging_default

SIZES = {
    "MLP": {"small": {"hidden_sizes": (256,)}, "medium": {"hidden_sizes": (512, 512)},
            "large": {"hidden_sizes": (1024, 1024, 1024)}},
    "CNN": {"small": {"channels": (8, 16, 32, 64)}, "medium": {"channels": (16, 32, 64, 128)},
            "large": {"channels": (32, 64, 128, 256)}},
    "RNN": {"small": {"rnn_hidden_size": 64, "rnn_layers": 1}, "medium": {"rnn_hidden_size": 128, "rnn_layers": 2},
            "large": {"rnn_hidden_size": 256, "rnn_layers": 3}},
    "CRNN": {"small": {"channels": (8, 16, 32, 64, 64, 64, 64), "rnn_hidden_size": 64}, "medium": {},
             "large": {"channels": (32, 64, 128, 256, 256, 256, 256), "rnn_hidden_size": 256}},
}


def family_config(family: str, size: str = "medium"):
    """configs/tagging_default.py with model.name = `family` at `size` (a ValueError naming the choices)."""
    if size not in SIZES[family]:
        raise ValueError(f"unknown size {size!r} for the {family} tagger; choose one of {list(SIZES[family])}")
    config = tagging_default.get_config()
    config.model.name = family
    for key, value in SIZES[family][size].items():
        config.model[key] = value
    return config
