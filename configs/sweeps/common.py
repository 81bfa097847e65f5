"""What every sweep shares: the recipe it varies, how windows are measured, what --quick shrinks, the projection.

A sweep file sets `name`, `description` and `variants`: (name, nested overrides of the base config) pairs in the
order they run and are plotted, e.g. `("ResNet18", {"model": {"name": "ResNet18"}})`. It may change anything
below. Run one with

    python -m profiling.study run --sweep=configs/sweeps/depth.py --out=results/depth [--quick]

and override fields as with training configs: `--sweep.measure.repetitions=5`.
"""

import ml_collections

from data_pipeline.manifest import VOXCELEB2_DEV_UTTERANCES


def base_sweep(name: str, description: str) -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = name
    sweep.description = description
    sweep.base_config = "configs/default.py"  # WeSpeaker's recipe; variants override it
    sweep.overrides = {}  # applied to every variant before its own overrides (e.g. data paths for training)
    sweep.variants = ()  # (name, nested overrides) pairs, in the order they run and are plotted

    # Steady-state windows on in-memory batches of the variant's shape (data.batch_size global, data.num_frames).
    sweep.measure = measure = ml_collections.ConfigDict()
    measure.window_s = 5.0  # each window runs whole steps for at least this long (docs/design.md: >= 5 s)
    measure.repetitions = 3  # windows per program (train step, inference); mean and spread over them
    measure.cooldown_s = 5.0  # idle time before each window, so one window's heat does not leak into the next
    measure.warmup_steps = 3  # untimed calls after compilation
    measure.idle_s = 10.0  # idle power measured once before the sweep, for dynamic energy

    # Optional short training with EER: `python -m sv_jax.main` per variant, in <out>/train/<variant>.
    sweep.train = train = ml_collections.ConfigDict()
    train.enabled = False
    train.overrides = {"train": {"num_epochs": 10}}  # a short version of the recipe; set data paths in `overrides`

    # --quick: small enough that a whole sweep runs in minutes on a 2-core CPU. Its numbers are labelled quick.
    sweep.quick = quick = ml_collections.ConfigDict()
    quick.batch_divisor = 64  # global batch / this, rounded up to the device count (256 -> 4)
    quick.num_frames = 50  # 0.5-s chunks instead of 2 s
    quick.window_s = 1.5
    quick.repetitions = 3
    quick.cooldown_s = 0.5
    quick.warmup_steps = 1
    quick.idle_s = 2.0
    quick.train = True  # a smoke training on a tiny synthetic corpus, so every plot and table is produced
    # Most of a quick sweep's time is these runs' compilations and evaluation, so: one epoch of 6 steps, 1-s
    # utterances (one evaluation bucket), 12-row embedding batches (the default pads to 290 rows of 110 frames),
    # and no profiling inside them (the windows above measure).
    quick.train_overrides = {
        "data": {"source": "synthetic", "speed_perturb": False, "num_frames": 50, "batch_size": 4,
                 "synthetic": {"num_train_speakers": 8, "num_test_speakers": 4, "utts_per_train_speaker": 3,
                               "utts_per_test_speaker": 3, "min_seconds": 1.0, "max_seconds": 1.05}},
        "train": {"num_epochs": 1, "log_every_steps": 1, "checkpoint_every_steps": 100},
        "eval": {"bucket_frames": 110, "batch_frames": 1320, "num_train_utts": 8},  # 12 rows per embedding call
        "profile": {"enabled": False},
    }

    # The full recipe the measurements are projected to (labelled a projection everywhere it appears).
    sweep.projection = projection = ml_collections.ConfigDict()
    projection.epochs = 150
    projection.utterances_per_epoch = VOXCELEB2_DEV_UTTERANCES
    projection.global_batch = 256
    projection.num_frames = 200
    return sweep
