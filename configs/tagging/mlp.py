"""The MLP tagger in three sizes: `--config=configs/tagging/mlp.py:small` (or medium, the default, or large); see
configs/tagging/__init__.py."""

from configs import tagging


def get_config(size: str = "medium"):
    return tagging.family_config("MLP", size or "medium")
