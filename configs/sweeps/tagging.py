"""Audio tagging: MLP, CNN, RNN and CRNN taggers, small to large (configs/tagging/), training and inference measured
as the speaker sweeps are, the analysis grouped by family (Douwes & Serizel's question: does one Joule-per-FLOP line
fit every architecture family?).

    python -m profiling.study run --sweep=configs/sweeps/tagging.py --out=results/tagging [--quick]

Full measurements use the baseline's setup: batch 48 of 10-s clips (625 frames x 128 bins). --quick measures batch
4 of 2.56-s clips (160 frames), and its smoke training runs one epoch on a tiny synthetic corpus of such clips.
"""

from configs import tagging
from configs.sweeps import common


def get_config():
    sweep = common.base_sweep("tagging", "MLP, CNN, RNN and CRNN taggers in three sizes each, 10-s clips, "
                                         "DESED's 10 classes")
    sweep.base_config = "configs/tagging_default.py"
    sweep.variants = tuple((f"{family}-{size}", {"model": {"name": family, **overrides}})
                           for family, sizes in tagging.SIZES.items() for size, overrides in sizes.items())
    sweep.train.overrides = {"train": {"num_epochs": 50}}  # a short version of the 200-epoch recipe
    sweep.quick.batch_divisor = 12  # 48 -> 4
    sweep.quick.num_frames = 160  # 2.56-s clips: the GRUs' unrolled counting copies compile in seconds
    sweep.quick.train_overrides = {
        "data": {"source": "synthetic", "num_frames": 160, "batch_size": 4,
                 "tagging": {"clip_seconds": 2.56, "synthetic": {"num_train_clips": 12, "num_validation_clips": 12}}},
        "train": {"num_epochs": 1, "log_every_steps": 1, "checkpoint_every_steps": 100},
        "eval": {"batch_frames": 160 * 12},
        "profile": {"enabled": False},
    }
    # Projected to the baseline's recipe: 200 epochs at batch 48 of 10-s clips. The clips per epoch are DESED's weak
    # training set alone (1,578 clips); the baseline also draws synthetic strong and unlabeled clips (a projection).
    sweep.projection.epochs = 200
    sweep.projection.utterances_per_epoch = 1578
    sweep.projection.global_batch = 48
    sweep.projection.num_frames = 625
    return sweep
