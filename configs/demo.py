"""The demo: a small ResNet learns speaker identity on the built-in synthetic corpus, on a CPU, in minutes.

    python -m sv_jax.main --config=configs/demo.py

Generates the corpus (200 training speakers, 40 held-out test speakers) under runs/demo/synthetic, trains, and
evaluates cosine-scored trials between the held-out speakers. Expected (README): EER below 10% in under 10 minutes
on a 2-core CPU; an untrained model is near 50%.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.source = "synthetic"
    config.data.batch_size = 64
    config.data.num_frames = 200
    # The demo's measured result (README) is without the recipe's speed perturbation; the synthetic corpus has no
    # RIR / MUSAN directories, so there is no reverb or noise either (tests exercise both on generated sources).
    config.data.speed_perturb = False

    config.model.name = "ResNet"
    config.model.block = "basic"
    config.model.num_blocks = (1, 1, 1, 1)
    config.model.width = 8
    config.model.embed_dim = 128

    # WeSpeaker's SGD schedule squeezed from 150 epochs into 10 decays before anything is learned (measured: loss
    # stuck near 11, accuracy 0 at step 260 of 370), so the demo uses AdamW; the margin schedule is compressed.
    config.train.num_epochs = 10
    config.optim.name = "adamw"
    config.optim.initial_lr = 2e-3
    config.optim.final_lr = 1e-4
    config.optim.scale_lr_by_batch = False
    # As fractions of training, so that a longer (or shorter) demo keeps its shape: at 10 epochs, 1 epoch of warm-up
    # and the margin rising over epochs 3-7, as before; at 100 epochs, 10 and 21-61 (epochs counted from 1).
    config.optim.warmup_fraction = 0.1
    config.loss.increase_start_fraction = 0.2
    config.loss.fix_start_fraction = 0.6

    config.train.log_every_steps = 20
    config.train.checkpoint_every_steps = 100
    config.train.average_last = 0  # the last state is evaluated (the recipe averages the last 10: default.py)
    config.eval.bucket_frames = 100
    config.eval.num_train_utts = 400
    return config
