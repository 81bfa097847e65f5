"""Gemini DF-ResNet114 (inverted bottlenecks (3, 3, 27, 3), T14c time strides): the ResNets' recipe on VoxCeleb2 dev.

    python -m sv_jax.main --config=configs/dfresnet114.py --config.data.train_dir=/data/voxceleb2/dev/wav \
        --config.data.eval_dir=/data/voxceleb1/wav --config.data.trials=/data/vox1_O_cleaned.kaldi,...

WeSpeaker's Gemini_DF_ResNet114 (wespeaker/models/gemini_dfresnet.py); only the model name differs from default.py.
`--config.model.reversible=partial` (or 'full') trains its reversible form (sv_jax/models/dfresnet.py).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "DFResNet114"
    return config
