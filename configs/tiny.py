"""A seconds-long smoke run for tests: a tiny corpus and a tiny ResNet. Not meant to learn anything.

    python -m sv_jax.main --config=configs/tiny.py --workdir=/tmp/tiny
"""

from configs import demo


def get_config():
    config = demo.get_config()
    syn = config.data.synthetic
    syn.num_train_speakers, syn.num_test_speakers = 6, 3
    syn.utts_per_train_speaker, syn.utts_per_test_speaker = 4, 3
    syn.min_seconds, syn.max_seconds = 1.0, 1.5
    config.data.batch_size = 8
    config.data.num_frames = 50
    config.data.num_mel_bins = 24
    config.model.width = 4
    config.model.embed_dim = 16
    config.train.num_epochs = 4  # 24 utterances / batch 8 = 3 steps per epoch, 12 steps
    # Epoch-based schedules (the demo's fractions off): tests of resuming and of 1 vs 4 devices rely on them.
    config.optim.warmup_fraction = None
    config.loss.increase_start_fraction = config.loss.fix_start_fraction = None
    config.optim.warmup_epochs = 1.0
    config.loss.increase_start_epoch = 2
    config.loss.fix_start_epoch = 3
    config.train.log_every_steps = 1
    config.train.checkpoint_every_steps = 3
    config.train.average_last = 0  # the last state is evaluated (the recipe averages the last 10: default.py)
    config.eval.bucket_frames = 100
    config.eval.num_train_utts = 12
    # Off in smoke runs: counting a run's programs compiles the forward (and, for reversible models, unrolled CPU
    # copies of both programs), which is most of a tiny run's time. The tests of profiling turn it on.
    config.profile.enabled = False
    return config
