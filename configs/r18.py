"""ResNet18 on VoxCeleb2 dev with WeSpeaker's recipe (150 epochs, global batch 256, SGD, ArcMargin).

    python -m sv_jax.main --config=configs/r18.py --config.data.train_dir=/data/voxceleb2/dev/wav \
        --config.data.eval_dir=/data/voxceleb1/wav --config.data.trials=/data/vox1_O_cleaned.kaldi,...

Expected: WeSpeaker's published results for this model (see README); only the model name differs from default.py.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "ResNet18"
    return config
