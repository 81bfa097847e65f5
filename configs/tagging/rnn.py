"""The RNN tagger in three sizes: `--config=configs/tagging/rnn.py:small` (or medium, the default, or large); see
configs/tagging/__init__.py."""

from configs import tagging


def get_config(size: str = "medium"):
    return tagging.family_config("RNN", size or "medium")
